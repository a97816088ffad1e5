"""The planner as a pure function: no Kubernetes, the Jobs are plain data.

A tiny in-memory "world" holds the Jobs the plans ask for; each test drives it
the way Job events would, then checks the decision and the status.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace
from typing import Any

import pytest

from kubeslim.api.manifest import parse_spec
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ConditionType, ModelOptimizationStatus, Progress, Reason, State
from kubeslim.errors import SpecError
from kubeslim.planner import Action, JobPhase, ObservedJob, Plan, PlanInput, Slots, job_name, plan
from kubeslim.planner.status import find_condition, set_condition, transitions, with_progress
from kubeslim.stages.pipeline import spec_fingerprints

SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "pruning": {"target": {"filterRate": 0.3}, "fineTune": {"epochs": 1}},
    "artifacts": {"uri": "s3://bucket/runs"},
}
BENCH_METRICS = {
    "baseline": {"accuracy": 0.95, "latencyMsP50": 2.0, "throughputFps": 500.0, "sizeBytes": 4000},
    "optimized": {"accuracy": 0.94, "latencyMsP50": 0.5, "throughputFps": 2e3, "sizeBytes": 1000},
    "precision": "f32",
    "ignoredExtra": 1,
}
OUTPUTS = {
    "prune": {"model": "file:///a/prune/model.pt"},
    "convert": {"onnx": "file:///a/convert/model.onnx", "ir": "file:///a/convert/model.xml"},
    "quantize": {"int8_ir": "file:///a/quantize/model.xml"},
    "benchmark": {"report": "file:///a/benchmark/report.json"},
}


def short(name: str) -> str:
    """A Job name without its fingerprint suffix (`demo-prune-g1-0a1b2c3d` -> `demo-prune-g1`)."""
    return re.sub(r"-[0-9a-f]{8}(-r\d+)?$", r"\1", name)


def spec_of(**edits: Any) -> ModelOptimizationSpec:
    body = {**SPEC, **edits}
    return parse_spec(body)


class World:
    """The resource's status and Jobs, advanced by applying plans."""

    def __init__(self, spec: ModelOptimizationSpec | SpecError, generation: int = 1) -> None:
        self.spec = spec
        self.generation = generation
        self.status = ModelOptimizationStatus()
        self.jobs: dict[str, ObservedJob] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.clock = 0
        self.retry = ""  # the kubeslim.dev/retry annotation
        self.cancel = ""  # the kubeslim.dev/cancel annotation

    def step(self, slots: Slots | None = None, write: bool = True) -> Plan:
        self.clock += 1
        result = plan(
            PlanInput(
                name="demo",
                namespace="ns",
                generation=self.generation,
                spec=self.spec,
                status=self.status,
                jobs=list(self.jobs.values()),
                slots=slots or Slots(),
                now=f"2026-11-27T07:00:{self.clock:02d}Z",
                retry=self.retry,
                cancel=self.cancel,
            )
        )
        for request in result.create:
            if request.name not in self.jobs:  # a second create would be a 409
                self.created.append(short(request.name))
                self.jobs[request.name] = ObservedJob(
                    name=request.name,
                    stage=request.stage,
                    fingerprint=request.fingerprint,
                    generation=request.generation,
                    shard=request.shard,
                    retry_round=request.retry_round,
                    active=1,
                    start_time=f"2026-11-27T07:00:{self.clock:02d}Z",
                )
        for name in result.delete:
            self.deleted.append(short(name))
            self.jobs.pop(name)
        if write:
            self.status = result.status
        return result

    def finish(self, stage: str, reused: bool = False) -> None:
        job = self.running(stage)
        metrics = BENCH_METRICS if stage == "benchmark" else {}
        result = {
            "stage": stage,
            "fingerprint": "content-hash",
            "outputs": OUTPUTS[stage],
            "metrics": metrics,
            "durationSeconds": 1.5,
            "reused": reused,
            "result_uri": f"file:///a/{stage}/result.json",
        }
        self.jobs[job.name] = replace(
            job,
            phase=JobPhase.succeeded,
            active=0,
            succeeded=1,
            completion_time="2026-11-27T07:59:00Z",
            result=result,
        )

    def fail(self, stage: str, why: str) -> None:
        job = self.running(stage)
        self.jobs[job.name] = replace(job, phase=JobPhase.failed, active=0, failed=3, failure=why)

    def running(self, stage: str) -> ObservedJob:
        active = [j for j in self.jobs.values() if j.stage == stage and j.phase == JobPhase.active]
        assert len(active) == 1, (stage, self.jobs)
        return active[0]

    def run_to_end(self) -> Plan:
        for _ in range(10):
            result = self.step()
            if result.terminal:
                return result
            self.finish(result.stage or "")
        raise AssertionError("the pipeline did not end")


def cond(status: ModelOptimizationStatus, type_: str) -> tuple[str, str]:
    c = find_condition(status.conditions, type_)
    assert c is not None, type_
    return c.status, c.reason


def test_fresh_resource_creates_the_first_stage_job() -> None:
    world = World(spec_of())
    result = world.step()
    assert result.action == Action.create_jobs
    assert [short(r.name) for r in result.create] == ["demo-prune-g1"]
    assert result.holds_slot
    assert result.status.state == State.running
    assert result.status.current_stage == "prune"
    assert result.status.observed_generation == 1
    assert cond(result.status, ConditionType.pruned) == ("False", Reason.job_created)
    assert cond(result.status, ConditionType.ready) == ("False", Reason.in_progress)
    assert [s.state for s in result.status.stages] == ["Running", "Pending", "Pending", "Pending"]
    assert any(e.reason == Reason.job_created for e in result.events)


def test_full_pipeline_records_results_metrics_and_artifacts() -> None:
    world = World(spec_of())
    final = world.run_to_end()
    assert final.action == Action.succeeded and not final.holds_slot
    assert world.created == [f"demo-{s}-g1" for s in ("prune", "convert", "quantize", "benchmark")]
    status = final.status
    assert status.state == State.succeeded and status.current_stage is None
    assert cond(status, ConditionType.ready) == ("True", Reason.all_stages_completed)
    assert cond(status, ConditionType.succeeded) == ("True", Reason.all_stages_completed)
    assert cond(status, ConditionType.failed)[0] == "False"
    assert cond(status, ConditionType.benchmarked) == ("True", Reason.completed)
    assert status.metrics is not None
    assert status.metrics.speedup == 4.0 and status.metrics.latency_speedup == 4.0
    assert status.metrics.size_reduction == 4.0
    assert status.metrics.accuracy_drop == pytest.approx(1.0)
    assert (status.speedup, status.size_reduction, status.accuracy_drop) == (
        "4.00x",
        "4.00x",
        "1.00pt",
    )
    assert status.summary == "succeeded: 4.00x faster, 4.00x smaller, accuracy drop 1.00pt"
    assert status.artifacts.pruned_model == OUTPUTS["prune"]["model"]
    assert status.artifacts.int8_ir == OUTPUTS["quantize"]["int8_ir"]
    assert status.artifacts.report == OUTPUTS["benchmark"]["report"]
    prune = status.stages[0]
    assert (short(prune.job_name or ""), prune.duration_seconds, prune.attempts) == (
        "demo-prune-g1",
        1.5,
        1,
    )
    assert prune.result_uri == "file:///a/prune/result.json"
    assert prune.completion_time == "2026-11-27T07:59:00Z"
    assert [short(j.name) for j in status.jobs] == world.created
    # Nothing happens once done, and a replay changes nothing.
    again = world.step()
    assert again.action == Action.succeeded and not again.create and not again.events
    assert again.status == status


def test_restart_mid_run_neither_duplicates_nor_loses_a_job() -> None:
    world = World(spec_of())
    world.step()
    world.finish("prune")
    world.step()  # convert created
    # A restart: the status write of the last plan was lost, and the plan runs twice.
    world.status = ModelOptimizationStatus()
    first = world.step()
    second = world.step()
    assert first.action == second.action == Action.wait
    assert not first.create and not second.create
    assert world.created == ["demo-prune-g1", "demo-convert-g1"]
    assert second.status.stages[0].state == "Succeeded"
    assert short(second.status.stages[1].job_name or "") == "demo-convert-g1"


def test_lost_status_and_lost_job_recreates_the_same_name() -> None:
    world = World(spec_of())
    world.step()
    world.jobs.clear()  # the Job was deleted by hand before it finished
    result = world.step()
    assert [short(r.name) for r in result.create] == ["demo-prune-g1"]


def test_skipped_stages_are_not_run() -> None:
    world = World(spec_of(pruning={"enabled": False}, benchmark={"enabled": False}))
    final = world.run_to_end()
    assert world.created == ["demo-convert-g1", "demo-quantize-g1"]
    assert cond(final.status, ConditionType.pruned) == ("False", Reason.skipped)
    assert final.status.metrics is None and final.status.speedup is None
    assert final.status.summary == "succeeded"


def test_spec_edit_reruns_from_the_first_changed_stage() -> None:
    world = World(spec_of())
    world.run_to_end()
    before = world.status
    world.spec = spec_of(quantization={"preset": "mixed"})
    world.generation = 2
    result = world.step()
    assert [short(r.name) for r in result.create] == ["demo-quantize-g2"]
    stages = {s.name: s.state for s in result.status.stages}
    assert stages == {
        "prune": "Succeeded",
        "convert": "Succeeded",
        "quantize": "Running",
        "benchmark": "Pending",
    }
    # Reused stages keep their condition's transition time; re-run ones report it.
    old_pruned = find_condition(before.conditions, ConditionType.pruned)
    new_pruned = find_condition(result.status.conditions, ConditionType.pruned)
    assert old_pruned and new_pruned
    assert new_pruned.reason == Reason.reused
    assert new_pruned.last_transition_time == old_pruned.last_transition_time
    # Metrics and the outputs of re-run stages are gone until measured again.
    assert result.status.metrics is None and result.status.artifacts.int8_ir is None
    assert result.status.artifacts.onnx == OUTPUTS["convert"]["onnx"]
    assert result.status.state == State.running
    assert cond(result.status, ConditionType.ready) == ("False", Reason.in_progress)
    world.finish("quantize")
    assert cond(world.step().status, ConditionType.pruned) == ("True", Reason.reused)
    world.finish("benchmark")
    final = world.step()
    assert final.action == Action.succeeded
    assert world.created[-2:] == ["demo-quantize-g2", "demo-benchmark-g2"]
    assert final.status.metrics is not None


def test_edit_outside_the_stages_inputs_reruns_nothing() -> None:
    world = World(spec_of())
    world.step()  # prune running
    world.spec = spec_of(execution={"backoffLimit": 5})
    world.generation = 2
    result = world.step()
    assert result.action == Action.wait and not result.create and not result.delete
    assert short(result.status.stages[0].job_name or "") == "demo-prune-g1"


def test_edit_while_running_deletes_the_stale_job() -> None:
    world = World(spec_of())
    world.step()  # prune g1 running
    world.spec = spec_of(pruning={"target": {"filterRate": 0.5}})
    world.generation = 2
    result = world.step()
    assert tuple(map(short, result.delete)) == ("demo-prune-g1",)
    assert [short(r.name) for r in result.create] == ["demo-prune-g2"]


def test_failed_job_fails_the_pipeline_with_its_log_tail() -> None:
    world = World(spec_of())
    world.step()
    world.fail("prune", "BackoffLimitExceeded: Job has reached the specified backoff limit\nOOM")
    result = world.step()
    assert result.action == Action.failed and result.terminal and not result.holds_slot
    status = result.status
    assert status.state == State.failed and status.current_stage == "prune"
    failed = find_condition(status.conditions, ConditionType.failed)
    assert failed and failed.status == "True" and failed.reason == Reason.job_failed
    assert "demo-prune-g1" in failed.message and "OOM" in failed.message
    assert cond(status, ConditionType.pruned) == ("False", Reason.job_failed)
    assert status.summary.startswith("stage prune failed")
    assert [e.type for e in result.events if e.reason == Reason.job_failed][:1] == ["Warning"]
    # No crash loop: looking again creates nothing and posts no new events; the log tail
    # read when the failure was first seen stays, though the Pod is not read again.
    job = next(j for n, j in world.jobs.items() if short(n) == "demo-prune-g1")
    world.jobs[job.name] = replace(job, failure="BackoffLimitExceeded")
    again = world.step()
    assert again.action == Action.failed and not again.create and not again.events
    assert "OOM" in again.status.stages[0].message


def test_failure_sticks_when_the_failed_job_is_gone() -> None:
    world = World(spec_of())
    world.step()
    world.fail("prune", "boom")
    world.step()
    world.jobs.clear()  # ttlSecondsAfterFinished removed it
    result = world.step()
    assert result.action == Action.failed and not result.create


def _prune_oom_then_more_memory() -> World:
    """A resource whose prune failed OOMKilled, then edited (generation 2) to get more memory."""
    world = World(spec_of())
    world.step()
    world.fail("prune", "OOMKilled")
    world.step()
    world.spec = spec_of(execution={"pruneResources": {"limits": {"memory": "8Gi"}}})
    world.generation = 2
    return world


def test_new_generation_retries_a_failed_stage() -> None:
    world = _prune_oom_then_more_memory()
    result = world.step()
    assert [short(r.name) for r in result.create] == ["demo-prune-g2"]
    assert result.status.state == State.running
    assert cond(result.status, ConditionType.failed)[0] == "False"


def test_invalid_spec_names_the_field() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"model": {"architecture": "resnet18", "entryPoint": "a:b"}, "dataset": {}})
    world = World(err.value)
    result = world.step()
    assert result.action == Action.invalid_spec and result.terminal
    assert not result.create and not result.holds_slot
    failed = find_condition(result.status.conditions, ConditionType.failed)
    assert failed and (failed.status, failed.reason) == ("True", Reason.invalid_spec)
    assert failed.message.startswith("invalid spec: spec.model")
    assert result.extra["field"] == "spec.model"
    assert result.events[0].type == "Warning" and result.events[0].reason == Reason.invalid_spec
    # Fixing the spec (a new generation) starts the pipeline.
    world.spec = spec_of()
    world.generation = 2
    fixed = world.step()
    assert fixed.action == Action.create_jobs
    assert cond(fixed.status, ConditionType.failed)[0] == "False"


def test_capacity_limit_makes_others_wait() -> None:
    full = Slots(limit=1, holders=frozenset({"ns/other"}))
    world = World(spec_of())
    result = world.step(full)
    assert result.action == Action.wait_for_capacity and not result.create
    assert not result.holds_slot
    assert result.status.state == State.waiting
    assert cond(result.status, ConditionType.waiting) == ("True", Reason.waiting_for_capacity)
    assert cond(result.status, ConditionType.pruned) == ("False", Reason.waiting_for_capacity)
    freed = world.step(Slots(limit=1, holders=frozenset()))
    assert freed.action == Action.create_jobs and freed.holds_slot
    assert cond(freed.status, ConditionType.waiting) == ("False", Reason.capacity_available)
    # Holding a slot keeps it, whatever the others do; the next stage needs no new slot.
    world.finish("prune")
    held = world.step(Slots(limit=1, holders=frozenset({"ns/demo", "ns/other"})))
    assert held.action == Action.create_jobs


def test_running_jobs_keep_going_when_the_limit_drops() -> None:
    world = World(spec_of())
    world.step()
    result = world.step(Slots(limit=1, holders=frozenset({"ns/a", "ns/b"})))
    assert result.action == Action.wait and result.holds_slot


def test_lost_result_still_completes_the_stage() -> None:
    world = World(spec_of())
    world.step()
    job = world.running("prune")
    world.jobs[job.name] = replace(job, phase=JobPhase.succeeded, active=0, succeeded=1)
    result = world.step()
    assert result.status.stages[0].state == "Succeeded"
    assert "not available" in result.status.stages[0].message
    assert [r.stage for r in result.create] == ["convert"]


def test_reused_result_is_reported() -> None:
    world = World(spec_of())
    world.step()
    world.finish("prune", reused=True)
    result = world.step()
    assert result.status.stages[0].message == "reused a cached result"


def test_progress_is_kept_across_plans_and_shown_in_the_summary() -> None:
    world = World(spec_of())
    world.step()
    progress = Progress(phase="fine-tune", epoch=3, epochs=10, step=4, steps=50, loss=0.41234)
    world.status = with_progress(world.status, "prune", progress)
    assert world.status.summary == "running prune (fine-tune, epoch 3/10, step 4/50, loss 0.4123)"
    result = world.step()
    assert result.status.stages[0].progress == progress
    assert cond(result.status, ConditionType.pruned) == ("False", Reason.running)
    pruned = find_condition(result.status.conditions, ConditionType.pruned)
    assert pruned and pruned.message == "running: fine-tune, epoch 3/10, step 4/50, loss 0.4123"
    assert result.status.summary.startswith("running prune (fine-tune, epoch 3/10")


def test_conditions_keep_transition_time_until_status_changes() -> None:
    conds = set_condition([], "Ready", "False", "A", "m", "t1")
    conds = set_condition(conds, "Ready", "False", "B", "m2", "t2")
    assert conds[0].last_transition_time == "t1" and conds[0].reason == "B"
    conds2 = set_condition(conds, "Ready", "True", "C", "", "t3")
    assert conds2[0].last_transition_time == "t3"
    assert [e.reason for e in transitions(conds, conds2)] == ["C"]
    assert transitions(conds2, conds2) == ()


def test_job_names_are_deterministic_and_fit() -> None:
    assert job_name("demo", "prune", 3) == "demo-prune-g3"
    long = job_name("x" * 63, "benchmark", 12345)
    assert len(long) == 63 and long == job_name("x" * 63, "benchmark", 12345)
    assert long != job_name("x" * 63, "benchmark", 12346)


def test_fingerprints_drive_job_identity() -> None:
    # Guard for the contract the planner relies on: an edit changes its stage and later ones.
    a = spec_fingerprints(spec_of())
    b = spec_fingerprints(spec_of(benchmark={"durationSeconds": 2.0}))
    assert [a[s] == b[s] for s in ("prune", "convert", "quantize", "benchmark")] == [
        True,
        True,
        True,
        False,
    ]


# --- production behaviour (issue 13) ----------------------------------------------------


def test_job_names_carry_the_fingerprint() -> None:
    assert job_name("demo", "prune", 3, fingerprint="0123456789abcdef") == "demo-prune-g3-01234567"
    assert job_name("demo", "prune", 3, fingerprint="fedcba") != job_name(
        "demo", "prune", 3, fingerprint="0123456789"
    )


def test_finished_resource_is_left_alone_by_an_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(spec_of())
    world.run_to_end()
    done = world.status
    # Another operator version: other fingerprints, and the Jobs are gone (TTL).
    monkeypatch.setattr(
        importlib.import_module("kubeslim.planner.plan"),
        "spec_fingerprints",
        lambda spec: {s: "e" * 64 for s in ("prune", "convert", "quantize", "benchmark")},
    )
    world.jobs.clear()
    created = list(world.created)
    result = world.step()
    assert result.action == Action.succeeded and result.status == done
    assert result.create == () and result.delete == () and result.events == ()
    assert world.created == created
    # A failed one is left alone too, until its spec changes.
    failed = World(spec_of())
    failed.step()
    failed.fail("prune", "boom")
    failed.step()
    failed.jobs.clear()
    assert failed.step().action == Action.failed and failed.created == ["demo-prune-g1"]


def test_results_keep_keys_relative_to_the_artifacts_root() -> None:
    world = World(spec_of())
    world.step()
    job = world.running("prune")
    world.jobs[job.name] = replace(
        job,
        phase=JobPhase.succeeded,
        active=0,
        succeeded=1,
        result={"outputs": {"model": "prune/0a1b/model.pt"}, "result_uri": "prune/result.json"},
    )
    status = world.step().status
    # Resolved against this resource's root: <artifacts.uri>/<namespace>/<name>.
    assert status.artifacts.pruned_model == "s3://bucket/runs/ns/demo/prune/0a1b/model.pt"
    assert status.stages[0].result_uri == "s3://bucket/runs/ns/demo/prune/result.json"


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ({"artifacts": {"uri": "/data/artifacts"}}, "spec.artifacts.uri"),
        ({"artifacts": {"uri": "./artifacts", "volume": {"claimName": "a"}}}, "spec.artifacts.uri"),
        (
            {"model": {**SPEC["model"], "checkpoint": "/home/me/model.pt"}},
            "spec.model.checkpoint",
        ),
        ({"dataset": {"uri": "file:///srv/images"}}, "spec.dataset.uri"),
    ],
)
def test_what_cannot_work_in_a_cluster_is_refused_up_front(
    edits: dict[str, Any], field: str
) -> None:
    world = World(spec_of(**edits))
    result = world.step()
    assert result.action == Action.invalid_spec and result.create == ()
    assert cond(result.status, ConditionType.failed) == ("True", Reason.unsupported_in_cluster)
    failed = find_condition(result.status.conditions, ConditionType.failed)
    assert failed is not None and failed.message.startswith(f"cannot run on a cluster: {field}:")


def test_local_paths_under_the_pods_volumes_are_accepted() -> None:
    spec = spec_of(
        artifacts={"uri": "/shared/runs", "volume": {"claimName": "runs"}},
        model={**SPEC["model"], "checkpoint": "/data/models/m.pt"},
        execution={"datasetVolume": {"claimName": "datasets", "mountPath": "/data"}},
    )
    assert World(spec).step().action == Action.create_jobs


def _blocked(reason: str, message: str, fatal: bool) -> World:
    """A world whose prune Pod cannot start since 07:00:01."""
    world = World(spec_of())
    world.step()
    job = world.running("prune")
    world.jobs[job.name] = replace(
        job,
        blocked=f"{reason}: {message}",
        blocked_reason=reason,
        blocked_fatal=fatal,
        blocked_since="2026-11-27T07:00:01Z",
    )
    return world


def test_a_pod_that_cannot_start_fails_its_stage_and_frees_the_slot() -> None:
    world = _blocked("CreateContainerConfigError", 'secret "s3" not found', fatal=True)
    result = world.step()
    assert result.action == Action.failed and not result.holds_slot
    assert tuple(map(short, result.delete)) == ("demo-prune-g1",)
    assert cond(result.status, ConditionType.failed) == ("True", Reason.pod_cannot_start)
    assert 'secret "s3" not found' in result.status.summary


def test_a_slow_start_shows_the_pods_reason_until_the_timeout() -> None:
    world = _blocked("ImagePullBackOff", "Back-off pulling image", fatal=False)
    result = world.step()  # at 07:00:02, one second later
    assert result.action == Action.wait
    assert cond(result.status, ConditionType.pruned) == ("False", "ImagePullBackOff")
    assert result.status.stages[0].message.startswith("Pod cannot start yet: ImagePullBackOff")
    late = plan(
        PlanInput(
            name="demo",
            namespace="ns",
            generation=1,
            spec=world.spec,
            status=world.status,
            jobs=list(world.jobs.values()),
            now="2026-11-27T07:20:00Z",
            start_timeout=600,
        )
    )
    assert late.action == Action.failed
    assert cond(late.status, ConditionType.failed) == ("True", Reason.pod_cannot_start)


def test_status_jobs_keep_only_the_current_run() -> None:
    world = _prune_oom_then_more_memory()
    world.step()
    world.finish("prune")
    world.step()  # records prune's result
    result = world.step()  # prune is history now: its failed first try is not listed
    assert [short(j.name) for j in result.status.jobs] == ["demo-prune-g2", "demo-convert-g2"]


def _with_annotations(world: World, retry: str = "", cancel: str = "") -> Plan:
    world.retry, world.cancel = retry, cancel
    return world.step()


def test_suspend_deletes_running_jobs_and_resume_continues() -> None:
    world = World(spec_of())
    world.step()
    world.finish("prune")
    world.step()  # convert running
    world.spec = spec_of(suspend=True)
    world.generation = 2
    result = world.step()
    assert result.action == Action.suspended and not result.holds_slot and result.create == ()
    assert [short(n) for n in result.delete] == ["demo-convert-g1"]
    assert result.status.state == State.suspended
    assert cond(result.status, ConditionType.suspended) == ("True", Reason.suspended)
    assert cond(result.status, ConditionType.converted) == ("False", Reason.suspended)
    assert world.step().create == ()  # stays suspended
    world.spec = spec_of(suspend=False)
    world.generation = 3
    resumed = world.step()
    assert [short(r.name) for r in resumed.create] == ["demo-convert-g3"]
    assert cond(resumed.status, ConditionType.suspended) == ("False", Reason.resumed)
    assert cond(resumed.status, ConditionType.pruned)[0] == "True"  # finished stages stay done


def test_retry_annotation_reruns_the_failed_stage_without_a_spec_edit() -> None:
    world = World(spec_of())
    world.step()
    world.finish("prune")
    world.step()
    world.fail("convert", "container exited 75: cannot reach the S3 endpoint")
    assert world.step().action == Action.failed
    assert _with_annotations(world).action == Action.failed  # nothing asked: stays failed
    result = _with_annotations(world, retry="1")
    assert [short(r.name) for r in result.create] == ["demo-convert-g1-r1"]
    assert result.create[0].retry_round == 1
    assert result.status.retries == 1 and result.status.last_retry == "1"
    assert result.status.state == State.running
    assert _with_annotations(world, retry="1").create == ()  # the same value: no new try
    world.finish("convert")
    assert _with_annotations(world, retry="1").stage == "quantize"


def test_cancel_annotation_stops_the_pipeline() -> None:
    world = World(spec_of())
    world.step()
    result = _with_annotations(world, cancel="now")
    assert result.action == Action.failed and [short(n) for n in result.delete] == ["demo-prune-g1"]
    assert cond(result.status, ConditionType.failed) == ("True", Reason.cancelled)
    assert result.status.last_cancel == "now" and result.status.stages[0].state == "Failed"
    assert _with_annotations(world, cancel="now").create == ()  # stays cancelled
    again = _with_annotations(world, cancel="now", retry="go")  # retry starts it again
    assert [short(r.name) for r in again.create] == ["demo-prune-g1-r1"]


def test_what_the_operator_does_not_allow_is_refused_naming_the_field() -> None:
    from kubeslim.planner.policy import Allowed

    allowed = Allowed(
        service_accounts=("ml-runner",), images=("registry.local/ml/",), claims=("data",)
    )
    cases = [
        ({"serviceAccountName": "cluster-admin-sa"}, "spec.execution.serviceAccountName"),
        ({"trainerImage": "evil.example/x:1"}, "spec.execution.trainerImage"),
        ({"datasetVolume": {"claimName": "other"}}, "spec.execution.datasetVolume.claimName"),
    ]
    for execution, field in cases:
        inp = PlanInput(
            name="demo", namespace="ns", generation=1, spec=spec_of(execution=execution),
            status=ModelOptimizationStatus(), allowed=allowed,
        )  # fmt: skip
        result = plan(inp)
        assert result.action == Action.invalid_spec and result.create == ()
        assert cond(result.status, ConditionType.failed) == ("True", Reason.not_allowed)
        assert result.status.summary.startswith(f"not allowed: {field}:")
    fine = {"serviceAccountName": "ml-runner", "trainerImage": "registry.local/ml/m:1"}
    inp = PlanInput(
        name="demo", namespace="ns", generation=1, spec=spec_of(execution=fine),
        status=ModelOptimizationStatus(), allowed=allowed,
    )  # fmt: skip
    assert plan(inp).action == Action.create_jobs


def test_describe_says_what_to_do_next() -> None:
    world = World(spec_of())
    result = world.step()
    assert result.status.next_step == f"running prune: kubectl logs -f job/{result.create[0].name}"
    world.fail("prune", "OOMKilled")
    failed = world.step().status.next_step or ""
    assert "kubectl annotate mopt demo kubeslim.dev/retry=" in failed
    assert World(spec_of(suspend=True)).step().status.next_step == (
        "suspended: set spec.suspend to false to resume"
    )
    refused = World(spec_of(artifacts={"uri": "/local"})).step().status.next_step
    assert refused == "fix the field the Failed condition names and apply the spec again"
    done = World(spec_of())
    assert (done.run_to_end().status.next_step or "").startswith("done:")
