"""A ModelOptimization is being deleted: its Jobs go with it (ownerReferences), its
slot is freed, and with spec.artifacts.retention.deleteOnResourceDeletion its
artifacts are deleted by a cleanup Job first."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubeslim.api.manifest import parse_spec
from kubeslim.errors import SpecError
from kubeslim.executors.cleanup import build_cleanup_job, cleanup_job_name
from kubeslim.executors.job import Owner, artifacts_uri
from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.kube import api_error
from kubeslim.handlers.observe import failure_text, observe_job
from kubeslim.handlers.reconcile import Runtime, wake_waiting
from kubeslim.planner import JobPhase

log = logging.getLogger("kubeslim.operator")
# How long deletion waits for the cleanup Job before it goes on without it: the
# finalizer must never hold a resource for good (an operator gone, a Pod that
# cannot start, a store that does not answer).
CLEANUP_WAIT_S = 300.0
CLEANUP_POLL_S = 5.0


def on_delete(namespace: str, name: str, running_optimizations: Any, rt: Runtime, **_: Any) -> None:
    """Free its concurrency slot at once and start the next waiting optimization."""
    key = f"{namespace}/{name}"
    with rt.table.lock:
        rt.table.settle(key, False)
    wake_waiting(rt, [k for k in running_keys(running_optimizations) if k != key])


def wants_cleanup(spec: Any, **_: Any) -> bool:
    """Whether the resource asks for its artifacts to go with it (kopf keeps its
    finalizer on exactly these, so the deletion waits for on_delete_artifacts)."""
    retention = ((spec or {}).get("artifacts") or {}).get("retention") or {}
    return bool(retention.get("deleteOnResourceDeletion"))


def on_delete_artifacts(
    body: Any,
    spec: Any,
    namespace: str,
    name: str,
    uid: str,
    runtime: datetime.timedelta,
    rt: Runtime,
    **_: Any,
) -> None:
    """Run the cleanup Job and wait for it (bounded); a failure becomes a Warning Event
    and the deletion goes on."""
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as err:  # nothing was ever written for a spec that does not parse
        log.info("%s/%s: no artifacts to delete (%s)", namespace, name, err)
        return
    owner = Owner(name=name, namespace=namespace, uid=uid)
    root = artifacts_uri(parsed, owner)
    job_name = cleanup_job_name(owner)
    job = rt.kube.find_job(namespace, job_name)
    if job is None:
        try:
            rt.kube.create_job(namespace, build_cleanup_job(parsed, owner, rt.config))
        except ApiException as err:
            if err.status not in (400, 403, 422):
                raise  # transient: kopf retries
            _give_up(body, root, f"the API server refused the cleanup Job: {api_error(err)}")
            return
        log.info("%s/%s: created cleanup Job %s for %s", namespace, name, job_name, root)
        raise kopf.TemporaryError("waiting for the cleanup Job", delay=CLEANUP_POLL_S)
    observed = observe_job(job)
    if observed.phase == JobPhase.succeeded:
        kopf.event(body, type="Normal", reason="ArtifactsDeleted", message=f"deleted {root}")
        return
    if observed.phase == JobPhase.failed:
        pods = rt.kube.list_job_pods(namespace, job_name)
        tail = ""
        if pods:
            tail = rt.kube.pod_log_tail(namespace, pods[-1]["metadata"]["name"], 20)
        _give_up(body, root, failure_text(observed.failure, pods, tail))
        return
    if runtime.total_seconds() >= CLEANUP_WAIT_S:
        rt.kube.delete_job(namespace, job_name)
        _give_up(body, root, f"the cleanup Job {job_name} did not finish in {CLEANUP_WAIT_S:g} s")
        return
    raise kopf.TemporaryError("waiting for the cleanup Job", delay=CLEANUP_POLL_S)


def _give_up(body: Any, root: str, why: str) -> None:
    message = f"artifacts under {root} not deleted: {why}"[:1024]
    log.warning("%s", message)
    kopf.event(body, type="Warning", reason="ArtifactsNotDeleted", message=message)
