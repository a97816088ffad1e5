"""kubeslim end to end as a cluster user runs it (issue 12, item 3): the Helm
chart installed with the project's images on the real node, the operator in
its own Pod under its ServiceAccount, stage Jobs in the trainer and runtime
images, artifacts on the real S3 server (radosgw on the node's bridge address).

    pytest --node=real --node-images=all tests/test_e2e_node.py

The namespace enforces the restricted Pod Security Standard, so the API
server refuses any operator or stage Pod that asks for more.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from kubeslim.constants import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_FINGERPRINT,
    LABEL_GENERATION,
    LABEL_NAME,
    LABEL_STAGE,
    PLURAL,
    VERSION,
)
from tests.cluster.cluster import Cluster, wait_for
from tests.s3.plugin import S3Server
from tests.tools.chart import CHART, helm

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.s3]

RELEASE = "kubeslim"
# Four real stages on two shared cores: prune (one short epoch) is most of it.
RUN_TIMEOUT_S = 900.0
OPERATOR_TIMEOUT_S = 110.0  # under helm()'s own 120 s limit

# resnet18 with the small stem on scikit-learn's 8x8 digits (built into both
# images): one pruning step, one fine-tuning epoch, a short latency benchmark.
SPEC: dict[str, Any] = {
    "model": {
        "architecture": "resnet18",
        "numClasses": 10,
        "inputShape": [1, 8, 8],
        "stem": "small",
    },
    "dataset": {"name": "digits", "calibrationSize": 64},
    "pruning": {
        "target": {"filterRate": 0.3},
        "schedule": {"steps": 1},
        "fineTune": {"epochs": 1},
    },
    "quantization": {"subsetSize": 64},
    "benchmark": {"durationSeconds": 0.5, "modes": ["latency"], "batchSizes": [1], "rounds": 1},
    "execution": {"backoffLimit": 0},
}


@dataclass
class Install:
    """The chart installed into a restricted namespace, and where its runs store artifacts."""

    cluster: Cluster
    namespace: str
    bucket: str
    s3: S3Server

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.cluster.api_client())

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.cluster.api_client())

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.cluster.api_client())

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {
                **spec,
                "artifacts": {
                    "uri": f"s3://{self.bucket}/runs",
                    "credentialsSecret": "s3-credentials",
                },
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def start_pruning(self, name: str, epochs: int) -> None:
        """Create a run with `epochs` of fine-tuning and wait for its prune Pod to run."""
        self.create(name, {**SPEC, "pruning": {**SPEC["pruning"], "fineTune": {"epochs": epochs}}})
        wait_for(
            f"the prune Pod of {name} to run",
            lambda: any(p.status.phase == "Running" for p in self.pods(name)),
            OPERATOR_TIMEOUT_S,
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def edit(self, name: str, spec: dict[str, Any]) -> None:
        """A merge patch of the spec, as `kubectl edit` or a GitOps sync makes it."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return dict(obj.get("status") or {})

    def wait_state(self, name: str, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        try:
            wait_for(
                f"{name} to reach {' or '.join(states)}",
                lambda: self.status(name).get("state") in states,
                timeout,
                interval=2.0,
            )
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{self.diagnose(name)}") from None
        return self.status(name)

    def labelled(self, name: str) -> str:
        return f"{LABEL_NAME}={name}"

    def jobs(self, name: str) -> list[Any]:
        return list(
            self.batch.list_namespaced_job(self.namespace, label_selector=self.labelled(name)).items
        )

    def pods(self, name: str) -> list[Any]:
        return list(
            self.core.list_namespaced_pod(self.namespace, label_selector=self.labelled(name)).items
        )

    def diagnose(self, name: str) -> str:
        """What a failed wait shows: the status, the Pods and the operator's log tail."""
        lines = [f"status: {self.status(name)}"]
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
            log = self.cluster.pod_log(self.namespace, pod.metadata.name, tail_lines=15)
            lines.append(log)
        return "\n".join(lines)


def _restricted_namespace(cluster: Cluster, name: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )


def _chart_values(images: dict[str, str]) -> list[str]:
    """The built images, never pulled (no registry is reachable here)."""
    repository, tag = images["operator"].rsplit(":", 1)
    values = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "stages.trainerImage": images["trainer"],
        "stages.runtimeImage": images["runtime"],
        "stages.imagePullPolicy": "Never",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def install(
    k8s_cluster: Cluster, project_images: dict[str, str], s3_server: S3Server
) -> Iterator[Install]:
    missing = {"operator", "runtime", "trainer"} - set(project_images)
    if missing:
        pytest.skip(f"needs the {', '.join(sorted(missing))} image: --node-images=all")
    namespace = f"e2e-{int(time.time()) % 100000}"
    _restricted_namespace(k8s_cluster, namespace)
    kubeconfig = str(k8s_cluster.kubeconfig)
    # What the stage Pods get as environment (envFrom): the S3 user and endpoint.
    k8s_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-credentials"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                "AWS_ENDPOINT_URL": s3_server.endpoint,
                "AWS_REGION": s3_server.region,
            },
        },
        namespace=namespace,
    )
    wait = ["--wait", "--timeout", f"{int(OPERATOR_TIMEOUT_S)}s"]
    # The release is uninstalled whatever fails, a failed install included: its operator
    # serves every namespace and would take up the next modules' resources.
    try:
        helm("install", RELEASE, str(CHART), "--kubeconfig", kubeconfig, "--namespace",
             namespace, *_chart_values(project_images), *wait)  # fmt: skip
        yield Install(k8s_cluster, namespace, s3_server.create_bucket(), s3_server)
    finally:
        helm("uninstall", RELEASE, "--kubeconfig", kubeconfig, "--namespace", namespace,
             "--wait", check=False)  # fmt: skip
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_operator_runs_in_its_own_pod_with_its_service_account(install: Install) -> None:
    (pod,) = install.core.list_namespaced_pod(
        install.namespace, label_selector="app.kubernetes.io/name=kubeslim"
    ).items
    assert pod.status.phase == "Running"
    account = pod.spec.service_account_name
    assert account != "default"
    install.core.read_namespaced_service_account(account, install.namespace)  # the chart's
    assert pod.spec.containers[0].image_pull_policy == "Never"


def test_model_optimization_succeeds_with_s3_artifacts(install: Install) -> None:
    install.create("digits", SPEC)
    status = install.wait_state("digits", ("Succeeded", "Failed"), RUN_TIMEOUT_S)
    assert status["state"] == "Succeeded", install.diagnose("digits")

    metrics = status["metrics"]
    assert metrics["optimized"]["accuracy"] > 0.2  # ten classes: well above chance
    assert metrics["optimized"]["sizeBytes"] < metrics["baseline"]["sizeBytes"]
    assert status["speedup"].endswith("x")
    assert set(status["artifacts"]) == {"prunedModel", "onnx", "ir", "int8Ir", "report"}
    fs = install.s3.filesystem()
    root = f"{install.bucket}/runs/{install.namespace}/digits"
    stored = set(fs.find(root))
    assert stored, f"nothing under s3://{root}"
    for kind, uri in status["artifacts"].items():
        key = uri.removeprefix("s3://")
        if not key.startswith(install.bucket):  # relative to the artifacts root
            key = f"{install.bucket}/runs/{key.lstrip('/')}"
        assert fs.exists(key), f"{kind}: {uri} is not in the bucket ({sorted(stored)})"
    for stage in status["stages"]:
        assert stage["state"] == "Succeeded" and stage["resultUri"], stage
    # The chart's rules as rendered (cluster scope) were enough: no denial on the way
    # (kopf's APIForbiddenError, the client's "(403)", kopf's "Code: 403" for Events).
    (operator,) = install.core.list_namespaced_pod(
        install.namespace, label_selector="app.kubernetes.io/name=kubeslim"
    ).items
    log = install.cluster.pod_log(install.namespace, operator.metadata.name)
    assert not re.search(r"[Ff]orbidden|\(403\)|Code: 403", log), log[-3000:]


def test_bad_input_fails_the_stage_job_at_once_naming_the_field(install: Install) -> None:
    missing = f"s3://{install.bucket}/no/such/model.pt"
    install.create("bad", {**SPEC, "model": {**SPEC["model"], "checkpoint": missing}})
    status = install.wait_state("bad", ("Failed", "Succeeded"), OPERATOR_TIMEOUT_S * 2)
    assert status["state"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "spec.model.checkpoint" in failed["message"], failed
    # No retries: exit code 2 is bad input, and the Job ran one Pod.
    (job,) = install.jobs("bad")
    assert (job.status.failed, job.status.succeeded) == (1, None)


def test_deleting_mid_run_removes_its_jobs_and_pods(install: Install) -> None:
    install.start_pruning("gone", epochs=20)
    install.delete("gone")
    wait_for(
        "its Jobs and Pods to go",
        lambda: not install.jobs("gone") and not install.pods("gone"),
        OPERATOR_TIMEOUT_S,
    )


def test_killing_the_operator_mid_run_resumes_without_a_duplicate_job(install: Install) -> None:
    install.start_pruning("failover", epochs=4)
    operators = "app.kubernetes.io/name=kubeslim"
    (old,) = install.core.list_namespaced_pod(install.namespace, label_selector=operators).items
    install.core.delete_namespaced_pod(old.metadata.name, install.namespace, grace_period_seconds=0)

    def stage_jobs(stage: str) -> list[Any]:
        return [j for j in install.jobs("failover") if j.metadata.labels[LABEL_STAGE] == stage]

    # The new operator Pod takes the run over: once prune is done it starts convert.
    wait_for("the convert Job", lambda: stage_jobs("convert"), RUN_TIMEOUT_S, interval=2.0)
    (new,) = install.core.list_namespaced_pod(install.namespace, label_selector=operators).items
    assert new.metadata.name != old.metadata.name
    assert len(stage_jobs("prune")) == 1
    install.delete("failover")


def test_an_edit_mid_run_is_picked_up(install: Install) -> None:
    """docs/operator.md, "Spec edits": the running prune Job of the old spec is deleted,
    prune and the stages after it run as new Jobs of the new generation, and the final
    status is the edited spec's."""
    install.start_pruning("edited", epochs=20)
    (old,) = install.jobs("edited")
    # Another filter rate and one epoch: prune's inputs change (so does its fingerprint).
    target = {"filterRate": 0.5}
    install.edit("edited", {"pruning": {"target": target, "fineTune": {"epochs": 1}}})
    status = install.wait_state("edited", ("Succeeded", "Failed"), RUN_TIMEOUT_S)
    assert status["state"] == "Succeeded", install.diagnose("edited")
    assert status["observedGeneration"] == 2
    jobs = install.jobs("edited")
    assert old.metadata.name not in {j.metadata.name for j in jobs}  # deleted mid-run
    assert {j.metadata.labels[LABEL_STAGE] for j in jobs} == {
        "prune", "convert", "quantize", "benchmark"
    }  # fmt: skip
    assert all(j.metadata.labels[LABEL_GENERATION] == "2" for j in jobs), [
        j.metadata.name for j in jobs
    ]
    prune = next(s for s in status["stages"] if s["name"] == "prune")
    assert prune["state"] == "Succeeded"
    assert not prune["fingerprint"].startswith(old.metadata.labels[LABEL_FINGERPRINT])
    stored = install.custom.get_namespaced_custom_object(
        GROUP, VERSION, install.namespace, PLURAL, "edited"
    )
    assert stored["spec"]["pruning"]["target"] == target
    install.delete("edited")


def test_pods_that_cannot_start_show_why_in_status(install: Install) -> None:
    """Issue 13 item 5 on the real node. An image that is not there, with the chart's
    pull policy Never (as here: no registry), can never start: the run fails at once
    naming the kubelet's reason instead of holding a slot. A GPU that no node has may
    appear later: the prune stage's condition says Unschedulable while the run waits."""
    absent = "127.0.0.1:9/kubeslim/absent:1"
    # Filter rates no other test here uses: with SPEC's own, prune's fingerprint matches
    # an earlier test's run and the stage cache reuses it without starting a Pod (CI did).
    install.create("nopull", {
        **SPEC,
        "pruning": {**SPEC["pruning"], "target": {"filterRate": 0.2}},
        "execution": {**SPEC["execution"], "trainerImage": absent},
    })  # fmt: skip
    install.create("nogpu", {
        **SPEC, "pruning": {**SPEC["pruning"], "gpu": True, "target": {"filterRate": 0.4}}
    })  # fmt: skip

    def condition(name: str, kind: str) -> dict[str, Any]:
        conditions = install.status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    status = install.wait_state("nopull", ("Failed", "Succeeded"), OPERATOR_TIMEOUT_S)
    failed = condition("nopull", "Failed")
    assert (status["state"], failed.get("reason")) == ("Failed", "PodCannotStart"), status
    assert "ErrImageNeverPull" in failed["message"] and absent in failed["message"], failed
    try:
        wait_for(
            "nogpu's Pruned condition to say Unschedulable",
            lambda: condition("nogpu", "Pruned").get("reason") == "Unschedulable",
            OPERATOR_TIMEOUT_S,
            interval=2.0,
        )
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{install.diagnose('nogpu')}") from None
    prune = next(s for s in install.status("nogpu")["stages"] if s["name"] == "prune")
    assert prune["message"].startswith("Pod cannot start yet: Unschedulable"), prune
    assert "nvidia.com/gpu" in prune["message"]
    assert install.status("nogpu")["state"] == "Running"
    install.delete("nopull")
    install.delete("nogpu")
