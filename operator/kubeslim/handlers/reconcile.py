"""One reconciliation of one ModelOptimization: observe, plan, act.

Every entry point (resource created/updated/resumed, a Job changed, the timer)
calls `reconcile`, which reads the resource fresh, so the order in which
events arrive does not matter. A lock per resource keeps two threads of this
process from acting on the same one at once; a shared lock around planning
keeps the concurrency limit exact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kubeslim.api.manifest import parse_spec
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ModelOptimizationStatus, now_rfc3339
from kubeslim.config import OperatorConfig
from kubeslim.constants import ANNOTATION_CANCEL, ANNOTATION_RETRY
from kubeslim.errors import SpecError
from kubeslim.executors.distributed import primary_first, service_name
from kubeslim.executors.job import Owner, build_job, build_service
from kubeslim.handlers.kube import Kube, api_error
from kubeslim.handlers.metrics import OperatorMetrics
from kubeslim.handlers.observe import (
    dump_status,
    failure_text,
    latest_progress,
    merge_patch,
    observe_job,
    owned_by,
    read_status,
    stage_result,
    with_blocker,
)
from kubeslim.planner import Action, JobPhase, ObservedJob, Plan, PlanInput, Slots, plan
from kubeslim.planner.model import SharedStage
from kubeslim.planner.plan import invalid_spec_plan
from kubeslim.planner.policy import Allowed
from kubeslim.planner.shared import shared_for
from kubeslim.planner.status import stage_entry, with_progress
from kubeslim.stages.pipeline import spec_fingerprints

log = logging.getLogger("kubeslim.operator")
PROGRESS_LOG_LINES = 200


@dataclass
class SlotTable:
    """Which optimizations hold one of the `max_concurrent` slots, and which wait for
    one (first come, first served), in this process."""

    limit: int
    claims: set[str] = field(default_factory=set)
    # Keys this process saw let go of their slot: kopf's index of Running resources
    # lags behind the status patch that ends a run.
    released: set[str] = field(default_factory=set)
    queue: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slots(self, running: Iterable[str]) -> Slots:
        """Holders: those whose status says Running (the index) plus fresh claims."""
        holders = frozenset(self.claims) | (frozenset(running) - self.released)
        return Slots(limit=self.limit, holders=holders, queue=tuple(self.queue))

    def settle(self, key: str, holds: bool, waits: bool = False) -> None:
        """Record the planner's verdict (called under `lock`)."""
        if holds:
            self.claims.add(key)
            self.released.discard(key)
        else:
            self.claims.discard(key)
            self.released.add(key)
        if waits and key not in self.queue:
            self.queue.append(key)
        elif not waits and key in self.queue:
            self.queue.remove(key)

    def admissible(self, key: str, running: Iterable[str]) -> bool:
        """Whether a look at key can change anything: it is not queued behind others."""
        with self.lock:
            return key not in self.queue or self.slots(running).free_for(key)

    def admissible_waiting(self, running: Iterable[str]) -> list[str]:
        """The queued keys that a free slot now admits, oldest first."""
        with self.lock:
            slots = self.slots(running)
            return [k for k in self.queue if slots.free_for(k)]


@dataclass
class Runtime:
    """What every handler shares: configuration, API clients, slots, locks."""

    config: OperatorConfig
    kube: Kube
    table: SlotTable
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    shared_index: Any = None  # kopf's live index of shared stage results (handle_index.py)
    # Jobs this process created whose ADDED event has not come yet: that event tells the
    # status nothing new, and skipping its reconcile keeps a burst of creates moving.
    _created: dict[str, None] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def just_created(self, namespace: str, job: str) -> None:
        """Remember a Job this process created (the oldest forgotten past 10,000)."""
        with self._guard:
            self._created[f"{namespace}/{job}"] = None
            while len(self._created) > 10_000:
                del self._created[next(iter(self._created))]

    def first_sight(self, namespace: str, job: str) -> bool:
        """Whether this is the ADDED event of a Job this process created (once)."""
        key = f"{namespace}/{job}"
        with self._guard:
            if key not in self._created:
                return False
            del self._created[key]
            return True

    def lock(self, key: str) -> threading.Lock:
        """The lock of one resource."""
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def reconcile(
    rt: Runtime,
    namespace: str,
    name: str,
    running: Iterable[str] = (),
    progress: bool = False,
) -> Plan | None:
    """Bring one resource one step further; None when it is gone. A resource that
    lets go of its slot wakes the resources queued for one at once (no polling)."""
    key = f"{namespace}/{name}"
    running = list(running)
    with rt.table.lock:
        held = key in rt.table.slots(running).holders
    decided = _reconcile(rt, namespace, name, key, running, progress)
    if held and (decided is None or not decided.holds_slot):
        wake_waiting(rt, [k for k in running if k != key])
    return decided


def wake_waiting(rt: Runtime, running: list[str]) -> None:
    """Reconcile the queued resources a freed slot now admits, oldest first."""
    for waiting in rt.table.admissible_waiting(running):
        namespace, _, name = waiting.partition("/")
        try:
            reconcile(rt, namespace, name, running)
        except Exception:  # the timer retries it; one failure must not stop the others
            log.exception("waking %s failed", waiting)


def _reconcile(
    rt: Runtime, namespace: str, name: str, key: str, running: list[str], progress: bool
) -> Plan | None:
    with rt.lock(key):
        body = rt.kube.get_optimization(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            with rt.table.lock:
                rt.table.settle(key, False)
            rt.metrics.forget(key)
            return None
        spec = _parse(body)
        jobs = _observe(rt, body, spec)
        status = read_status(body)
        with rt.table.lock:
            decided = plan(
                PlanInput(
                    name=name,
                    namespace=namespace,
                    generation=int(body["metadata"].get("generation") or 1),
                    spec=spec,
                    status=status,
                    jobs=jobs,
                    slots=rt.table.slots(running),
                    now=now_rfc3339(),
                    start_timeout=rt.config.start_timeout,
                    allowed=Allowed(
                        service_accounts=rt.config.allowed_service_accounts,
                        priority_classes=rt.config.allowed_priority_classes,
                        images=rt.config.allowed_images,
                        claims=rt.config.allowed_claims,
                    ),
                    retry=_annotation(body, ANNOTATION_RETRY),
                    cancel=_annotation(body, ANNOTATION_CANCEL),
                    shared=_shared(rt, spec, key),
                )
            )
            rt.table.settle(
                key, decided.holds_slot, waits=decided.action == Action.wait_for_capacity
            )
        decided = _act(rt, body, spec, decided, jobs)
        if not decided.holds_slot:  # a refused Job turns the plan terminal: free the slot
            with rt.table.lock:  # (a waiting resource keeps its place in the queue)
                rt.table.settle(key, False, waits=decided.action == Action.wait_for_capacity)
        rt.metrics.observe(key, status, decided.status)
        rt.metrics.waiting(len(rt.table.queue))
        new_status = decided.status
        if progress and decided.action in (Action.wait, Action.create_jobs) and decided.stage:
            new_status = _with_progress(rt, namespace, new_status, decided.stage, jobs)
        patch = merge_patch(body.get("status") or {}, dump_status(new_status))
        if patch:
            rt.kube.patch_status(namespace, name, patch)
        for event in decided.events:
            kopf.event(cast(Any, body), type=event.type, reason=event.reason, message=event.message)
        return decided


def _shared(
    rt: Runtime, spec: ModelOptimizationSpec | SpecError, key: str
) -> dict[tuple[str, str], SharedStage]:
    """The stages of this spec that other resources finished with the same inputs."""
    if isinstance(spec, SpecError):
        return {}
    return shared_for(rt.shared_index, spec.artifacts.uri, spec_fingerprints(spec), key)


def _annotation(body: dict[str, Any], key: str) -> str:
    return str((body["metadata"].get("annotations") or {}).get(key) or "")


def _parse(body: dict[str, Any]) -> ModelOptimizationSpec | SpecError:
    try:
        return parse_spec(body.get("spec") or {})
    except SpecError as err:
        return err


def _observe(
    rt: Runtime, body: dict[str, Any], spec: ModelOptimizationSpec | SpecError
) -> list[ObservedJob]:
    """This resource's Jobs; finished ones not yet recorded get their Pod's result or failure."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"].get("uid", "")
    status = read_status(body)
    # Only Jobs of the current spec can decide anything; older ones need no Pod reads.
    current = spec_fingerprints(spec) if not isinstance(spec, SpecError) else {}
    out = []
    for raw in rt.kube.list_jobs(namespace, body["metadata"]["name"]):
        if not owned_by(raw, uid):
            continue
        job = observe_job(raw)
        entry = stage_entry(status, job.stage)
        recorded = (
            entry is not None
            and entry.fingerprint == job.fingerprint
            and entry.state in ("Succeeded", "Failed")
            and entry.job_name == job.name
        )
        relevant = current.get(job.stage) == job.fingerprint
        if job.phase != JobPhase.active and relevant and not recorded:
            job = _details(rt, namespace, job)
        elif job.phase == JobPhase.active and relevant and job.ready == 0:
            # Pending or stuck: a missing Secret or image shows only on the Pod.
            job = with_blocker(job, rt.kube.list_job_pods(namespace, job.name))
        out.append(job)
    return out


def _details(rt: Runtime, namespace: str, job: ObservedJob) -> ObservedJob:
    """Read the result (success) or the reason and log tail (failure) from the Job's Pods."""
    # Index 0 (rank 0) last: it writes the result and the stage's own error line.
    pods = primary_first(rt.kube.list_job_pods(namespace, job.name))
    if job.phase == JobPhase.succeeded:
        return replace(job, result=stage_result(pods))
    tail = ""
    if pods:
        tail = rt.kube.pod_log_tail(
            namespace, pods[-1]["metadata"]["name"], rt.config.log_tail_lines
        )
    return replace(job, failure=failure_text(job.failure, pods, tail))


def _act(
    rt: Runtime,
    body: dict[str, Any],
    spec: ModelOptimizationSpec | SpecError,
    decided: Plan,
    jobs: list[ObservedJob],
) -> Plan:
    """Delete stale Jobs and create the planned ones; a rejected Job fails the resource."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    multi_pod = {j.name for j in jobs if j.workers > 1}
    for stale in decided.delete:
        log.info("deleting Job %s/%s of an earlier spec", namespace, stale)
        rt.kube.delete_job(namespace, stale)
        if stale in multi_pod:  # its rendezvous Service serves nothing any more
            rt.kube.delete_service(namespace, service_name(stale))
    if not decided.create or isinstance(spec, SpecError):
        return decided
    owner = Owner(name=meta["name"], namespace=namespace, uid=meta.get("uid", ""))
    for request in decided.create:
        job = build_job(spec, request, owner, rt.config)
        try:
            # The Service first: its address reaches only Pods created after it.
            _ensure_service(rt, build_service(spec, request, owner), owner.uid)
            made = rt.kube.create_job(namespace, job)
        except ApiException as err:
            if err.status not in (400, 422):
                raise  # transient: kopf retries the handler
            return _rejected(decided, request.name, api_error(err))
        if made:
            log.info("created Job %s/%s", namespace, request.name)
            rt.just_created(namespace, request.name)
        else:
            _clear_the_way(rt, namespace, request.name, owner.uid, request.fingerprint)
    return decided


def _ensure_service(rt: Runtime, service: dict[str, Any] | None, uid: str) -> None:
    """Create the Job's rendezvous Service; one left by a deleted namesake goes, and
    the Job waits for the next look (its Pods would meet at the wrong address)."""
    if service is None:
        return
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    if rt.kube.create_service(namespace, service):
        log.info("created Service %s/%s", namespace, name)
        return
    existing = rt.kube.get_service(namespace, name)
    if existing is not None and owned_by(existing, uid):
        return  # ours: a restart made it
    if existing is not None:
        log.warning("Service %s/%s belongs to another owner; deleting it", namespace, name)
        rt.kube.delete_service(namespace, name)
    raise kopf.TemporaryError(f"Service {namespace}/{name} not ready to use; retrying", delay=2)


def _clear_the_way(rt: Runtime, namespace: str, name: str, uid: str, fingerprint: str) -> None:
    """A 409: the Job is ours (a restart made it already), or it belongs to something
    else (a deleted namesake, another spec) and goes, so the next look creates ours."""
    existing = rt.kube.find_job(namespace, name)
    if existing is None:
        return  # gone meanwhile: the next reconcile creates it
    found = observe_job(existing)
    if owned_by(existing, uid) and found.fingerprint == fingerprint:
        log.info("found Job %s/%s", namespace, name)
        return
    log.warning(
        "Job %s/%s belongs to another owner or spec (fingerprint %s); deleting it",
        namespace,
        name,
        found.fingerprint[:12] or "none",
    )
    rt.kube.delete_job(namespace, name)


def _rejected(decided: Plan, job: str, why: str) -> Plan:
    """The API server refused the Job: the spec (resources, names) is at fault."""
    err = SpecError("spec.execution", f"the API server rejected Job {job}: {why}")
    status = decided.status
    again = invalid_spec_plan(status, status.observed_generation or 0, err, now_rfc3339())
    return Plan(
        action=again.action,
        status=again.status,
        events=decided.events + again.events,
        extra=again.extra,
    )


def _with_progress(
    rt: Runtime,
    namespace: str,
    status: ModelOptimizationStatus,
    stage: str,
    jobs: list[ObservedJob],
) -> ModelOptimizationStatus:
    """Copy the running stage's latest progress line from its Pod's log into the status."""
    entry = stage_entry(status, stage)
    job = next((j for j in jobs if entry and j.name == entry.job_name), None)
    if job is None or job.phase != JobPhase.active:
        return status
    pods = primary_first(rt.kube.list_job_pods(namespace, job.name))
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return status
    text = rt.kube.pod_log_tail(namespace, running[-1]["metadata"]["name"], PROGRESS_LOG_LINES)
    found = latest_progress(text)
    return status if found is None else with_progress(status, stage, found)
