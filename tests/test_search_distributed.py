"""Search candidates fine-tune on the spec's workers, as a plain run does: locally each
candidate's prune runs under torchrun (gloo on the CPU); on a cluster each candidate's
prune is an Indexed Job of that many Pods behind a rendezvous Service of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeslim.api.manifest import parse_spec
from kubeslim.api.status import ModelOptimizationStatus
from kubeslim.config import OperatorConfig
from kubeslim.constants import KIND
from kubeslim.executors.distributed import LABEL_COMPLETION_INDEX, LABEL_JOB_NAME, service_name
from kubeslim.executors.job import Owner, build_job, build_service
from kubeslim.planner import JobRequest, job_name
from kubeslim.planner.search import candidate_shards
from kubeslim.stages.pipeline import spec_fingerprints
from tests.pipeline_helpers import kubeslim, manifest, write
from tests.test_operator_cluster import SPEC, Env, _wait
from tests.test_search_cluster import env  # noqa: F401  (the operator on the control plane)

DISTRIBUTED = {"workers": 2, "backend": "gloo"}
SEARCH = {"targets": [0.3, 0.5], "maxAccuracyDrop": 1.0, "parallelism": 2}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_local_candidates_prune_on_two_gloo_processes(tmp_path: Path) -> None:
    doc = manifest(
        "digits-search-ddp",
        search=SEARCH,
        artifacts={"uri": str(tmp_path / "artifacts")},
        pruning={
            "schedule": {"steps": 1},
            "fineTune": {"epochs": 1, "maxStepsPerEpoch": 4},
            "distributed": DISTRIBUTED,
        },
        benchmark={"durationSeconds": 0.1, "rounds": 1},
    )
    run = kubeslim("run", str(write(tmp_path / "search.yaml", doc)))
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("t3000", "t5000"):
        path = tmp_path / "artifacts" / "candidates" / name / "prune" / "result.json"
        result: dict[str, Any] = json.loads(path.read_text())
        assert result["metrics"]["worldSize"] == 2, name
        assert result["metrics"]["masksIdenticalAcrossRanks"] is True
        assert len(result["details"]["ranks"]) == 2


def test_each_candidates_prune_job_is_an_indexed_group_with_its_own_service() -> None:
    spec = parse_spec(
        {
            "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
            "dataset": {"name": "digits"},
            "artifacts": {"uri": "s3://bucket/runs/"},
            "pruning": {"distributed": DISTRIBUTED},
            "search": SEARCH,
        }
    )
    owner = Owner(name="demo", namespace="team-a", uid="uid-1")
    config = OperatorConfig(trainer_image="t:1", runtime_image="r:1")
    fingerprint = spec_fingerprints(spec)["prune"]
    shards = candidate_shards(spec, "prune", ModelOptimizationStatus())
    assert shards == ("t3000", "t5000")
    services = set()
    for shard in shards:
        name = job_name(owner.name, "prune", 1, shard=shard, fingerprint=fingerprint)
        request = JobRequest("prune", name, fingerprint, 1, shard=shard)
        job, service = build_job(spec, request, owner, config), build_service(spec, request, owner)
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
        (container,) = job["spec"]["template"]["spec"]["containers"]
        command = " ".join(container["command"])
        assert "kubeslim.stages.torchrun" in command and "--nnodes=2" in command
        assert f"--candidate {shard}" in command
        assert service is not None
        assert service["spec"]["selector"] == {
            LABEL_JOB_NAME: name,
            LABEL_COMPLETION_INDEX: "0",
        }
        services.add(service["metadata"]["name"])
    assert len(services) == 2


@pytest.mark.cluster
def test_the_operator_makes_each_candidates_prune_an_indexed_job_with_a_service(
    env: Env,  # noqa: F811
) -> None:
    """What the operator creates; the Pods themselves need the trainer image's torchrun
    (tests/test_e2e_distributed.py runs a real 2-worker prune on the real node)."""
    env.create("dsearch", {**SPEC, "pruning": {"distributed": DISTRIBUTED}, "search": SEARCH}, {})
    selector = "kubeslim.dev/modeloptimization=dsearch,kubeslim.dev/stage=prune"

    def prune_jobs() -> list[Any]:
        return list(env.batch.list_namespaced_job(env.namespace, label_selector=selector).items)

    _wait("both candidates' prune Jobs", lambda: len(prune_jobs()) == 2, env.operator)
    shards = set()
    for job in prune_jobs():
        assert job.spec.completion_mode == "Indexed" and job.spec.completions == 2
        service = env.core.read_namespaced_service(service_name(job.metadata.name), env.namespace)
        assert service.spec.selector == {
            LABEL_JOB_NAME: job.metadata.name,
            LABEL_COMPLETION_INDEX: "0",
        }
        assert service.metadata.owner_references[0].kind == KIND
        shards.add(job.metadata.annotations["kubeslim.dev/shard"])
    assert shards == {"t3000", "t5000"}
    env.delete("dsearch")
