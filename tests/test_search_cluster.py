"""A search on the real control plane: candidates as parallel Jobs, the operator killed
(SIGKILL) mid-search, and no finished candidate lost or run twice.

The stages are the stand-in (tests/cluster/standin.py, in its image on the real node),
as in test_operator_cluster.py: it follows the stage contract, writes a candidate's
result under candidates/<name>/<stage>/, and holds a stage while control.json gates it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from kubeslim.api.spec import SearchSpec
from kubeslim.planner.search import Measured, first_round, next_round
from tests.cluster.plugin import StandIn
from tests.test_operator_cluster import CRD_FILE, Env, _wait

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "execution": {"backoffLimit": 0, "ttlSecondsAfterFinished": None},
    "search": {"targets": [0.3, 0.5, 0.7], "maxAccuracyDrop": 0.02, "parallelism": 2},
}
OUTPUTS = {"prune": "model.pt", "convert": "model.xml", "quantize": "model_int8.xml"}


@pytest.fixture(scope="module")
def env(k8s_cluster: Any, standin_stage: StandIn) -> Iterator[Env]:
    k8s_cluster.apply(CRD_FILE)
    namespace = "mopt-search"
    k8s_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    environment = Env(k8s_cluster, namespace, standin_stage)
    environment.start_operator()
    try:
        yield environment
    finally:
        environment.stop_operator()


def job_uids(env: Env, name: str) -> dict[str, str]:
    selector = f"kubeslim.dev/modeloptimization={name}"
    items = env.batch.list_namespaced_job(env.namespace, label_selector=selector).items
    return {j.metadata.name: j.metadata.uid for j in items}


def succeeded_jobs(env: Env, name: str, stage: str) -> list[str]:
    selector = f"kubeslim.dev/modeloptimization={name},kubeslim.dev/stage={stage}"
    items = env.batch.list_namespaced_job(env.namespace, label_selector=selector).items
    return sorted(j.metadata.name for j in items if (j.status.succeeded or 0) > 0)


def killed_mid_search(env: Env, name: str, gate: str) -> tuple[dict[str, Any], int, dict[str, int]]:
    """SIGKILL the operator (no shutdown handler runs), let the held stage finish while
    none watches, start a new operator and wait for the end: the status, the number of
    Jobs, and how often each candidate's stage ran. The Jobs that existed before the
    kill survive unchanged: nothing finished was redone."""
    before = job_uids(env, name)
    assert env.operator is not None
    env.operator.popen.send_signal(signal.SIGKILL)
    env.operator.popen.wait()
    env.operator = None
    env.release(name, gate)
    env.start_operator()
    status = env.wait_state(name, "Succeeded")
    after = job_uids(env, name)
    assert all(after[job] == uid for job, uid in before.items())
    folder = env.artifacts / env.namespace / name / "done"
    runs = {p.name: p.read_text().count("ran") for p in folder.iterdir()}
    return status, len(after), runs


def test_killing_the_operator_mid_search_loses_no_finished_candidate(env: Env) -> None:
    env.create("search", SPEC, {"gate": ["prune-t5000"]})
    # t3000 and t5000 start (parallelism 2); t3000 finishes, so t7000 starts and finishes
    _wait("two candidates pruned", lambda: len(succeeded_jobs(env, "search", "prune")) == 2,
          env.operator)  # fmt: skip
    assert len(job_uids(env, "search")) == 3
    status, jobs, runs = killed_mid_search(env, "search", "prune-t5000")
    assert runs == {f"{s}-{c}": 1 for s in OUTPUTS for c in ("t3000", "t5000", "t7000")}
    assert jobs == 3 * 3 + 1  # prune, convert, quantize per candidate, then select
    assert status["search"]["chosen"] == "t5000"
    assert {c["name"] for c in status["search"]["candidates"]} == {"t3000", "t5000", "t7000"}
    assert status["search"]["chosenSpeedup"] == "2.00x"
    env.delete("search")


def test_a_range_search_runs_its_refinement_round_and_survives_a_restart_in_it(env: Env) -> None:
    search = {"range": {"min": 0.3, "max": 0.7}, "candidatesPerRound": 3, "rounds": 1,
              "maxAccuracyDrop": 0.025, "parallelism": 2}  # fmt: skip
    # Round 1 is what the search decides from the stand-in's figures (drop 4 x target points):
    # between 0.5 (within 2.5 points) and 0.7 (outside), 0.55, 0.6 and 0.65.
    spec = SearchSpec.model_validate(search)
    measured = [Measured(c, 0.04 * c.target, 1 + 2 * c.target) for c in first_round(spec)]
    round1 = [c.name for c in next_round(spec, measured)]
    assert round1 == ["t5500", "t6000", "t6500"]
    env.create("range", {**SPEC, "search": search}, {"gate": ["prune-t6500"], "rounds": [round1]})
    # two of round 1's candidates pruned (t6500 held): the operator dies in round 1
    _wait("round 1 under way", lambda: len(succeeded_jobs(env, "range", "prune")) == 5,
          env.operator)  # fmt: skip
    status = env.status("range")
    assert status["search"]["round"] == 1
    assert {c["name"]: c["round"] for c in status["search"]["candidates"]} == {
        "t3000": 0, "t5000": 0, "t7000": 0, "t5500": 1, "t6000": 1, "t6500": 1,
    }  # fmt: skip
    status, jobs, runs = killed_mid_search(env, "range", "prune-t6500")
    names = ("t3000", "t5000", "t7000", *round1)
    assert runs == {f"{s}-{c}": 1 for s in OUTPUTS for c in names}
    selects = sorted(n for n in job_uids(env, "range") if "-select-" in n)
    assert jobs == 6 * 3 + 2 and selects[-1].endswith("-r1")  # a select Job per round
    found = status["search"]
    assert found["outcome"] == "Selected" and found["chosen"] == "t6000"  # drop 2.4 points
    assert sorted(c["name"] for c in found["candidates"]) == sorted(names)
    env.delete("range")
