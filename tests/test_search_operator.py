"""The search on a cluster, at the planner (pure, no Kubernetes): one Job per candidate
and stage under the parallelism limit, finished candidates kept across a restart,
status.search from the select stage, and the `--candidate` Job command."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from kubeslim.api.status import State
from kubeslim.config import OperatorConfig
from kubeslim.executors.job import Owner, build_job
from kubeslim.planner import JobPhase, JobRequest, PlanInput, plan
from kubeslim.planner.search import pack_table
from tests.test_planner import SPEC, World, spec_of

SEARCH = {"targets": [0.3, 0.5, 0.7], "maxAccuracyDrop": 0.01, "parallelism": 2}
ARTIFACTS = {"uri": "s3://bucket/runs"}
SELECT_METRICS: dict[str, Any] = {
    "outcome": "Selected",
    "chosen": "t5000",
    "closest": None,
    "nextRound": [],
    "message": "chose t5000 (target 0.5): 2.1x throughput, drop 0.80 points within 1.00 points",
    "selectedIr": "s3://bucket/runs/ns/demo/selected/model.xml",
    "candidates": [
        {
            "name": "t3000",
            "target": 0.3,
            "round": 0,
            "state": "Measured",
            "accuracyDrop": 0.2,
            "speedup": 1.5,
            "withinBudget": True,
        },
        {
            "name": "t5000",
            "target": 0.5,
            "round": 0,
            "state": "Measured",
            "accuracyDrop": 0.8,
            "speedup": 2.1,
            "withinBudget": True,
            "sizeBytes": 1000,
        },
        {
            "name": "t7000",
            "target": 0.7,
            "round": 0,
            "state": "Measured",
            "accuracyDrop": 3.0,
            "speedup": 2.9,
            "withinBudget": False,
        },
    ],
    "baseline": {"accuracy": 0.95, "throughputFps": 500.0, "sizeBytes": 4000},
    "optimized": {"accuracy": 0.942, "throughputFps": 1050.0, "sizeBytes": 1000},
    "speedup": 2.1,
    "accuracyDrop": 0.8,
}


def short(name: str) -> str:
    """A Job name without its fingerprint: demo-prune-g1-0a1b2c3d-t3000 -> demo-prune-g1-t3000."""
    return re.sub(r"-[0-9a-f]{8}(?=-|$)", "", name)


def finish_all(world: World, stage: str) -> None:
    for name, job in list(world.jobs.items()):
        if job.stage == stage and job.phase == JobPhase.active:
            metrics = SELECT_METRICS if stage == "select" else {}
            result = {"stage": stage, "fingerprint": "x", "outputs": {"report": "select/r.html"},
                      "metrics": metrics, "durationSeconds": 1.0}  # fmt: skip
            world.jobs[name] = replace(job, phase=JobPhase.succeeded, active=0, succeeded=1,
                                       result=result)  # fmt: skip


def test_candidates_run_as_parallel_jobs_under_the_limit_then_select() -> None:
    world = World(spec_of(search=SEARCH, artifacts=ARTIFACTS))
    first = world.step()
    assert sorted(short(r.name) for r in first.create) == [
        "demo-prune-g1-t3000",
        "demo-prune-g1-t5000",
    ]
    assert first.status.search is not None
    states = {c.name: c.state for c in first.status.search.candidates}
    assert states == {"t3000": "Pending", "t5000": "Pending", "t7000": "Pending"}
    world.step()
    states = {c.name: c.state for c in world.status.search.candidates}  # type: ignore[union-attr]
    assert states == {"t3000": "Running", "t5000": "Running", "t7000": "Pending"}
    # one finishes: the third candidate starts, never more than two at once
    job = next(j for j in world.jobs.values() if j.shard == "t3000")
    world.jobs[job.name] = replace(job, phase=JobPhase.succeeded, active=0, succeeded=1, result={})
    third = world.step()
    assert [short(r.name) for r in third.create] == ["demo-prune-g1-t7000"]
    seen_select = False
    for _ in range(12):
        running = [j for j in world.jobs.values() if j.phase == JobPhase.active]
        assert len(running) <= 2 or {j.stage for j in running} == {"select"}
        seen_select |= any(s.name == "select" for s in world.status.stages)
        for stage in {j.stage for j in running}:
            finish_all(world, stage)
        done = world.step()
        if done.terminal:
            break
    assert seen_select
    assert not any(j.stage == "benchmark" for j in world.jobs.values())
    assert done.status.state == State.succeeded
    search = done.status.search
    assert search is not None and search.outcome == "Selected" and search.chosen == "t5000"
    assert search.chosen_speedup == "2.10x" and search.chosen_drop == "0.80pt"
    assert search.selected_ir == "s3://bucket/runs/ns/demo/selected/model.xml"
    assert search.report == "s3://bucket/runs/ns/demo/select/r.html"
    assert done.status.speedup == "2.10x"  # the Speedup column shows the chosen model
    assert len(world.created) == 3 * 3 + 1


def test_a_restarted_operator_keeps_finished_candidates() -> None:
    world = World(spec_of(search=SEARCH, artifacts=ARTIFACTS))
    world.step()
    finish_all(world, "prune")  # the two running candidates finish
    # A new operator process: no status of its own yet, only the Jobs in the API server.
    world.status = type(world.status)()
    again = world.step()
    assert [short(r.name) for r in again.create] == ["demo-prune-g1-t7000"]
    assert sorted(short(n) for n in world.created) == [
        "demo-prune-g1-t3000",
        "demo-prune-g1-t5000",
        "demo-prune-g1-t7000",
    ]


def test_candidate_jobs_run_the_candidate_and_carry_its_shard() -> None:
    spec = spec_of(search=SEARCH, artifacts=ARTIFACTS)
    request = JobRequest("prune", "demo-prune-g1-t5000", "f" * 64, 1, "t5000")
    job = build_job(spec, request, Owner("demo", "ns", "uid"), OperatorConfig())
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--candidate", "t5000"]
    select = JobRequest("select", "demo-select-g1", "f" * 64, 1)
    job = build_job(spec, select, Owner("demo", "ns", "uid"), OperatorConfig())
    assert "--candidate" not in job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_a_pipeline_without_search_has_no_select_stage() -> None:
    result = plan(PlanInput("demo", "ns", 1, spec_of(), World(spec_of()).status))
    assert [s.name for s in result.status.stages] == ["prune", "convert", "quantize", "benchmark"]
    assert result.status.search is None
    assert "search" not in SPEC


def rows(*targets_rounds: tuple[float, int], drop_per_target: float = 2.0) -> list[dict[str, Any]]:
    """Measured candidate rows as the select stage's details hold them."""
    return [
        {"name": f"t{round(t * 10000):04d}", "target": t, "round": r, "state": "Measured",
         "accuracyDrop": drop_per_target * t, "speedup": 1 + 2 * t, "sizeBytes": 1000}
        for t, r in targets_rounds
    ]  # fmt: skip


def select_metrics(measured: list[dict[str, Any]], next_round: list[str]) -> dict[str, Any]:
    """A select result: measured rows as the packed table, the next round or the choice."""
    metrics: dict[str, Any] = {
        "outcome": "Searching" if next_round else "Selected",
        "chosen": None if next_round else "t6000",
        "nextRound": next_round,
        "maxAccuracyDrop": 0.015,
        "candidateTable": pack_table(measured),
        "message": "searching" if next_round else "chose t6000",
    }
    return metrics


def finish_round(world: World, select: dict[str, Any]) -> None:
    """Run every stage of the current round to the end, the select Job with `select`."""
    for _ in range(12):
        running = [j for j in world.jobs.values() if j.phase == JobPhase.active]
        assert len([j for j in running if j.stage != "select"]) <= 2  # parallelism
        if any(j.stage == "select" for j in running):
            job = next(j for j in running if j.stage == "select")
            result = {"stage": "select", "fingerprint": "x", "metrics": select,
                      "outputs": {"report": "select/r.html"}, "durationSeconds": 1.0}  # fmt: skip
            world.jobs[job.name] = replace(job, phase=JobPhase.succeeded, active=0, succeeded=1,
                                           result=result)  # fmt: skip
            return
        for stage in {j.stage for j in running}:
            finish_all(world, stage)
        world.step()
    raise AssertionError("the round never reached its select Job")


def test_a_refinement_round_runs_as_jobs_then_a_final_selection_over_all_rounds() -> None:
    world = World(spec_of(search=ROUNDS, artifacts=ARTIFACTS))
    world.step()
    round0 = rows((0.3, 0), (0.5, 0), (0.7, 0))  # drops 0.6, 1.0, 1.4 points
    finish_round(world, select_metrics(round0, ["t6000"]))
    # round 0's select named round 1: its candidate starts at once, as a Job of its own
    started = world.step()
    assert [short(r.name) for r in started.create] == ["demo-prune-g1-t6000"]
    search_status = started.status.search
    assert search_status is not None and search_status.round == 1
    assert [(c.name, c.round, c.state) for c in search_status.candidates] == [
        ("t3000", 0, "Measured"), ("t5000", 0, "Measured"), ("t7000", 0, "Measured"),
        ("t6000", 1, "Pending"),
    ]  # fmt: skip
    assert started.status.state == State.running and started.status.current_stage == "prune"
    world.step()
    assert world.status.search is not None
    assert {c.name: c.state for c in world.status.search.candidates}["t6000"] == "Running"
    round1 = [*round0, *rows((0.6, 1))]
    finish_round(world, select_metrics(round1, []))
    done = world.step()
    assert done.status.state == State.succeeded
    assert sorted(short(n) for n in world.created) == sorted(
        [f"demo-{s}-g1-{c}" for s in ("prune", "convert", "quantize")
         for c in ("t3000", "t5000", "t7000", "t6000")]
        + ["demo-select-g1", "demo-select-g1-r1"]
    )  # fmt: skip
    final = done.status.search
    assert final is not None and final.outcome == "Selected" and final.chosen == "t6000"
    assert [c.name for c in final.candidates] == ["t3000", "t5000", "t6000", "t7000"]
    assert final.round == 1 and final.chosen_drop == "1.20pt"


ROUNDS = {**SEARCH, "rounds": 2, "candidatesPerRound": 1, "maxAccuracyDrop": 0.015}


def in_round_one() -> World:
    """A search whose round 0 finished and named round 1 (t6000), which just started."""
    world = World(spec_of(search=ROUNDS, artifacts=ARTIFACTS))
    world.step()
    finish_round(world, select_metrics(rows((0.3, 0), (0.5, 0), (0.7, 0)), ["t6000"]))
    world.step()
    return world


def test_a_restarted_operator_finds_the_refinement_round_from_the_jobs() -> None:
    world = in_round_one()
    world.step()
    before = list(world.created)
    world.status = type(world.status)()  # a new operator: only the Jobs in the API server
    again = world.step()
    assert again.create == () and world.created == before, again.create
    assert again.status.search is not None and again.status.search.round == 1
    assert again.status.current_stage == "prune"


def test_a_spec_edit_to_the_search_starts_again_from_round_zero() -> None:
    world = in_round_one()
    world.spec = spec_of(search={**ROUNDS, "maxAccuracyDrop": 0.02}, artifacts=ARTIFACTS)
    world.generation = 2
    edited = world.step()
    # round 0's candidate Jobs still hold (same prune fingerprint): select runs again first
    assert edited.status.search is not None and edited.status.search.round == 0
    assert [short(r.name) for r in edited.create] == ["demo-select-g2"]
