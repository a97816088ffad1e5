"""A multi-worker prune on a cluster: the Indexed Job, its Pods' torchrun command and
the rendezvous Service, built without a cluster; the observer's view of such a Job."""

from __future__ import annotations

from typing import Any

import pytest

from kubeslim.api.manifest import parse_spec
from kubeslim.cli import _parser
from kubeslim.config import OperatorConfig
from kubeslim.executors.distributed import (
    LABEL_COMPLETION_INDEX,
    LABEL_JOB_NAME,
    RENDEZVOUS_PORT,
    primary_first,
    service_host_variable,
    service_name,
)
from kubeslim.executors.job import Owner, build_job, build_service
from kubeslim.handlers.observe import observe_job, stage_result
from kubeslim.planner import JobRequest, job_name
from kubeslim.stages.pipeline import spec_fingerprints

OWNER = Owner(name="demo", namespace="team-a", uid="0b7c3d2e-1111-2222-3333-444455556666")
CONFIG = OperatorConfig(trainer_image="registry.local/trainer:1", runtime_image="r:1")
BASE: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "artifacts": {"uri": "s3://bucket/runs/", "credentialsSecret": "s3-creds"},
    "execution": {"backoffLimit": 3},
}


def build(stage: str = "prune", **pruning: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    spec = parse_spec({**BASE, "pruning": pruning})
    fingerprint = spec_fingerprints(spec)[stage]
    request = JobRequest(
        stage, job_name(OWNER.name, stage, 2, fingerprint=fingerprint), fingerprint, 2
    )
    return build_job(spec, request, OWNER, CONFIG), build_service(spec, request, OWNER)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def options(command: list[str]) -> dict[str, str]:
    """torchrun's --key=value options (before `-m kubeslim`)."""
    head = command[: command.index("kubeslim")]
    return dict(a[2:].split("=", 1) for a in head if a.startswith("--") and "=" in a)


def test_two_cpu_workers_are_an_indexed_job_with_one_pod_each() -> None:
    job, _ = build(distributed={"workers": 2})
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    # A failed worker fails its peers too: each index gets the stage's retries, and one
    # index out of retries fails the Job at once.
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec
    assert job["metadata"]["annotations"]["kubeslim.dev/workers"] == "2"
    resources = container(job)["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})


def test_each_pod_runs_torchrun_with_its_index_as_node_rank() -> None:
    job, service = build(distributed={"workers": 3})
    assert service is not None
    command = container(job)["command"]
    assert command[:3] == ["python", "-m", "kubeslim.stages.torchrun"]
    opts = options(command)
    host = f"$({service_host_variable(service['metadata']['name'])})"
    assert opts == {
        "nnodes": "3",
        "nproc-per-node": "1",  # CPU: one process per worker
        "node-rank": "$(JOB_COMPLETION_INDEX)",
        "rdzv-backend": "static",
        "rdzv-endpoint": f"{host}:{RENDEZVOUS_PORT}",
        "max-restarts": "0",
    }
    # After `-m kubeslim`: the very stage command a one-Pod Job runs.
    stage_argv = command[command.index("kubeslim") + 1 :]
    args = _parser().parse_args(stage_argv)
    assert (args.name, args.result_file) == ("prune", "/dev/termination-log")
    assert job["spec"]["template"]["spec"]["enableServiceLinks"] is True


def test_gpus_per_worker_are_processes_and_gpu_requests_per_pod() -> None:
    job, _ = build(gpu=True, distributed={"workers": 2, "gpusPerWorker": 4})
    opts = options(container(job)["command"])
    assert (opts["nnodes"], opts["nproc-per-node"]) == ("2", "4")
    resources = container(job)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    assert "NVIDIA_VISIBLE_DEVICES" not in env


def test_one_worker_with_several_gpus_is_one_pod_with_a_local_rendezvous() -> None:
    job, service = build(gpu=True, distributed={"gpusPerWorker": 2})
    assert service is None
    assert "completionMode" not in job["spec"] and job["spec"]["backoffLimit"] == 3
    opts = options(container(job)["command"])
    assert opts["nnodes"] == "1" and opts["nproc-per-node"] == "2"
    assert opts["rdzv-endpoint"] == f"127.0.0.1:{RENDEZVOUS_PORT}"
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_one_worker_is_the_plain_stage_as_before() -> None:
    job, service = build(gpu=True)
    assert service is None
    assert container(job)["command"][:3] == ["kubeslim", "stage", "prune"]
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("stage", ["convert", "quantize", "benchmark"])
def test_only_prune_is_distributed(stage: str) -> None:
    job, service = build(stage, distributed={"workers": 4})
    assert service is None and "completionMode" not in job["spec"]
    assert container(job)["command"][:3] == ["kubeslim", "stage", stage]


def test_the_service_selects_pod_zero_of_its_job_and_is_owned_by_the_resource() -> None:
    job, service = build(distributed={"workers": 2})
    assert service is not None
    meta = service["metadata"]
    assert meta["name"] == service_name(job["metadata"]["name"])
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == job["metadata"]["labels"]
    assert meta["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert meta["ownerReferences"][0]["uid"] == OWNER.uid
    spec = service["spec"]
    assert spec["type"] == "ClusterIP"  # an address without cluster DNS (see distributed.py)
    assert spec["selector"] == {
        LABEL_JOB_NAME: job["metadata"]["name"],
        LABEL_COMPLETION_INDEX: "0",
    }
    (port,) = spec["ports"]
    assert port["port"] == port["targetPort"] == RENDEZVOUS_PORT


def test_service_names_are_dns_labels_and_variables_follow_them() -> None:
    assert service_name("demo-prune-g1-0a1b2c3d") == "demo-prune-g1-0a1b2c3d"
    assert service_name("7up-prune-g1") == "w-7up-prune-g1"  # must start with a letter
    long = service_name("9" + "x" * 62)
    assert len(long) <= 63 and long[0].isalpha()
    assert service_host_variable("demo-prune-g1-0a1b") == "DEMO_PRUNE_G1_0A1B_SERVICE_HOST"


@pytest.mark.parametrize("workers", [2, 5])
def test_job_and_service_are_valid_kubernetes_objects(workers: int) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job, service = build(gpu=True, distributed={"workers": workers, "gpusPerWorker": 2})
    kubernetes_validate.validate(job, "1.33", strict=True)
    kubernetes_validate.validate(service, "1.33", strict=True)


def _pod(index: str, exit_code: int, message: str, created: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"p{index}-{created}",
            "labels": {LABEL_COMPLETION_INDEX: index},
            "creationTimestamp": created,
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "stage",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ]
        },
    }


def test_the_result_comes_from_pod_zero_whatever_the_pod_order() -> None:
    rank0 = _pod("0", 0, '{"stage": "prune", "metrics": {"worldSize": 2}}', "t1")
    rank1 = _pod("1", 0, "not json from a worker's log", "t2")
    # list_job_pods sorts by creation: a retried index 1 may come last.
    ordered = primary_first([rank0, rank1])
    assert ordered[-1] is rank0
    assert stage_result(ordered) == {"stage": "prune", "metrics": {"worldSize": 2}}


def test_an_indexed_job_counts_its_workers_and_succeeds_only_complete() -> None:
    raw: dict[str, Any] = {
        "metadata": {"name": "demo-prune-g1", "labels": {}, "annotations": {}},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2},
        "status": {"active": 1, "succeeded": 1, "completedIndexes": "1"},
    }
    job = observe_job(raw)
    assert job.workers == 2 and job.phase == "Active"  # one index done is not done
    raw["status"] = {
        "succeeded": 2,
        "completedIndexes": "0,1",
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    assert observe_job(raw).phase == "Succeeded"
    raw["status"] = {
        "failed": 4,
        "failedIndexes": "1",
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "MaxFailedIndexesExceeded"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "MaxFailedIndexesExceeded",
                "message": "Job has exceeded the specified maximal number of failed indexes",
            },
        ],
    }
    failed = observe_job(raw)
    assert failed.phase == "Failed" and failed.failure.startswith("MaxFailedIndexesExceeded")


def test_a_one_pod_job_has_one_worker() -> None:
    raw = {"metadata": {"name": "j"}, "spec": {"completions": 1}, "status": {}}
    assert observe_job(raw).workers == 1


# ---- the handler's side: Service before Job, a namesake's Service, stale Jobs --------


class Calls:
    """A stand-in for handlers.kube.Kube that records the calls _act makes."""

    def __init__(self, service_owner: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.service_owner = service_owner  # an existing Service's owner uid: 409 on create

    def create_service(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append(("create_service", body["metadata"]["name"]))
        return self.service_owner is None

    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("get_service", name))
        return {"metadata": {"ownerReferences": [{"uid": self.service_owner, "controller": True}]}}

    def delete_service(self, namespace: str, name: str) -> None:
        self.calls.append(("delete_service", name))

    def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append(("create_job", body["metadata"]["name"]))
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append(("delete_job", name))


def _act_on(kube: Calls, workers: int, stale: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    from kubeslim.api.status import ModelOptimizationStatus
    from kubeslim.handlers.reconcile import Runtime, SlotTable, _act
    from kubeslim.planner import Action, Plan

    spec = parse_spec({**BASE, "pruning": {"distributed": {"workers": workers}}})
    fingerprint = spec_fingerprints(spec)["prune"]
    name = job_name(OWNER.name, "prune", 2, fingerprint=fingerprint)
    decided = Plan(
        action=Action.create_jobs,
        status=ModelOptimizationStatus(),
        create=(JobRequest("prune", name, fingerprint, 2),),
        delete=tuple(j.name for j in stale),
    )
    body = {"metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid}}
    rt = Runtime(config=CONFIG, kube=kube, table=SlotTable(1))  # type: ignore[arg-type]
    _act(rt, body, spec, decided, list(stale))
    return kube.calls


def test_the_service_is_created_before_its_job() -> None:
    calls = _act_on(Calls(), workers=2)
    assert [c[0] for c in calls] == ["create_service", "create_job"]
    assert calls[0][1] == service_name(calls[1][1])
    assert [c[0] for c in _act_on(Calls(), workers=1)] == ["create_job"]


def test_our_own_service_from_before_a_restart_is_used() -> None:
    calls = _act_on(Calls(service_owner=OWNER.uid), workers=2)
    assert [c[0] for c in calls] == ["create_service", "get_service", "create_job"]


def test_a_namesakes_service_goes_and_the_job_waits() -> None:
    import kopf

    kube = Calls(service_owner="a-deleted-namesake")
    with pytest.raises(kopf.TemporaryError):
        _act_on(kube, workers=2)
    assert [c[0] for c in kube.calls] == ["create_service", "get_service", "delete_service"]


def test_a_stale_multi_pod_job_takes_its_service_along() -> None:
    from kubeslim.planner import ObservedJob

    group = ObservedJob(
        name="demo-prune-g1-aaaa", stage="prune", fingerprint="x", generation=1, workers=2
    )
    single = ObservedJob(name="demo-prune-g1-bbbb", stage="prune", fingerprint="y", generation=1)
    calls = _act_on(Calls(), workers=1, stale=(group, single))
    assert calls[:3] == [
        ("delete_job", "demo-prune-g1-aaaa"),
        ("delete_service", "demo-prune-g1-aaaa"),
        ("delete_job", "demo-prune-g1-bbbb"),
    ]
