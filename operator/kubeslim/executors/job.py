"""The Job builder: one batch/v1 Job (a plain dict) per stage of a ModelOptimization.

The Job is adopted before it is created (ownerReference to the resource,
controller and blockOwnerDeletion set), so deleting the resource removes its
Jobs and their Pods. The name is deterministic, so a second create after a
restart answers 409 instead of making a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec, Resources
from kubeslim.config import TORCH_STAGES, OperatorConfig
from kubeslim.constants import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_FINGERPRINT,
    LABEL_GENERATION,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_RETRY_ROUND,
    LABEL_STAGE,
    MANAGED_BY,
)
from kubeslim.errors import EXIT_BAD_INPUT
from kubeslim.executors import distributed
from kubeslim.planner.model import JobRequest, artifacts_root
from kubeslim.planner.search import candidate_args

ANNOTATION_FINGERPRINT = f"{GROUP}/fingerprint"
ANNOTATION_SHARD = f"{GROUP}/shard"
CONTAINER = "stage"
SCRATCH = "/scratch"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS = 10001
GPU = "nvidia.com/gpu"
ARTIFACTS_VOLUME = "artifacts"


@dataclass(frozen=True)
class Owner:
    """The ModelOptimization a Job belongs to."""

    name: str
    namespace: str
    uid: str


def artifacts_uri(spec: ModelOptimizationSpec, owner: Owner) -> str:
    """Each resource writes under <spec.artifacts.uri>/<namespace>/<name>."""
    return artifacts_root(spec.artifacts.uri, owner.namespace, owner.name)


def stage_command(
    spec: ModelOptimizationSpec, stage: str, owner: Owner, config: OperatorConfig
) -> list[str]:
    """What the stage container runs."""
    spec_json = spec.model_dump_json(exclude_none=True, by_alias=True)
    return [
        config.stage_command,
        "stage",
        stage,
        "--spec-json",
        spec_json,
        "--artifacts",
        artifacts_uri(spec, owner),
        "--result-file",
        TERMINATION_LOG,
        "--progress",
        "log",
    ]


def job_labels(owner: Owner, request: JobRequest) -> dict[str, str]:
    """Labels on the Job and its Pods: how the operator finds them again."""
    labels = {
        LABEL_NAME: owner.name,
        LABEL_STAGE: request.stage,
        LABEL_GENERATION: str(request.generation),
        LABEL_FINGERPRINT: request.fingerprint[:16],
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if request.retry_round:
        labels[LABEL_RETRY_ROUND] = str(request.retry_round)
    return labels


def pod_failure_policy() -> dict[str, Any]:
    """Bad input fails the Job at once; a Pod lost to preemption or a node drain is
    retried without counting against backoffLimit; other failures count."""
    return {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_BAD_INPUT],
                },
            },
        ]
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Adoption by the resource: deleting it deletes the object (and a Job's Pods)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_service(
    spec: ModelOptimizationSpec, request: JobRequest, owner: Owner
) -> dict[str, Any] | None:
    """The rendezvous Service a multi-Pod stage Job needs before it starts, else None."""
    if not distributed.is_multi_pod(spec, request.stage):
        return None
    return distributed.rendezvous_service(
        request.name, owner.namespace, job_labels(owner, request), owner_reference(owner)
    )


def build_job(
    spec: ModelOptimizationSpec, request: JobRequest, owner: Owner, config: OperatorConfig
) -> dict[str, Any]:
    """The Job for one stage (shard) of one resource; an Indexed Job of
    pruning.distributed.workers Pods for a multi-worker prune."""
    execution = spec.execution
    labels = job_labels(owner, request)
    annotations = {ANNOTATION_FINGERPRINT: request.fingerprint}
    if request.shard:
        annotations[ANNOTATION_SHARD] = request.shard
    multi_pod = distributed.is_multi_pod(spec, request.stage)
    if multi_pod:
        annotations[distributed.ANNOTATION_WORKERS] = str(distributed.workers(spec, request.stage))
    job_spec: dict[str, Any] = {
        "backoffLimit": execution.backoff_limit,
        "activeDeadlineSeconds": execution.active_deadline_seconds,
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            # The spec's Pod labels and annotations (a Kueue queue, a sidecar opt-out);
            # the operator's own win, since it finds its Pods by them.
            "metadata": {
                "labels": {**execution.pod_labels, **labels},
                "annotations": {**execution.pod_annotations, **annotations},
            },
            "spec": pod_spec(spec, request, owner, config),
        },
    }
    if multi_pod:
        del job_spec["backoffLimit"]  # counted per index instead
        job_spec.update(distributed.indexed_fields(spec))
    if execution.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = execution.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": job_spec,
    }


def pod_spec(
    spec: ModelOptimizationSpec, request: JobRequest, owner: Owner, config: OperatorConfig
) -> dict[str, Any]:
    """The stage Pod: locked down, scratch on an emptyDir, datasets on a read-only PVC."""
    execution = spec.execution
    scratch = {"sizeLimit": str(execution.scratch_size_limit)}
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": scratch}]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH}]
    if spec.artifacts.volume is not None:
        # A local artifacts path, shared by every stage through one claim.
        claim = spec.artifacts.volume.claim_name
        volumes.append({"name": ARTIFACTS_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
        mount_path = spec.artifacts.uri.removeprefix("file://").rstrip("/") or "/"
        mounts.append({"name": ARTIFACTS_VOLUME, "mountPath": mount_path})
    if execution.dataset_volume is not None:
        volumes.append(
            {
                "name": "datasets",
                "persistentVolumeClaim": {
                    "claimName": execution.dataset_volume.claim_name,
                    "readOnly": True,
                },
            }
        )
        mounts.append(
            {"name": "datasets", "mountPath": execution.dataset_volume.mount_path, "readOnly": True}
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": stage_image(spec, request.stage, config),
        "imagePullPolicy": config.image_pull_policy,
        "command": container_command(spec, request, owner, config),
        "env": _env(config, gpu=_wants_gpu(spec, request.stage)),
        "resources": _resources(spec, request.stage),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the result is written still leaves the log's tail as the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.artifacts.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.artifacts.credentials_secret}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # The stage needs no Kubernetes API access: results go out as the termination message.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    account = execution.service_account_name or config.job_service_account
    if account:
        pod["serviceAccountName"] = account
    if execution.node_selector:
        pod["nodeSelector"] = dict(execution.node_selector)
    if execution.tolerations:
        pod["tolerations"] = [dict(t) for t in execution.tolerations]
    if execution.affinity:
        pod["affinity"] = dict(execution.affinity)
    if execution.priority_class_name:
        pod["priorityClassName"] = execution.priority_class_name
    if distributed.is_multi_pod(spec, request.stage):
        # The rendezvous address comes from the Service's variables (see distributed.py).
        pod["enableServiceLinks"] = True
    secrets = list(dict.fromkeys([*config.image_pull_secrets, *execution.image_pull_secrets]))
    if secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in secrets]
    return pod


def container_command(
    spec: ModelOptimizationSpec, request: JobRequest, owner: Owner, config: OperatorConfig
) -> list[str]:
    """The stage's command line, inside torchrun when it runs as several processes."""
    command = stage_command(spec, request.stage, owner, config) + candidate_args(
        spec, request.stage, request.shard
    )
    if not distributed.uses_torchrun(spec, request.stage):
        return command
    return distributed.launch_command(spec, command[1:], request.name)


def stage_image(spec: ModelOptimizationSpec, stage: str, config: OperatorConfig) -> str:
    """The operator's image for the stage, or the resource's own (a model baked in)."""
    execution = spec.execution
    own = execution.trainer_image if stage in TORCH_STAGES else execution.runtime_image
    return own or config.stage_image(stage)


def _wants_gpu(spec: ModelOptimizationSpec, stage: str) -> bool:
    return stage == "prune" and spec.pruning.gpu


def _resources(spec: ModelOptimizationSpec, stage: str) -> dict[str, dict[str, str]]:
    """The stage's requests and limits; the prune stage adds its GPUs when asked (one
    per process on the Pod's node)."""
    chosen: Resources = (
        spec.execution.prune_resources if stage == "prune" else spec.execution.cpu_resources
    )
    # Quantities as strings: the API server takes both, and one type keeps diffs quiet.
    requests = {k: str(v) for k, v in chosen.requests.items()}
    limits = {k: str(v) for k, v in chosen.limits.items()}
    if _wants_gpu(spec, stage):
        # Extended resources need requests equal to limits.
        requests[GPU] = limits[GPU] = str(distributed.gpus_per_pod(spec))
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(config: OperatorConfig, gpu: bool) -> list[dict[str, str]]:
    """Scratch locations on the emptyDir (the root filesystem is read-only), then extras."""
    env = {
        "HOME": SCRATCH,
        "TMPDIR": SCRATCH,
        "KUBESLIM_CACHE": f"{SCRATCH}/cache",
        # Progress lines must reach the log while the stage runs, not at exit.
        "PYTHONUNBUFFERED": "1",
    }
    if not gpu:
        # On a GPU node the NVIDIA runtime exposes every GPU to a container that asks
        # for none (the CUDA images set NVIDIA_VISIBLE_DEVICES=all); `void` hides them.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    for item in config.extra_env:
        key, sep, value = item.partition("=")
        if sep and key.strip():
            env[key.strip()] = value
    return [{"name": k, "value": v} for k, v in env.items()]
