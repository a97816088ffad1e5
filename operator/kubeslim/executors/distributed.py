"""The prune stage across Pods: an Indexed Job, one Pod per worker, and the Service
where its workers meet.

Each worker Pod runs torchrun (kubeslim.stages.distributed.torchrun_command, the same
launcher `kubeslim run` uses) with `--nnodes=<workers> --node-rank=$(JOB_COMPLETION_INDEX)`;
the kubelet expands `$(VAR)` in a container's arguments from its environment, and the
Job controller puts the Pod's index there.

The rendezvous is torchrun's static one: node rank 0 serves the TCP store, the others
connect to it. Its address is a ClusterIP Service selecting the Job's index-0 Pod, read
from the `<SERVICE>_SERVICE_HOST` variable the kubelet injects into every Pod created
after the Service (so the Service is created before its Job). That needs no cluster DNS,
which a headless Service with Pod hostnames would, and a test node without CoreDNS has
none; on a cluster with DNS the Service also answers at `<service>.<namespace>.svc`.
Pod 0 reaches its own store through the Service too (hairpin traffic through
kube-proxy's rules, which every mainstream CNI allows).

A worker that fails takes the group with it: its peers' collectives fail at once
(their connections close), every index fails, and the Job controller starts each
index again (backoffLimitPerIndex), where the stage resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.constants import GROUP
from kubeslim.stages.distributed import procs_per_worker, torchrun_command, world_size

RENDEZVOUS_PORT = 29500
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# On the Job and its Pods: how many worker Pods the Job runs (a distributed Job only).
ANNOTATION_WORKERS = f"{GROUP}/workers"
NODE_RANK = "$(JOB_COMPLETION_INDEX)"
MAX_NAME = 63
# Inside the stage images, the Python that has torch (the venv is first on PATH).
PYTHON = "python"


def workers(spec: ModelOptimizationSpec, stage: str) -> int:
    """Pods the stage runs on: pruning.distributed.workers for prune, else one."""
    return spec.pruning.distributed.workers if stage == "prune" else 1


def is_multi_pod(spec: ModelOptimizationSpec, stage: str) -> bool:
    """Whether the stage runs as an Indexed Job with a rendezvous Service."""
    return workers(spec, stage) > 1


def uses_torchrun(spec: ModelOptimizationSpec, stage: str) -> bool:
    """Whether the stage's container runs torchrun (more than one process in all)."""
    return stage == "prune" and world_size(spec) > 1


def gpus_per_pod(spec: ModelOptimizationSpec) -> int:
    """The nvidia.com/gpu one prune Pod asks for: one per process on its node."""
    return procs_per_worker(spec.pruning) if spec.pruning.gpu else 0


def service_name(job: str) -> str:
    """The rendezvous Service of a Job: the Job's name (a DNS-1035 label: it must start
    with a letter, which a resource name need not)."""
    name = job if job[:1].isalpha() else f"w-{job}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def service_host_variable(service: str) -> str:
    """The variable the kubelet sets to the Service's ClusterIP in later Pods."""
    return service.upper().replace("-", "_").replace(".", "_") + "_SERVICE_HOST"


def launch_command(spec: ModelOptimizationSpec, stage_argv: list[str], job: str) -> list[str]:
    """torchrun around the stage: across the Job's Pods, or within one Pod."""
    nodes = workers(spec, "prune")
    if nodes > 1:
        host = f"$({service_host_variable(service_name(job))})"
        return torchrun_command(
            spec,
            stage_argv,
            nnodes=nodes,
            node_rank_expr=NODE_RANK,
            rdzv_endpoint=f"{host}:{RENDEZVOUS_PORT}",
            python=PYTHON,
            rdzv_backend="static",
        )
    # Several GPUs in one Pod: the rendezvous stays inside it.
    return torchrun_command(
        spec,
        stage_argv,
        nnodes=1,
        node_rank_expr=None,
        rdzv_endpoint=f"127.0.0.1:{RENDEZVOUS_PORT}",
        python=PYTHON,
    )


def indexed_fields(spec: ModelOptimizationSpec) -> dict[str, Any]:
    """The Job spec fields of a worker group: one Pod per index, all at once.

    backoffLimitPerIndex replaces backoffLimit (which then counts nothing): a group
    restart fails every index once, so each index gets execution.backoffLimit retries,
    as a one-Pod stage does. maxFailedIndexes 0 fails the Job as soon as one index has
    used up its retries: the others could not finish without it.
    """
    nodes = workers(spec, "prune")
    return {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimitPerIndex": spec.execution.backoff_limit,
        "maxFailedIndexes": 0,
    }


def rendezvous_service(
    job: str,
    namespace: str,
    labels: dict[str, str],
    owner_reference: dict[str, Any],
) -> dict[str, Any]:
    """The ClusterIP Service in front of the Job's index-0 Pod, owned by the resource.

    Pods without a readiness probe are ready once they run; a terminating Pod 0 of a
    failed try drops out of the endpoints, so a new worker never meets a dying store.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_JOB_NAME: job, LABEL_COMPLETION_INDEX: "0"},
            "ports": [
                {
                    "name": "rendezvous",
                    "protocol": "TCP",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                }
            ],
        },
    }


def primary_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods with index-0 Pods last (where readers look first): rank 0 prints the
    progress and writes the result; one-Pod Jobs keep their order."""
    return sorted(pods, key=lambda p: _index(p) == "0")


def _index(pod: dict[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    return (meta.get("labels") or {}).get(LABEL_COMPLETION_INDEX) or (
        meta.get("annotations") or {}
    ).get(LABEL_COMPLETION_INDEX)
