"""The stage Job builder: names, labels, owner, command, resources, lockdown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeslim.api.manifest import parse_spec
from kubeslim.cli import _parser
from kubeslim.config import OperatorConfig
from kubeslim.constants import (
    LABEL_FINGERPRINT,
    LABEL_GENERATION,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_STAGE,
)
from kubeslim.executors.job import ANNOTATION_FINGERPRINT, Owner, build_job
from kubeslim.planner import JobRequest, job_name
from kubeslim.stages.pipeline import spec_fingerprints

OWNER = Owner(name="demo", namespace="team-a", uid="0b7c3d2e-1111-2222-3333-444455556666")
CONFIG = OperatorConfig(
    trainer_image="registry.local/trainer:1",
    runtime_image="registry.local/runtime:1",
    extra_env=("OMP_NUM_THREADS=2",),
)
BASE: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "artifacts": {"uri": "s3://bucket/runs/", "credentialsSecret": "s3-creds"},
}


def job_for(stage: str, **edits: Any) -> dict[str, Any]:
    spec = parse_spec({**BASE, **edits})
    fingerprint = spec_fingerprints(spec)[stage]
    name = job_name(OWNER.name, stage, 7, fingerprint=fingerprint)
    request = JobRequest(stage, name, fingerprint, 7)
    return build_job(spec, request, OWNER, CONFIG)


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_identity_labels_and_owner() -> None:
    job = job_for("convert")
    meta = job["metadata"]
    fingerprint = meta["annotations"][ANNOTATION_FINGERPRINT]
    # The fingerprint in the name: a Job of another spec never answers 409 for this one.
    assert meta["name"] == f"demo-convert-g7-{fingerprint[:8]}" and meta["namespace"] == "team-a"
    labels = {
        LABEL_NAME: "demo",
        LABEL_STAGE: "convert",
        LABEL_GENERATION: "7",
        LABEL_FINGERPRINT: fingerprint[:16],
        LABEL_MANAGED_BY: "kubeslim",
    }
    assert meta["labels"] == labels
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert len(meta["annotations"][ANNOTATION_FINGERPRINT]) == 64
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "name": "demo",
        "uid": OWNER.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_command_is_the_stage_cli_with_the_full_spec() -> None:
    job = job_for("quantize", quantization={"preset": "mixed"})
    command = container(job)["command"]
    assert command[:3] == ["kubeslim", "stage", "quantize"]
    args = _parser().parse_args(command[1:])  # the real CLI accepts it
    assert args.artifacts == "s3://bucket/runs/team-a/demo"
    assert (args.result_file, args.progress) == ("/dev/termination-log", "log")
    spec = parse_spec(json.loads(args.spec_json))
    assert spec.quantization.preset == "mixed"
    annotation = job["metadata"]["annotations"][ANNOTATION_FINGERPRINT]
    assert spec_fingerprints(spec)["quantize"] == annotation


def test_images_by_stage() -> None:
    for stage in ("prune", "convert"):  # they import torch: only the trainer image has it
        assert container(job_for(stage))["image"] == "registry.local/trainer:1"
    for stage in ("quantize", "benchmark"):
        assert container(job_for(stage))["image"] == "registry.local/runtime:1"


def test_gpu_only_for_prune_when_asked() -> None:
    gpu = {"gpu": True}
    res = container(job_for("prune", pruning=gpu))["resources"]
    assert res["requests"]["nvidia.com/gpu"] == "1" and res["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in json.dumps(container(job_for("prune"))["resources"])
    assert "nvidia.com/gpu" not in json.dumps(container(job_for("convert", pruning=gpu)))


def test_execution_settings_reach_the_pod() -> None:
    execution = {
        "serviceAccountName": "runner",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
        "priorityClassName": "batch-low",
        "imagePullSecrets": ["regcred"],
        "datasetVolume": {"claimName": "datasets", "mountPath": "/data"},
        "backoffLimit": 4,
        "activeDeadlineSeconds": 600,
        "ttlSecondsAfterFinished": 60,
        "pruneResources": {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}},
        "cpuResources": {"requests": {"cpu": "1"}},
    }
    job = job_for("prune", execution=execution)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "runner"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "gpu"
    assert "nodeAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == claim["name"])
    assert mount == {"name": claim["name"], "mountPath": "/data", "readOnly": True}
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (4, 600)
    assert spec["ttlSecondsAfterFinished"] == 60
    assert container(job)["resources"] == {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}}
    other = job_for("benchmark", execution=execution)
    assert container(other)["resources"] == {"requests": {"cpu": "1"}}


def test_defaults_leave_optional_fields_out() -> None:
    job = job_for("convert", execution={"ttlSecondsAfterFinished": None})
    pod = job["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "nodeSelector", "tolerations", "affinity"):
        assert key not in pod
    assert "ttlSecondsAfterFinished" not in job["spec"]


def test_locked_down_with_scratch_and_credentials() -> None:
    job = job_for("benchmark")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(job)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}} in pod["volumes"]
    assert {"name": "scratch", "mountPath": "/scratch"} in c["volumeMounts"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HOME"] == env["TMPDIR"] == "/scratch"
    assert env["KUBESLIM_CACHE"] == "/scratch/cache" and env["OMP_NUM_THREADS"] == "2"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    _, bad_input = job["spec"]["podFailurePolicy"]["rules"]
    assert bad_input["action"] == "FailJob" and bad_input["onExitCodes"]["values"] == [2]


def test_preemption_and_drain_do_not_count_against_retries() -> None:
    (first, *_) = job_for("prune")["spec"]["podFailurePolicy"]["rules"]
    assert first == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_no_gpu_asked_means_no_gpu_seen() -> None:
    def env(job: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e["value"] for e in container(job)["env"]}

    assert env(job_for("prune"))["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env(job_for("quantize", pruning={"gpu": True}))["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(job_for("prune", pruning={"gpu": True}))


def test_quantities_as_numbers_or_strings_and_a_scratch_limit() -> None:
    execution = {
        "cpuResources": {"requests": {"cpu": 2, "memory": "1Gi"}, "limits": {"cpu": 0.5}},
        "scratchSizeLimit": "5Gi",
    }
    job = job_for("benchmark", execution=execution)
    resources = container(job)["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "0.5"}}
    scratch = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch")
    assert scratch["emptyDir"] == {"sizeLimit": "5Gi"}


def test_artifacts_volume_is_mounted_at_the_artifacts_path() -> None:
    artifacts = {"uri": "/shared/artifacts", "volume": {"claimName": "kubeslim-artifacts"}}
    job = job_for("convert", artifacts=artifacts)
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "artifacts")
    assert volume == {
        "name": "artifacts",
        "persistentVolumeClaim": {"claimName": "kubeslim-artifacts"},
    }
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "artifacts")
    assert mount == {"name": "artifacts", "mountPath": "/shared/artifacts"}
    args = _parser().parse_args(container(job)["command"][1:])
    assert args.artifacts == "/shared/artifacts/team-a/demo"


@pytest.mark.parametrize("stage", ["prune", "convert", "quantize", "benchmark"])
def test_job_is_a_valid_kubernetes_object(stage: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = job_for(stage, pruning={"gpu": True}, execution={"datasetVolume": {"claimName": "d"}})
    kubernetes_validate.validate(job, "1.33", strict=True)


def test_a_retried_stage_carries_its_round() -> None:
    spec = parse_spec(BASE)
    fingerprint = spec_fingerprints(spec)["prune"]
    name = job_name("demo", "prune", 7, fingerprint=fingerprint, retry_round=2)
    assert name.endswith("-r2")
    job = build_job(spec, JobRequest("prune", name, fingerprint, 7, "", 2), OWNER, CONFIG)
    assert job["metadata"]["labels"]["kubeslim.dev/retry-round"] == "2"


def test_pod_labels_annotations_pull_secrets_and_an_own_image() -> None:
    execution = {
        "podLabels": {"kueue.x-k8s.io/queue-name": "ml", LABEL_STAGE: "spoofed"},
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "imagePullSecrets": ["team-pull", "shared-pull"],
        "trainerImage": "registry.local/team/model-baked:7",
    }
    config = OperatorConfig(
        trainer_image="registry.local/trainer:1",
        runtime_image="registry.local/runtime:1",
        image_pull_secrets=("shared-pull",),
    )
    spec = parse_spec({**BASE, "execution": execution})
    fingerprint = spec_fingerprints(spec)["prune"]
    request = JobRequest(
        "prune", job_name("demo", "prune", 1, fingerprint=fingerprint), fingerprint, 1
    )
    job = build_job(spec, request, OWNER, config)
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "ml"
    assert meta["labels"][LABEL_STAGE] == "prune"  # the operator's own labels win
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "shared-pull"}, {"name": "team-pull"}]
    assert container(job)["image"] == "registry.local/team/model-baked:7"
    quantize = JobRequest("quantize", "q", spec_fingerprints(spec)["quantize"], 1)
    assert (
        container(build_job(spec, quantize, OWNER, config))["image"] == "registry.local/runtime:1"
    )
