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


def test_killing_the_operator_mid_search_loses_no_finished_candidate(env: Env) -> None:
    env.create("search", SPEC, {"gate": ["prune-t5000"]})
    # t3000 and t5000 start (parallelism 2); t3000 finishes, so t7000 starts and finishes
    _wait("two candidates pruned", lambda: len(succeeded_jobs(env, "search", "prune")) == 2,
          env.operator)  # fmt: skip
    before = job_uids(env, "search")
    assert len(before) == 3
    env.operator.popen.send_signal(signal.SIGKILL)  # no shutdown handlers run
    env.operator.popen.wait()
    env.operator = None
    env.release("search", "prune-t5000")  # it finishes while no operator watches
    env.start_operator()
    status = env.wait_state("search", "Succeeded")
    after = job_uids(env, "search")
    # the Jobs that existed survive unchanged: nothing finished was redone
    assert all(after[name] == uid for name, uid in before.items())
    folder = env.artifacts / env.namespace / "search" / "done"
    runs = {p.name: p.read_text().count("ran") for p in folder.iterdir()}
    assert runs == {f"{s}-{c}": 1 for s in OUTPUTS for c in ("t3000", "t5000", "t7000")}
    assert len(after) == 3 * 3 + 1  # prune, convert, quantize per candidate, then select
    assert status["search"]["chosen"] == "t5000"
    assert {c["name"] for c in status["search"]["candidates"]} == {"t3000", "t5000", "t7000"}
    assert status["search"]["chosenSpeedup"] == "2.00x"
    env.delete("search")
