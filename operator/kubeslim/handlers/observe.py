"""Turn API objects (as plain JSON dicts) into the planner's plain data, and back.

Pure functions: the Job, Pod and log text go in, planner input comes out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from kubeslim.api.status import ModelOptimizationStatus, Progress
from kubeslim.constants import LABEL_GENERATION, LABEL_RETRY_ROUND, LABEL_STAGE, PROGRESS_MARKER
from kubeslim.executors.job import ANNOTATION_FINGERPRINT, ANNOTATION_SHARD, CONTAINER
from kubeslim.planner.model import JobPhase, ObservedJob

_PROGRESS_KEYS = set(Progress.model_fields) | {
    f.alias for f in Progress.model_fields.values() if f.alias
}


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether the resource with this uid controls the object (not a namesake's old Job)."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def observe_job(job: dict[str, Any]) -> ObservedJob:
    """A Job as the planner sees it (without its Pod's result yet)."""
    meta = job.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = job.get("status") or {}
    phase, failure = JobPhase.active, ""
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            phase = JobPhase.succeeded
        elif cond.get("type") == "Failed":
            phase = JobPhase.failed
            failure = ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
    spec = job.get("spec") or {}
    workers = _int(spec.get("completions")) if spec.get("completionMode") == "Indexed" else 1
    generation = _int(labels.get(LABEL_GENERATION))
    retry_round = _int(labels.get(LABEL_RETRY_ROUND))
    return ObservedJob(
        name=meta.get("name", ""),
        stage=labels.get(LABEL_STAGE, ""),
        fingerprint=annotations.get(ANNOTATION_FINGERPRINT, ""),
        generation=generation,
        phase=phase,
        shard=annotations.get(ANNOTATION_SHARD, ""),
        retry_round=retry_round,
        workers=max(workers, 1),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        start_time=_rfc3339(status.get("startTime")),
        completion_time=_rfc3339(status.get("completionTime")),
        failure=failure,
    )


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _rfc3339(value: Any) -> str | None:
    """Times as the API server writes them ('...Z'), whatever the client made of them."""
    if not value:
        return None
    return str(value).replace("+00:00", "Z")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The stage container's `state.terminated` (empty while it runs)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return dict((cs.get("state") or {}).get("terminated") or {})
    return {}


def stage_result(pods: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The StageResult JSON a succeeded Pod left as its termination message."""
    for pod in reversed(pods):
        end = terminated(pod)
        if end.get("exitCode") != 0:
            continue
        try:
            result = json.loads(end.get("message") or "")
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    return None


def failure_text(job_reason: str, pods: Sequence[dict[str, Any]], log_tail: str) -> str:
    """Why a Job failed: the stage's own error, its condition, the Pod's reason
    (Evicted, ...), the container's exit, then its log's tail."""
    parts = []
    pod_status = (pods[-1].get("status") or {}) if pods else {}
    end = terminated(pods[-1]) if pods else {}
    error = stage_error(end)
    if error:
        parts.append(f"error: {error}")
    if job_reason:
        parts.append(job_reason)
    if pod_status.get("reason"):
        # The kubelet's own word on the Pod: Evicted (low ephemeral storage), DeadlineExceeded.
        parts.append(
            "Pod " + ": ".join(p for p in (pod_status["reason"], pod_status.get("message")) if p)
        )
    if end:
        exit_line = f"container exited {end.get('exitCode')}"
        if end.get("reason"):
            exit_line += f" ({end['reason']})"
        parts.append(exit_line)
    message = "" if error else str(end.get("message") or "").strip()
    tail = log_tail.strip() or message
    if tail:
        parts.append("log tail:\n" + tail)
    return "\n".join(parts)


def stage_error(end: dict[str, Any]) -> str:
    """The one-line error `kubeslim stage` left as its termination message, if any."""
    try:
        body = json.loads(end.get("message") or "")
    except ValueError:
        return ""
    return str(body.get("error") or "") if isinstance(body, dict) else ""


# Waiting reasons that no amount of waiting cures: the Pod's configuration is wrong.
FATAL_WAITING = frozenset(
    {"CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull", "CreateContainerError"}
)
# Waiting reasons that may clear up (a registry hiccup); given up after a timeout.
SLOW_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull"})


def pod_blocker(pod: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(reason, message, fatal) when a Pod cannot start, else None."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in FATAL_WAITING or reason in SLOW_WAITING:
            return reason, str(waiting.get("message") or ""), reason in FATAL_WAITING
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return "Unschedulable", str(cond.get("message") or ""), False
    return None


def with_blocker(job: ObservedJob, pods: Sequence[dict[str, Any]]) -> ObservedJob:
    """The Job with why its newest Pod cannot start, if it cannot."""
    for pod in reversed(pods):
        found = pod_blocker(pod)
        if found is None:
            continue
        reason, message, fatal = found
        return replace(
            job,
            blocked=f"{reason}: {message}" if message else reason,
            blocked_reason=reason,
            blocked_fatal=fatal,
            blocked_since=_rfc3339(pod.get("metadata", {}).get("creationTimestamp")),
        )
    return job


def latest_progress(log: str) -> Progress | None:
    """The last KUBESLIM_PROGRESS line of a log, as the status's Progress."""
    for line in reversed(log.splitlines()):
        at = line.find(PROGRESS_MARKER)
        if at < 0:
            continue
        try:
            raw = json.loads(line[at + len(PROGRESS_MARKER) :])
        except ValueError:
            continue
        if not isinstance(raw, dict):
            continue
        try:
            return Progress.model_validate({k: v for k, v in raw.items() if k in _PROGRESS_KEYS})
        except ValidationError:
            continue
    return None


def read_status(body: dict[str, Any]) -> ModelOptimizationStatus:
    """The resource's status; a status someone mangled counts as empty, not as a crash."""
    try:
        return ModelOptimizationStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return ModelOptimizationStatus()


def dump_status(status: ModelOptimizationStatus) -> dict[str, Any]:
    """The status as the API server will store it (no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns old into new; {} when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            inner = merge_patch(old[key], value)
            patch[key] = inner if not (isinstance(inner, dict) and not inner) else value
    return patch
