"""Pure helpers that build the status: conditions, stage entries, metrics, columns, summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from kubeslim.api.status import (
    STAGE_CONDITIONS,
    Artifacts,
    Condition,
    ConditionType,
    Metrics,
    ModelMetrics,
    ModelOptimizationStatus,
    Progress,
    Reason,
    StageState,
    StageStatus,
    State,
)
from kubeslim.planner.model import Event
from kubeslim.store.refs import resolve

CONDITION_ORDER: tuple[str, ...] = (
    ConditionType.ready,
    ConditionType.succeeded,
    ConditionType.failed,
    ConditionType.waiting,
    *STAGE_CONDITIONS.values(),
)

# Stage output name -> status.artifacts field (python name).
ARTIFACT_FIELDS: dict[tuple[str, str], str] = {
    ("prune", "model"): "pruned_model",
    ("convert", "onnx"): "onnx",
    ("convert", "ir"): "ir",
    ("quantize", "int8_ir"): "int8_ir",
    ("benchmark", "report"): "report",
}
STAGE_MESSAGE_LIMIT = 4096
CONDITION_MESSAGE_LIMIT = 8192
WARNING_REASONS = frozenset(
    {
        Reason.job_failed,
        Reason.invalid_spec,
        Reason.unsupported_in_cluster,
        Reason.pod_cannot_start,
        Reason.not_allowed,
        Reason.cancelled,
    }
)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """Set one condition; lastTransitionTime changes only when its status does."""
    old = find_condition(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition.model_validate(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": _cap(message, CONDITION_MESSAGE_LIMIT),
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )
    rest = [c for c in conditions if c.type != type_]
    return sorted([*rest, new], key=_condition_rank)


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of a type, if set."""
    return next((c for c in conditions if c.type == type_), None)


def transitions(old: Sequence[Condition], new: Sequence[Condition]) -> tuple[Event, ...]:
    """One Event for each condition whose status or reason changed."""
    events = []
    for cond in new:
        before = find_condition(old, cond.type)
        if before is not None and (before.status, before.reason) == (cond.status, cond.reason):
            continue
        if (
            before is None
            and cond.status == "False"
            and cond.reason
            in (
                Reason.pending,
                Reason.capacity_available,
                Reason.in_progress,
            )
        ):
            continue  # a fresh resource's initial bookkeeping is not news
        warning = cond.reason in WARNING_REASONS
        text = f"{cond.type}={cond.status}" + (f": {cond.message}" if cond.message else "")
        events.append(
            Event("Warning" if warning else "Normal", cond.reason or cond.type, _cap(text, 1024))
        )
    return tuple(events)


def stage_entry(status: ModelOptimizationStatus, stage: str) -> StageStatus | None:
    """The status entry of a stage, if any."""
    return next((s for s in status.stages if s.name == stage), None)


def record_result(entry: StageStatus, result: dict[str, Any] | None, root: str) -> StageStatus:
    """A stage entry marked Succeeded with what its termination message said."""
    update: dict[str, Any] = {"state": StageState.succeeded, "progress": None}
    if result is None:
        update["message"] = "completed; result not available (the Pod is gone)"
        return entry.model_copy(update=update)
    duration = result.get("durationSeconds", result.get("duration_seconds"))
    if isinstance(duration, int | float) and duration >= 0:
        update["duration_seconds"] = round(float(duration), 3)
    uri = result.get("result_uri") or result.get("resultUri")
    if isinstance(uri, str) and uri:
        update["result_uri"] = resolve(root, uri)[:1024]
    update["message"] = "reused a cached result" if result.get("reused") else "completed"
    key = result.get("cache_key") or result.get("cacheKey")
    if isinstance(key, str) and key:
        update["cache_key"] = key[:160]
    return entry.model_copy(update=update)


def artifacts_from(results: dict[str, dict[str, Any]], root: str) -> Artifacts:
    """status.artifacts from the recorded stage results' outputs, as full URIs below root."""
    values: dict[str, str] = {}
    for (stage, output), attr in ARTIFACT_FIELDS.items():
        uri = (results.get(stage) or {}).get("outputs", {}).get(output)
        if isinstance(uri, str) and uri:
            values[attr] = resolve(root, uri)[:1024]
    return Artifacts(**values)


def metrics_from(result: dict[str, Any] | None) -> Metrics | None:
    """status.metrics from the benchmark result, with the ratios derived where missing."""
    if not result or not isinstance(result.get("metrics"), dict):
        return None
    raw = result["metrics"]
    known = {k: v for k, v in raw.items() if k in _METRIC_KEYS}
    try:
        metrics = Metrics.model_validate(_only_known_model_metrics(known))
    except ValidationError:
        return None
    return derive_metrics(metrics)


# The status models declare which figures exist: one source for both sets.
_METRIC_KEYS = {f.alias or name for name, f in Metrics.model_fields.items()}
_MODEL_METRIC_KEYS = {f.alias or name for name, f in ModelMetrics.model_fields.items()}


def _only_known_model_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """Drop keys the status does not declare (the API server would prune them anyway)."""
    out = dict(raw)
    for side in ("baseline", "optimized"):
        if isinstance(out.get(side), dict):
            out[side] = {k: v for k, v in out[side].items() if k in _MODEL_METRIC_KEYS}
    return out


def derive_metrics(m: Metrics) -> Metrics:
    """Fill speedup, latencySpeedup, sizeReduction and accuracyDrop from both sides."""
    base, opt = m.baseline or ModelMetrics(), m.optimized or ModelMetrics()
    update: dict[str, float] = {}
    if m.speedup is None and base.throughput_fps and opt.throughput_fps:
        update["speedup"] = round(opt.throughput_fps / base.throughput_fps, 3)
    if m.latency_speedup is None and base.latency_ms_p50 and opt.latency_ms_p50:
        update["latency_speedup"] = round(base.latency_ms_p50 / opt.latency_ms_p50, 3)
    if m.size_reduction is None and base.size_bytes and opt.size_bytes:
        update["size_reduction"] = round(base.size_bytes / opt.size_bytes, 3)
    if m.accuracy_drop is None and base.accuracy is not None and opt.accuracy is not None:
        update["accuracy_drop"] = round((base.accuracy - opt.accuracy) * 100, 3)
    return m.model_copy(update=update)


def columns(m: Metrics | None) -> dict[str, str | None]:
    """The printer-column strings: speedup, sizeReduction, accuracyDrop."""
    if m is None:
        return {"speedup": None, "size_reduction": None, "accuracy_drop": None}
    speed = m.speedup if m.speedup is not None else m.latency_speedup
    return {
        "speedup": None if speed is None else f"{speed:.2f}x",
        "size_reduction": None if m.size_reduction is None else f"{m.size_reduction:.2f}x",
        "accuracy_drop": None if m.accuracy_drop is None else f"{m.accuracy_drop:.2f}pt",
    }


def success_summary(m: Metrics | None) -> str:
    """The one-line summary of a finished pipeline."""
    cols = columns(m)
    parts = [
        f"{cols['speedup']} faster" if cols["speedup"] else "",
        f"{cols['size_reduction']} smaller" if cols["size_reduction"] else "",
        f"accuracy drop {cols['accuracy_drop']}" if cols["accuracy_drop"] else "",
    ]
    figures = ", ".join(p for p in parts if p)
    return "succeeded" + (f": {figures}" if figures else "")


def progress_text(progress: Progress | None) -> str:
    """'epoch 3/10, step 40/100, loss 0.412' from a stage's latest progress."""
    if progress is None:
        return ""
    parts = [progress.phase] if progress.phase else []
    if progress.epoch is not None:
        parts.append(f"epoch {progress.epoch}" + (f"/{progress.epochs}" if progress.epochs else ""))
    if progress.step is not None:
        parts.append(f"step {progress.step}" + (f"/{progress.steps}" if progress.steps else ""))
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4g}")
    if progress.accuracy is not None:
        parts.append(f"accuracy {progress.accuracy:.4g}")
    return ", ".join(parts)


def with_progress(
    status: ModelOptimizationStatus, stage: str, progress: Progress
) -> ModelOptimizationStatus:
    """The status with a running stage's latest progress and the summary that goes with it."""
    text = progress_text(progress)
    update: dict[str, Any] = {"progress": progress}
    if text:
        update["message"] = f"running: {text}"
    stages = [s.model_copy(update=update) if s.name == stage else s for s in status.stages]
    summary = f"running {stage}" + (f" ({text})" if text else "")
    return status.model_copy(update={"stages": stages, "summary": _cap(summary, 1024)})


def _condition_rank(c: Condition) -> int:
    return CONDITION_ORDER.index(c.type) if c.type in CONDITION_ORDER else len(CONDITION_ORDER)


def _cap(text: str, limit: int) -> str:
    """Keep the end of long texts: a log's last lines say most."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def next_step(status: ModelOptimizationStatus, name: str) -> str:
    """One line for `kubectl describe`: what a person can do about where it stands."""
    failed = find_condition(status.conditions, ConditionType.failed)
    reason = failed.reason if failed is not None and failed.status == "True" else ""
    stage = status.current_stage or ""
    retry = f"kubectl annotate mopt {name} kubeslim.dev/retry=$(date +%s) --overwrite"
    job = next((s.job_name for s in status.stages if s.name == stage and s.job_name), None)
    pods = f"kubectl describe pods -l job-name={job}" if job else "kubectl describe pods"
    if status.state == State.succeeded:
        return "done: the optimized model is status.artifacts.int8Ir (or .ir); metrics in status"
    if status.state == State.suspended:
        return "suspended: set spec.suspend to false to resume"
    if status.state == State.waiting:
        return "waits for a concurrency slot; it starts when another optimization finishes"
    if reason in (Reason.invalid_spec, Reason.unsupported_in_cluster, Reason.not_allowed):
        return "fix the field the Failed condition names and apply the spec again"
    if reason == Reason.pod_cannot_start:
        return f"the Pod could not start: fix its image, Secret or node ({pods}), then {retry}"
    if reason == Reason.cancelled:
        return f"cancelled: {retry} to run the stage again, or edit the spec"
    if status.state == State.failed:
        return (
            f"read the Failed condition; fix the spec and apply it, or if the cause has "
            f"passed: {retry}"
        )
    if status.state == State.running and job:
        return f"running {stage}: kubectl logs -f job/{job}"
    return ""
