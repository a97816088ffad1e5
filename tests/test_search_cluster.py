"""A search on the real control plane: candidates as parallel Jobs, the operator killed
(SIGKILL) mid-search, and no finished candidate lost or run twice.

The stages are a stand-in (this file run as a script), as in test_operator_cluster.py:
it follows the stage contract, writes a candidate's result under
candidates/<name>/<stage>/, and holds a stage while control.json gates it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_operator_cluster import CRD_FILE, ROOT, Env, _wait

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "execution": {"backoffLimit": 0, "ttlSecondsAfterFinished": None},
    "search": {"targets": [0.3, 0.5, 0.7], "maxAccuracyDrop": 0.02, "parallelism": 2},
}
OUTPUTS = {"prune": "model.pt", "convert": "model.xml", "quantize": "model_int8.xml"}


def standin_stage(argv: list[str]) -> int:
    """`<this file> stage NAME --spec-json J --artifacts DIR ... [--candidate C]`."""
    from tests.cluster.standin import commit_result

    stage = argv[1]
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    root = Path(opts["--artifacts"])
    control = json.loads((root / "control.json").read_text())
    candidate = opts.get("--candidate", "")
    gate = f"{stage}-{candidate}" if candidate else stage
    if gate in control.get("gate", []):
        while not (root / f"release-{gate}").exists():
            time.sleep(0.1)
    if candidate:
        folder = root / "candidates" / candidate
        done = root / "done"
        done.mkdir(exist_ok=True)
        with (done / f"{stage}-{candidate}").open("a") as runs:  # one line per run
            runs.write("ran\n")
        return commit_result(stage, folder, opts["--result-file"], {"out": OUTPUTS[stage]}, {})
    targets = json.loads(opts["--spec-json"])["search"]["targets"]
    rows = [
        {"name": f"t{round(t * 10000):04d}", "target": t, "round": 0, "state": "Measured",
         "accuracyDrop": 4 * t, "speedup": 1 + 2 * t, "withinBudget": 4 * t <= 2.0}
        for t in targets
    ]  # fmt: skip
    metrics = {"outcome": "Selected", "chosen": "t5000", "candidates": rows, "nextRound": [],
               "message": "chose t5000"}  # fmt: skip
    return commit_result(stage, root, opts["--result-file"], {"report": "report.html"}, metrics)


@pytest.fixture(scope="module")
def env(k8s_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    k8s_cluster.apply(CRD_FILE)
    namespace = "mopt-search"
    k8s_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    work = tmp_path_factory.mktemp("search-operator")
    environment = Env(k8s_cluster, namespace, work)
    wrapper = work / "kubeslim-search-standin"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} {Path(__file__).resolve()} "$@"\n'
    )
    wrapper.chmod(0o755)
    environment.stage_command = str(wrapper)
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


if __name__ == "__main__":
    raise SystemExit(standin_stage(sys.argv[1:]))
