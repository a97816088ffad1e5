"""The planner: from spec, status and observed Jobs to the next step and the new status.

It is a pure function, so a restart, a replayed event or two handlers looking
at once reach the same decision; the handlers only carry it out.

Stages run in order. A stage is done when its status entry records success for
the current spec fingerprint (so a spec edit re-runs from the first stage whose
fingerprint changed and keeps the rest), or when its Jobs for that fingerprint
have all succeeded. The first stage not done is the current one: its Jobs are
created (within the concurrency limit), waited for, or found failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import (
    STAGE_CONDITIONS,
    Artifacts,
    Condition,
    ConditionType,
    JobSummary,
    Metrics,
    ModelOptimizationStatus,
    Reason,
    SearchStatus,
    StageState,
    StageStatus,
    State,
)
from kubeslim.errors import SpecError
from kubeslim.planner.cluster import cluster_refusal
from kubeslim.planner.model import (
    Action,
    JobPhase,
    JobRequest,
    ObservedJob,
    Plan,
    PlanInput,
    artifacts_root,
    job_name,
    seconds_between,
)
from kubeslim.planner.policy import policy_refusal
from kubeslim.planner.search import (
    SEARCH_STAGES,
    candidate_shards,
    next_round_status,
    refinement,
    search_status,
    within_parallelism,
)
from kubeslim.planner.shared import is_shared, shared_message, shared_result
from kubeslim.planner.status import (
    ARTIFACT_FIELDS,
    STAGE_MESSAGE_LIMIT,
    artifacts_from,
    columns,
    find_condition,
    metrics_from,
    next_step,
    progress_text,
    record_result,
    set_condition,
    stage_entry,
    success_summary,
    transitions,
)
from kubeslim.stages.pipeline import enabled_stages, pipeline_stages, spec_fingerprints

_PHASE_RANK = {JobPhase.succeeded: 0, JobPhase.active: 1, JobPhase.failed: 2}
_FINAL = (State.succeeded, State.failed)


def stage_shards(
    spec: ModelOptimizationSpec, stage: str, status: ModelOptimizationStatus | None = None
) -> tuple[str, ...]:
    """The Jobs one stage runs as: one unnamed shard, unless the stage fans out.

    A search fans out: one shard per candidate of the round now running (which
    status records), and one select Job per round; the planner creates, waits
    for and records them all.
    """
    return candidate_shards(spec, stage, status or ModelOptimizationStatus())


@dataclass
class _Walk:
    """What the walk over the stages collects."""

    stages: list[StageStatus] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)  # stages whose earlier outputs no longer hold
    current: str | None = None
    outcome: Action = Action.succeeded
    create: list[JobRequest] = field(default_factory=list)
    failure: str = ""
    failure_reason: Reason = Reason.job_failed
    jobs: list[JobSummary] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # Jobs whose Pods can never start
    blocked: dict[str, str] = field(default_factory=dict)  # stage -> why its Pod waits
    shared: set[str] = field(default_factory=set)  # stages another resource's result stands for


def plan(inp: PlanInput) -> Plan:
    """Decide the next step for one ModelOptimization."""
    decided = _plan(inp)
    hint = next_step(decided.status, inp.name) or None
    if decided.extra.get("settled") or decided.status.next_step == hint:
        return decided  # a settled resource is left exactly as it is
    return replace(decided, status=decided.status.model_copy(update={"next_step": hint}))


def _plan(inp: PlanInput) -> Plan:
    decided = _plan_round(inp)
    # The search's refinement rounds: a select result naming a next round starts it at
    # once (bounded: each pass moves one round on, and a search has at most 6).
    for _ in range(8):
        advanced = _next_round(inp, decided)
        if advanced is None:
            break
        decided = _plan_round(advanced)
    return decided


def _plan_round(inp: PlanInput) -> Plan:
    if _asked(inp.cancel, inp.status.last_cancel):
        return _cancel(inp)
    if _asked(inp.retry, inp.status.last_retry):
        inp = _begin_retry(inp)
    settled = _settled(inp)
    if settled is not None:
        return settled
    if isinstance(inp.spec, SpecError):
        return _invalid(inp, inp.spec)
    spec = inp.spec
    refused = cluster_refusal(spec)
    if refused is not None:
        return invalid_spec_plan(
            inp.status, inp.generation, refused, inp.now, Reason.unsupported_in_cluster
        )
    forbidden = policy_refusal(spec, inp.allowed)
    if forbidden is not None:
        return invalid_spec_plan(inp.status, inp.generation, forbidden, inp.now, Reason.not_allowed)
    fingerprints = spec_fingerprints(spec)
    enabled = set(enabled_stages(spec))
    walk = _Walk()
    for stage in pipeline_stages(spec):
        if stage not in enabled:
            walk.stages.append(
                StageStatus(
                    name=stage,
                    state=StageState.skipped,
                    fingerprint=fingerprints[stage],
                    message="disabled in the spec",
                )
            )
            walk.cleared.add(stage)
        elif walk.current is not None:
            walk.stages.append(_pending(stage, fingerprints[stage]))
            walk.cleared.add(stage)
        else:
            _visit(inp, spec, stage, fingerprints[stage], walk)
    if spec.suspend and walk.outcome not in (Action.succeeded, Action.failed):
        _suspend(inp, walk)
    stale = tuple(
        sorted(
            {
                j.name
                for j in inp.jobs
                if j.phase == JobPhase.active and fingerprints.get(j.stage) != j.fingerprint
            }
            | set(walk.delete)
        )
    )
    return _finish(inp, walk, stale)


def _next_round(inp: PlanInput, decided: Plan) -> PlanInput | None:
    """The input of the search's next round when the select stage just finished a round
    and named another (round k+1 from round k's select result), else None.

    The next round's candidates and number go into status.search; the candidate
    stages and select start again as pending, so their Jobs for the new candidates
    (and the round's own select Job) are created under the parallelism limit.
    """
    spec = inp.spec
    result = decided.extra.get("select_result")
    if isinstance(spec, SpecError) or spec.search is None or not isinstance(result, dict):
        return None
    if decided.action != Action.succeeded:
        return None
    nxt = refinement(spec, inp.status, result)
    if not nxt:
        return None
    stages = [
        StageStatus(name=s.name, state=StageState.pending, fingerprint=s.fingerprint)
        if s.name in SEARCH_STAGES
        else s
        for s in decided.status.stages
    ]
    status = inp.status.model_copy(
        update={"stages": stages, "search": next_round_status(inp.status, result, nxt)}
    )
    return replace(inp, status=status)


def _settled(inp: PlanInput) -> Plan | None:
    """A finished resource whose spec did not change since is left exactly as it is.

    Nothing is re-planned, so an operator upgrade (other defaults, other
    fingerprints, other Job names) can neither re-run nor stall it.
    """
    old = inp.status
    if old.observed_generation != inp.generation or old.state not in _FINAL:
        return None
    action = Action.succeeded if old.state == State.succeeded else Action.failed
    return Plan(action=action, status=old, extra={"settled": True})


def _visit(
    inp: PlanInput, spec: ModelOptimizationSpec, stage: str, fingerprint: str, walk: _Walk
) -> None:
    """Look at one stage while every stage before it is done."""
    old = stage_entry(inp.status, stage)
    if old is not None and old.state == StageState.succeeded and old.fingerprint == fingerprint:
        walk.stages.append(old)
        walk.jobs.extend(_summaries(inp.jobs, stage, fingerprint))
        return
    shards = stage_shards(spec, stage, inp.status)
    chosen = {shard: _pick(inp, stage, shard, fingerprint) for shard in shards}
    found = [j for j in chosen.values() if j is not None]
    walk.jobs.extend(_summary(j) for j in found)
    walk.cleared.add(stage)
    base = _base_entry(old, stage, fingerprint, found)
    if found and len(found) == len(shards) and all(j.phase == JobPhase.succeeded for j in found):
        result = _merge_results([j.result for j in found])
        root = artifacts_root(spec.artifacts.uri, inp.namespace, inp.name)
        walk.stages.append(record_result(base, result, root))
        walk.results[stage] = result or {}
        return
    offer = inp.shared.get((stage, fingerprint))
    if offer is not None and not found and shards == ("",) and not inp.status.retries:
        # Another resource ran this stage with the same inputs: no Job (planner/shared.py).
        result = shared_result(offer, spec.artifacts.uri)
        entry = record_result(base, result, spec.artifacts.uri)
        walk.stages.append(entry.model_copy(update={"message": shared_message(offer)}))
        walk.results[stage] = result
        walk.shared.add(stage)
        return
    walk.current = stage
    failed = [j for j in found if j.phase == JobPhase.failed]
    sticky = (
        old is not None
        and old.state == StageState.failed
        and old.fingerprint == fingerprint
        and inp.status.observed_generation == inp.generation
        and not any(j.phase != JobPhase.failed for j in found)
    )
    if failed or sticky:
        reason = failed[0].failure if failed else old.message if old else ""
        # The Pod's log was read once, when the failure was first seen; keep that text.
        seen = (
            failed
            and old is not None
            and old.state == StageState.failed
            and old.job_name == failed[0].name
            and old.fingerprint == fingerprint
        )
        if seen and old is not None and old.message:
            reason = old.message
        job = failed[0].name if failed else (old.job_name if old else "")
        walk.failure = f"stage {stage} failed (Job {job}): {reason or 'no reason given'}"
        walk.outcome = Action.failed
        walk.stages.append(
            base.model_copy(
                update={
                    "state": StageState.failed,
                    "message": _cap(reason or "failed", STAGE_MESSAGE_LIMIT),
                    "progress": None,
                }
            )
        )
        return
    blocked = [j for j in found if j.phase == JobPhase.active and j.blocked]
    if blocked and _gives_up(inp, blocked[0]):
        # A Pod that cannot start (missing Secret, bad image, no node) fails the stage
        # instead of holding a concurrency slot; its Job goes so the Pod stops retrying.
        stuck = blocked[0]
        text = f"Pod cannot start: {stuck.blocked}"
        walk.failure = f"stage {stage} failed (Job {stuck.name}): {text}"
        walk.failure_reason = Reason.pod_cannot_start
        walk.outcome = Action.failed
        walk.delete.append(stuck.name)
        walk.stages.append(
            base.model_copy(
                update={
                    "state": StageState.failed,
                    "message": _cap(text, STAGE_MESSAGE_LIMIT),
                    "progress": None,
                }
            )
        )
        return
    if blocked:
        walk.blocked[stage] = blocked[0].blocked_reason
    missing = [shard for shard, job in chosen.items() if job is None]
    if missing and not found and not inp.slots.free_for(inp.key):
        walk.outcome = Action.wait_for_capacity
        walk.stages.append(
            base.model_copy(update={"state": StageState.pending, "message": "waiting for capacity"})
        )
        return
    running = sum(1 for j in found if j.phase == JobPhase.active)
    missing = within_parallelism(spec, running, missing)
    for shard in missing:
        rounds = inp.status.retries
        name = job_name(
            inp.name, stage, inp.generation, shard, fingerprint=fingerprint, retry_round=rounds
        )
        walk.create.append(JobRequest(stage, name, fingerprint, inp.generation, shard, rounds))
        walk.jobs.append(JobSummary(name=name, stage=stage))
    walk.outcome = Action.create_jobs if missing else Action.wait
    first = found[0].name if found else walk.create[0].name
    message = f"Job {first} created" if missing else f"Job {first} running"
    if blocked:
        message = f"Pod cannot start yet: {blocked[0].blocked}"
    keep = (
        old is not None
        and old.job_name == first
        and old.state == StageState.running
        and not blocked
    )
    walk.stages.append(
        base.model_copy(
            update={
                "state": StageState.running,
                "job_name": first,
                "start_time": base.start_time or inp.now or None,
                "message": message if not keep else old.message if old else message,
                "progress": old.progress if keep and old else None,
            }
        )
    )


def _asked(token: str, handled: str | None) -> bool:
    """Whether an annotation carries a request not acted on yet."""
    return bool(token) and token != handled


def _cancel(inp: PlanInput) -> Plan:
    """kubeslim.dev/cancel: running Jobs go, the pipeline fails with reason Cancelled.

    A finished pipeline only notes the request. A spec edit or kubeslim.dev/retry
    starts again.
    """
    old = inp.status
    noted = old.model_copy(update={"last_cancel": inp.cancel})
    if old.state in _FINAL and old.observed_generation == inp.generation:
        action = Action.succeeded if old.state == State.succeeded else Action.failed
        return Plan(action=action, status=noted)
    message = "cancelled: the kubeslim.dev/cancel annotation stopped the pipeline"
    gen, now = inp.generation, inp.now
    conds = list(old.conditions)
    conds = set_condition(conds, ConditionType.failed, "True", Reason.cancelled, message, now, gen)
    for type_ in (ConditionType.ready, ConditionType.succeeded):
        conds = set_condition(conds, type_, "False", Reason.cancelled, message, now, gen)
    stages = [
        s.model_copy(update={"state": StageState.failed, "message": "cancelled", "progress": None})
        if s.state == StageState.running
        else s
        for s in old.stages
    ]
    status = noted.model_copy(
        update={
            "observed_generation": gen,
            "state": State.failed,
            "summary": message,
            "conditions": conds,
            "stages": stages,
        }
    )
    active = tuple(sorted(j.name for j in inp.jobs if j.phase == JobPhase.active))
    return Plan(
        action=Action.failed,
        status=status,
        delete=active,
        events=transitions(old.conditions, conds),
        stage=old.current_stage,
    )


def _begin_retry(inp: PlanInput) -> PlanInput:
    """kubeslim.dev/retry: a failed or cancelled pipeline runs its failed stage again
    (new Jobs, named -r<round>); finished stages stay done, except those another
    resource's result stood for: the failure may be that result gone from the cache,
    so they run as this resource's own Jobs too."""
    old = inp.status
    stages = [
        s.model_copy(update={"state": StageState.pending, "message": "retried"})
        if s.state == StageState.failed or (is_shared(s) and old.state == State.failed)
        else s
        for s in old.stages
    ]
    status = old.model_copy(
        update={
            "retries": old.retries + 1,
            "last_retry": inp.retry,
            "stages": stages,
            "state": State.pending if old.state == State.failed else old.state,
        }
    )
    return replace(inp, status=status)


def _suspend(inp: PlanInput, walk: _Walk) -> None:
    """spec.suspend: create nothing, delete the running Jobs, free the slot."""
    walk.create.clear()
    walk.jobs = [j for j in walk.jobs if any(o.name == j.name for o in inp.jobs)]
    walk.delete.extend(j.name for j in inp.jobs if j.phase == JobPhase.active)
    walk.outcome = Action.suspended
    walk.stages = [
        s.model_copy(
            update={
                "state": StageState.pending,
                "message": "suspended (spec.suspend)",
                "progress": None,
            }
        )
        if s.name == walk.current
        else s
        for s in walk.stages
    ]


def _gives_up(inp: PlanInput, job: ObservedJob) -> bool:
    """Whether a Pod that cannot start has waited long enough (or can never start)."""
    if job.blocked_fatal:
        return True
    waited = seconds_between(job.blocked_since, inp.now)
    return waited is not None and waited >= inp.start_timeout


def _pick(inp: PlanInput, stage: str, shard: str, fingerprint: str) -> ObservedJob | None:
    """The Job that stands for one shard of a stage and fingerprint.

    A succeeded Job wins, then a running one, whatever generation made it (an
    edit that does not touch the stage must not restart it). A failed Job counts
    only for the current generation and retry round: an edit (say, more memory)
    or a kubeslim.dev/retry annotation retries the stage.
    """
    candidates = [
        j
        for j in inp.jobs
        if j.stage == stage
        and j.shard == shard
        and j.fingerprint == fingerprint
        and (
            j.phase != JobPhase.failed
            or (j.generation >= inp.generation and j.retry_round >= inp.status.retries)
        )
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda j: (_PHASE_RANK[j.phase], -j.generation))


def _base_entry(
    old: StageStatus | None,
    stage: str,
    fingerprint: str,
    jobs: Sequence[ObservedJob],
) -> StageStatus:
    """A stage's entry with what its Jobs say: name, times, attempts."""
    same_run = old is not None and old.fingerprint == fingerprint
    start = min((j.start_time for j in jobs if j.start_time), default=None)
    ends = [j.completion_time for j in jobs if j.completion_time]
    return StageStatus(
        name=stage,
        state=StageState.pending,
        fingerprint=fingerprint,
        job_name=jobs[0].name if jobs else (old.job_name if same_run and old else None),
        start_time=start or (old.start_time if same_run and old else None),
        completion_time=max(ends) if ends and len(ends) == len(jobs) else None,
        attempts=sum(j.active + j.succeeded + j.failed for j in jobs),
        message=old.message if same_run and old else "",
        result_uri=old.result_uri if same_run and old else None,
    )


def _pending(stage: str, fingerprint: str) -> StageStatus:
    return StageStatus(name=stage, state=StageState.pending, fingerprint=fingerprint)


def _merge_results(results: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One stage result from its shards' results (one shard: itself)."""
    if len(results) == 1:
        return results[0]
    if any(r is None for r in results):
        return None
    known = [r for r in results if r is not None]
    outputs = {f"{i}/{k}": v for i, r in enumerate(known) for k, v in r.get("outputs", {}).items()}
    return {
        "outputs": outputs,
        "metrics": known[0].get("metrics", {}),
        "durationSeconds": max(float(r.get("durationSeconds", 0) or 0) for r in known),
        "reused": all(r.get("reused") for r in known),
    }


def _finish(inp: PlanInput, walk: _Walk, stale: tuple[str, ...]) -> Plan:
    """Assemble status, conditions and events from the walk."""
    old = inp.status
    root = ""
    if not isinstance(inp.spec, SpecError):
        root = artifacts_root(inp.spec.artifacts.uri, inp.namespace, inp.name)
    artifacts = _artifacts(old.artifacts, walk, root)
    metrics = _metrics(old.metrics, walk)
    state, summary = _state_and_summary(inp, walk, metrics)
    conditions = _conditions(inp, walk, state, summary)
    current = walk.current
    status = old.model_copy(
        update={
            "observed_generation": inp.generation,
            "state": state,
            "current_stage": current,
            "summary": _cap(summary, 1024),
            "conditions": conditions,
            "stages": walk.stages,
            "jobs": walk.jobs[:64],
            "artifacts": artifacts,
            "metrics": metrics,
            **columns(metrics),
            "search": _search(inp, walk),
        }
    )
    return Plan(
        action=walk.outcome,
        status=status,
        create=tuple(walk.create),
        delete=stale,
        events=transitions(old.conditions, conditions),
        holds_slot=walk.outcome in (Action.create_jobs, Action.wait),
        stage=current,
        # A search round's select result, for _next_round (not carried out by handlers).
        extra={"select_result": walk.results["select"]} if "select" in walk.results else {},
    )


def _artifacts(old: Artifacts, walk: _Walk, root: str) -> Artifacts:
    """Keep the URIs of stages still done; replace those just recorded; drop the rest."""
    values = old.model_dump(by_alias=False)
    for (stage, _), attr in ARTIFACT_FIELDS.items():
        if stage in walk.cleared:
            values[attr] = None
    fresh = artifacts_from(walk.results, root).model_dump(by_alias=False, exclude_none=True)
    return Artifacts(**{**values, **fresh})


def _metrics(old: Metrics | None, walk: _Walk) -> Metrics | None:
    # With a search, the select stage measures the chosen model against the original.
    stage = "select" if any(s.name == "select" for s in walk.stages) else "benchmark"
    if stage in walk.results:
        return metrics_from(walk.results[stage])
    return None if stage in walk.cleared else old


def _search(inp: PlanInput, walk: _Walk) -> SearchStatus | None:
    """status.search from the select result, or from the candidates' Jobs before it."""
    if isinstance(inp.spec, SpecError):
        return None
    # Each resource writes below <artifacts.uri>/<namespace>/<name> (executors/job.py).
    root = f"{inp.spec.artifacts.uri.rstrip('/')}/{inp.namespace}/{inp.name}"
    jobs = [(j.shard, j.stage, j.phase.value) for j in inp.jobs]
    if "select" in walk.results:
        return search_status(inp.spec, inp.status, walk.results["select"], jobs, root)
    if "select" not in walk.cleared and inp.status.search is not None:
        return inp.status.search
    return search_status(inp.spec, inp.status, None, jobs, root)


def _state_and_summary(inp: PlanInput, walk: _Walk, metrics: Metrics | None) -> tuple[State, str]:
    if walk.outcome == Action.succeeded:
        return State.succeeded, success_summary(metrics)
    if walk.outcome == Action.failed:
        return State.failed, walk.failure.splitlines()[0] if walk.failure else "failed"
    if walk.outcome == Action.suspended:
        return State.suspended, f"suspended (spec.suspend) before {walk.current}"
    if walk.outcome == Action.wait_for_capacity:
        limit = inp.slots.limit
        return State.waiting, f"waiting for capacity ({limit} optimizations running at once)"
    entry = next(s for s in walk.stages if s.name == walk.current)
    text = progress_text(entry.progress)
    return State.running, f"running {walk.current}" + (f" ({text})" if text else "")


def _conditions(inp: PlanInput, walk: _Walk, state: State, summary: str) -> list[Condition]:
    gen, now = inp.generation, inp.now
    conds = list(inp.status.conditions)
    reused = inp.status.observed_generation not in (None, inp.generation)
    for entry in walk.stages:
        status, reason = _stage_condition(entry, reused, walk, inp.status.conditions)
        conds = set_condition(
            conds, STAGE_CONDITIONS[entry.name], status, reason, entry.message, now, gen
        )
    done = state == State.succeeded
    if done:
        reason = Reason.all_stages_completed
    elif state == State.failed:
        reason = walk.failure_reason
    elif state == State.waiting:
        reason = Reason.waiting_for_capacity
    elif state == State.suspended:
        reason = Reason.suspended
    else:
        reason = Reason.in_progress
    conds = set_condition(conds, ConditionType.ready, _b(done), reason, summary, now, gen)
    conds = set_condition(conds, ConditionType.succeeded, _b(done), reason, summary, now, gen)
    failed = state == State.failed
    failure = walk.failure if failed else ""
    conds = set_condition(conds, ConditionType.failed, _b(failed), reason, failure, now, gen)
    waiting = state == State.waiting
    wait_reason = Reason.waiting_for_capacity if waiting else Reason.capacity_available
    wait_msg = summary if waiting else ""
    conds = set_condition(
        conds, ConditionType.waiting, _b(waiting), wait_reason, wait_msg, now, gen
    )
    suspended = state == State.suspended
    if suspended or find_condition(conds, ConditionType.suspended) is not None:
        why = Reason.suspended if suspended else Reason.resumed
        text = summary if suspended else ""
        conds = set_condition(conds, ConditionType.suspended, _b(suspended), why, text, now, gen)
    return conds


def _stage_condition(
    entry: StageStatus, reused: bool, walk: _Walk, conditions: Sequence[Condition]
) -> tuple[str, str]:
    if entry.state == StageState.succeeded:
        if entry.name in walk.shared:
            return "True", Reason.reused
        if entry.name in walk.results:
            return "True", Reason.completed
        # Carried over: Reused from the first look at a new generation on, until re-run.
        before = find_condition(conditions, STAGE_CONDITIONS[entry.name])
        kept = before.reason if before is not None and before.status == "True" else None
        return "True", Reason.reused if reused or kept == Reason.reused else Reason.completed
    if entry.state == StageState.skipped:
        return "False", Reason.skipped
    if entry.state == StageState.failed:
        return "False", walk.failure_reason
    if entry.state == StageState.running:
        if entry.name in walk.blocked:
            return "False", walk.blocked[entry.name]  # the Pod's own word: ImagePullBackOff
        return "False", Reason.running if entry.progress else Reason.job_created
    if entry.name == walk.current and walk.outcome == Action.wait_for_capacity:
        return "False", Reason.waiting_for_capacity
    if entry.name == walk.current and walk.outcome == Action.suspended:
        return "False", Reason.suspended
    return "False", Reason.pending


def _invalid(inp: PlanInput, err: SpecError) -> Plan:
    return invalid_spec_plan(inp.status, inp.generation, err, inp.now)


def invalid_spec_plan(
    old: ModelOptimizationStatus,
    generation: int,
    err: SpecError,
    now: str,
    reason: Reason = Reason.invalid_spec,
) -> Plan:
    """A spec that passed the schema but not the models (or cannot work on a cluster):
    say which field, do nothing else."""
    lead = {
        Reason.invalid_spec: "invalid spec",
        Reason.not_allowed: "not allowed",
    }.get(reason, "cannot run on a cluster")
    message = f"{lead}: {err}"
    conds = set_condition(
        old.conditions, ConditionType.failed, "True", reason, message, now, generation
    )
    for type_ in (ConditionType.ready, ConditionType.succeeded):
        conds = set_condition(conds, type_, "False", reason, message, now, generation)
    status = old.model_copy(
        update={
            "observed_generation": generation,
            "state": State.failed,
            "current_stage": None,
            "summary": _cap(message, 1024),
            "conditions": conds,
        }
    )
    return Plan(
        action=Action.invalid_spec,
        status=status,
        events=transitions(old.conditions, conds),
        extra={"field": err.field},
    )


def _summaries(jobs: Sequence[ObservedJob], stage: str, fingerprint: str) -> list[JobSummary]:
    """A finished stage's Jobs of this run: a failed try before a retry is history."""
    return [
        _summary(j)
        for j in jobs
        if j.stage == stage and j.fingerprint == fingerprint and j.phase != JobPhase.failed
    ]


def _summary(job: ObservedJob) -> JobSummary:
    return JobSummary(
        name=job.name,
        stage=job.stage,
        workers=job.workers if job.workers > 1 else None,
        active=job.active,
        succeeded=job.succeeded,
        failed=job.failed,
    )


def _b(value: bool) -> str:
    return "True" if value else "False"


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
