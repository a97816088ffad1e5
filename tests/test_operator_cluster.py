"""The operator against a real control plane (the `k8s_cluster` fixture).

The operator runs as a subprocess (`python -m kubeslim operator`) under a
ServiceAccount that has exactly the API access docs/operator.md lists, so these
tests also prove that table sufficient.

Most tests run the stand-in stage (tests/cluster/standin.py, in its image on the
real node: the `standin_stage` fixture): it follows the stage contract and takes
its orders from a control.json the test puts in the resource's artifacts folder
(a claim the stage Pods mount), so a test can hold a stage running (until a
release file appears) or make it fail, without timing. The full pipeline test
runs the real `kubeslim stage` on the digits dataset in the trainer and runtime
images.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeslim.api.spec import BenchmarkSpec
from tests.cluster.plugin import StandIn
from tests.cluster.rig import free_port

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "modeloptimizations.kubeslim.dev.yaml"
GROUP, VERSION, PLURAL = "kubeslim.dev", "v1alpha1", "modeloptimizations"
OPERATOR_NS = "kubeslim-system"
TIMEOUT = 180.0

# docs/operator.md, "API access the operator needs": keep the two in step.
RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kubeslim.dev"],
        "resources": ["modeloptimizations"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["kubeslim.dev"], "resources": ["modeloptimizations/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["kubeslim.dev"],
        "resources": ["modeloptimizations/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
]

# A local artifacts path works on a cluster only through a volume every stage Pod mounts.
ARTIFACTS_PATH = "/kubeslim-artifacts"
ARTIFACTS_CLAIM = "artifacts"
ARTIFACTS = {"uri": ARTIFACTS_PATH, "volume": {"claimName": ARTIFACTS_CLAIM}}

SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "execution": {"backoffLimit": 0, "ttlSecondsAfterFinished": None},
}


# --- fixtures -------------------------------------------------------------------------


class Env:
    """The namespace, API clients and the running operator of this module."""

    def __init__(self, cluster: Any, namespace: str, standin: StandIn) -> None:
        from kubernetes import client

        self.cluster = cluster
        self.namespace = namespace
        self.standin = standin
        # What the stage Pods see at ARTIFACTS_PATH: one claim, shared by every Pod.
        self.artifacts = cluster.pvc_dir(namespace, ARTIFACTS_CLAIM)
        api = cluster.api_client()
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ext = client.ApiextensionsV1Api(api)
        self.operator: Any = None
        self.metrics_port = 0
        self.kubeconfig = self._operator_identity()

    def _operator_identity(self) -> Path:
        name = "kubeslim-operator"
        self.cluster.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": name},
                    "rules": RULES,
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": name,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NS}
                    ],
                },
            ]
        )
        return Path(self.cluster.service_account_kubeconfig(OPERATOR_NS, name))

    def start_operator(self, stages: dict[str, str] | None = None, max_concurrent: int = 1) -> None:
        """`stages`: the stage images and command (KUBESLIM_*), the stand-in's by default."""
        port = free_port()
        self.metrics_port = free_port()
        env = {
            **(stages or self.standin.operator_env()),
            "KUBESLIM_METRICS_PORT": str(self.metrics_port),
            "KUBESLIM_PROGRESS_INTERVAL": "1",
            "KUBESLIM_MAX_CONCURRENT": str(max_concurrent),
            "KUBESLIM_HEALTH_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        self.operator = self.cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator", "--namespace", self.namespace],
            env=env,
            kubeconfig=self.kubeconfig,
            name="kubeslim-operator",
        )
        self.operator.wait_for_output("watching " + self.namespace, timeout=60)
        _wait(
            "the operator's /healthz",
            lambda: _healthy(port),
            self.operator,
        )

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    # --- resources ---

    def create(
        self,
        name: str,
        spec: dict[str, Any],
        control: dict[str, Any],
        artifacts: dict[str, Any] | None = None,
    ) -> None:
        self.standin.prepare(self.artifacts, self.namespace, name, control)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelOptimization",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {**spec, "artifacts": artifacts or ARTIFACTS},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def release(self, name: str, stage: str) -> None:
        (self.artifacts / self.namespace / name / f"release-{stage}").touch()

    def get(self, name: str) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.status(name).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def jobs(self, name: str) -> list[str]:
        """The resource's Job names without their fingerprint suffix."""
        return [_short(j) for j in self.job_names(name)]

    def job_names(self, name: str) -> list[str]:
        selector = f"kubeslim.dev/modeloptimization={name}"
        items = self.batch.list_namespaced_job(self.namespace, label_selector=selector).items
        return sorted(j.metadata.name for j in items)

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.reason, e.message) for e in items]

    def wait_state(
        self, name: str, state: str, generation: int = 1, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        def reached() -> bool:
            status = self.status(name)
            return status.get("state") == state and status.get("observedGeneration") == generation

        _wait(f"{name} {state} (generation {generation})", reached, self.operator, timeout)
        return self.status(name)

    def delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )


def _short(job: str) -> str:
    """`happy-prune-g1-0a1b2c3d` -> `happy-prune-g1`: the fingerprint part varies with the spec."""
    return re.sub(r"-[0-9a-f]{8}$", "", job)


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def _wait(
    what: str, condition: Callable[[], bool], operator: Any, timeout: float = TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if operator is not None and operator.returncode is not None:
            raise AssertionError(
                f"the operator exited while waiting for {what}:\n{operator.tail()}"
            )
        if time.monotonic() > deadline:
            tail = operator.tail() if operator is not None else ""
            raise AssertionError(f"timed out waiting for {what}; operator log:\n{tail}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def env(k8s_cluster: Any, standin_stage: StandIn) -> Iterator[Env]:
    k8s_cluster.apply(CRD_FILE)
    namespace = "mopt-tests"
    k8s_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    environment = Env(k8s_cluster, namespace, standin_stage)
    environment.start_operator()
    try:
        yield environment
    finally:
        environment.stop_operator()


# --- the tests ------------------------------------------------------------------------


def test_invalid_resource_is_rejected_by_the_api_server(env: Env) -> None:
    from kubernetes.client.exceptions import ApiException

    both = {**SPEC, "model": {"architecture": "resnet18", "entryPoint": "pkg.mod:build"}}
    with pytest.raises(ApiException) as err:
        env.create("both-sources", both, {})
    assert err.value.status == 422
    assert "exactly one of architecture and entryPoint must be set" in str(err.value.body)
    bad_enum = {**SPEC, "dataset": {"name": "imagenet"}}
    with pytest.raises(ApiException) as err:
        env.create("bad-enum", bad_enum, {})
    assert err.value.status == 422 and "spec.dataset.name" in str(err.value.body)
    bad_rate = {**SPEC, "pruning": {"target": {"filterRate": 1.0}}}
    with pytest.raises(ApiException) as err:
        env.create("bad-rate", bad_rate, {})
    assert "spec.pruning.target.filterRate" in str(err.value.body)
    # A dotted name is a valid object name but not a label value: the root CEL rule.
    with pytest.raises(ApiException) as err:
        env.create("v1.2", SPEC, {})
    assert "metadata.name must be a DNS label" in str(err.value.body)


def test_pipeline_succeeds_with_metrics_artifacts_progress_and_events(env: Env) -> None:
    env.create("happy", SPEC, {"gate": ["prune"]})
    # Held in prune: the progress lines reach the status through the Pod log.
    _wait(
        "prune progress in status",
        lambda: bool((env.status("happy").get("stages") or [{}])[0].get("progress")),
        env.operator,
    )
    status = env.status("happy")
    assert status["state"] == "Running" and status["currentStage"] == "prune"
    assert status["stages"][0]["progress"]["steps"] == 3
    assert status["summary"].startswith("running prune (work")
    env.release("happy", "prune")
    status = env.wait_state("happy", "Succeeded")
    assert env.jobs("happy") == [
        "happy-benchmark-g1",
        "happy-convert-g1",
        "happy-prune-g1",
        "happy-quantize-g1",
    ]
    assert status["metrics"]["speedup"] == 3.0 and status["metrics"]["sizeReduction"] == 4.0
    assert (status["speedup"], status["sizeReduction"], status["accuracyDrop"]) == (
        "3.00x",
        "4.00x",
        "1.00pt",
    )
    assert status["artifacts"]["int8Ir"].endswith("quantize/int8.xml")
    assert status["artifacts"]["prunedModel"].endswith("prune/model.pt")
    assert all(s["state"] == "Succeeded" for s in status["stages"])
    assert all(s["jobName"] and s["resultUri"] for s in status["stages"])
    assert env.condition("happy", "Ready")["status"] == "True"
    assert "kopf" not in json.dumps(status)  # kopf's state stays in annotations
    annotations = env.get("happy")["metadata"].get("annotations") or {}
    assert any(k.startswith("kubeslim.dev/") for k in annotations)
    # Prometheus metrics: the state gauge and each stage's duration.
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{env.metrics_port}/metrics") as rsp:
        metrics = rsp.read().decode()
    assert 'kubeslim_stage_duration_seconds_count{stage="prune"}' in metrics
    assert 'kubeslim_optimizations{state="Succeeded"}' in metrics
    _wait(  # kopf posts Events in the background
        "JobCreated and AllStagesCompleted Events",
        lambda: {"JobCreated", "AllStagesCompleted"} <= {r for r, _ in env.events("happy")},
        env.operator,
    )

    # A spec edit re-runs from the first changed stage (quantize) and reuses the rest.
    env.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        env.namespace,
        PLURAL,
        "happy",
        {"spec": {"quantization": {"preset": "mixed"}}},
        _content_type="application/merge-patch+json",
    )
    status = env.wait_state("happy", "Succeeded", generation=2)
    assert env.jobs("happy") == [
        "happy-benchmark-g1",
        "happy-benchmark-g2",
        "happy-convert-g1",
        "happy-prune-g1",
        "happy-quantize-g1",
        "happy-quantize-g2",
    ]
    assert env.condition("happy", "Pruned")["reason"] == "Reused"
    assert env.condition("happy", "Quantized")["reason"] == "Completed"

    # Deleting the resource removes its Jobs (ownerReferences, garbage collector).
    env.delete("happy")
    _wait("the resource to go", lambda: "happy" not in _names(env), env.operator)
    _wait("its Jobs to go", lambda: not env.jobs("happy"), env.operator)


def test_operator_restart_mid_run_neither_duplicates_nor_loses_a_job(env: Env) -> None:
    env.create("restart", SPEC, {"gate": ["convert"]})
    _wait(
        "convert running",
        lambda: env.status("restart").get("currentStage") == "convert",
        env.operator,
    )
    env.stop_operator()
    env.release("restart", "convert")  # it finishes while no operator watches
    env.start_operator()
    env.wait_state("restart", "Succeeded")
    assert env.jobs("restart") == [
        "restart-benchmark-g1",
        "restart-convert-g1",
        "restart-prune-g1",
        "restart-quantize-g1",
    ]
    assert all(s["attempts"] == 1 for s in env.status("restart")["stages"])
    env.delete("restart")


def test_job_failure_gives_a_failed_condition_with_the_log_tail(env: Env) -> None:
    env.create("broken", SPEC, {"fail": {"quantize": "calibration data is empty"}})
    status = env.wait_state("broken", "Failed")
    failed = env.condition("broken", "Failed")
    assert failed["status"] == "True" and failed["reason"] == "JobFailed"
    assert "broken-quantize-g1-" in failed["message"]
    assert "error: calibration data is empty" in failed["message"]
    assert status["currentStage"] == "quantize"
    assert env.condition("broken", "Quantized")["reason"] == "JobFailed"
    _wait(  # kopf posts Events in the background
        "a JobFailed Event",
        lambda: any(r == "JobFailed" for r, _ in env.events("broken")),
        env.operator,
    )
    # No crash loop: nothing after the failed stage is created, the operator keeps running.
    assert not any(j.startswith("broken-benchmark") for j in env.jobs("broken"))
    assert env.operator.returncode is None
    env.delete("broken")


def test_spec_the_operator_rejects_gets_invalid_spec(env: Env) -> None:
    # A cluster whose CRD lags the operator (no CEL rules) lets this through;
    # the operator's own validation then names the field.
    crd = env.ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    original = env.cluster.api_client().sanitize_for_serialization(crd)
    loose = json.loads(json.dumps(original))
    spec_schema = loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["model"].pop("x-kubernetes-validations")
    env.ext.replace_custom_resource_definition(f"{PLURAL}.{GROUP}", loose)
    try:
        both = {**SPEC, "model": {"architecture": "resnet18", "entryPoint": "pkg.mod:build"}}
        _wait("the looser CRD", lambda: _try_create(env, "invalid", both), env.operator)
        _assert_refused(env, "invalid", "InvalidSpec", "invalid spec: spec.model")
        assert env.operator.returncode is None
    finally:
        current = env.ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        original["metadata"]["resourceVersion"] = current.metadata.resource_version
        env.ext.replace_custom_resource_definition(f"{PLURAL}.{GROUP}", original)
        env.delete("invalid")


def test_job_the_api_server_refuses_fails_the_resource_naming_execution(env: Env) -> None:
    resources = {"pruneResources": {"limits": {"cpu": "lots"}}}
    bad = {**SPEC, "execution": {**SPEC["execution"], **resources}}
    env.create("bad-quantity", bad, {})
    env.wait_state("bad-quantity", "Failed")
    failed = env.condition("bad-quantity", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("invalid spec: spec.execution: the API server rejected Job")
    assert "bad-quantity-prune-g1-" in failed["message"]
    assert env.jobs("bad-quantity") == []
    env.delete("bad-quantity")


def test_concurrency_limit_makes_the_second_wait(env: Env) -> None:
    env.create("first", SPEC, {"gate": ["prune"]})
    _wait("first running", lambda: env.status("first").get("state") == "Running", env.operator)
    env.create("second", SPEC, {})
    _wait(
        "second waiting",
        lambda: env.condition("second", "Waiting").get("status") == "True",
        env.operator,
    )
    assert env.condition("second", "Waiting")["reason"] == "WaitingForCapacity"
    assert env.jobs("second") == []
    env.release("first", "prune")
    env.wait_state("first", "Succeeded")
    env.wait_state("second", "Succeeded")
    env.delete("first")
    env.delete("second")


def test_bad_input_fails_the_job_at_once_naming_the_field(env: Env) -> None:
    spec = {**SPEC, "execution": {**SPEC["execution"], "backoffLimit": 2}}
    error = "spec.model.checkpoint: no such file: /kubeslim-artifacts/missing.pt"
    env.create("bad-input", spec, {"bad_input": {"prune": error}})
    status = env.wait_state("bad-input", "Failed")
    failed = env.condition("bad-input", "Failed")
    # Exit 2 fails the Job through its podFailurePolicy: one Pod, not backoffLimit + 1.
    assert failed["message"].splitlines()[0].endswith(f"error: {error}")
    assert status["stages"][0]["attempts"] == 1
    env.delete("bad-input")


def test_a_transient_failure_is_retried(env: Env) -> None:
    spec = {**SPEC, "execution": {**SPEC["execution"], "backoffLimit": 1}}
    env.create("flaky", spec, {"transient": ["convert"]})
    status = env.wait_state("flaky", "Succeeded")
    convert = next(s for s in status["stages"] if s["name"] == "convert")
    assert convert["attempts"] == 2  # exit 75, then success after the Job's back-off
    env.delete("flaky")


def test_a_local_artifacts_path_without_a_volume_is_refused_up_front(env: Env) -> None:
    env.create("no-volume", SPEC, {}, artifacts={"uri": "/data/artifacts"})
    lead = "cannot run on a cluster: spec.artifacts.uri"
    _assert_refused(env, "no-volume", "UnsupportedInCluster", lead)
    env.delete("no-volume")


def test_artifacts_uri_is_immutable_and_defaults_are_stored(env: Env) -> None:
    from kubernetes.client.exceptions import ApiException

    env.create("immutable", SPEC, {"gate": ["prune"]})
    stored = env.get("immutable")["spec"]
    # The API server wrote every default: the stored spec is the effective spec.
    assert stored["pruning"]["target"] == {"filterRate": 0.3}
    assert stored["benchmark"]["durationSeconds"] == BenchmarkSpec().duration_seconds
    assert stored["execution"]["scratchSizeLimit"] == "20Gi"
    with pytest.raises(ApiException) as err:
        env.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            env.namespace,
            PLURAL,
            "immutable",
            {"spec": {"artifacts": {"uri": "s3://elsewhere/runs"}}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 422 and "artifacts.uri is immutable" in str(err.value.body)
    env.release("immutable", "prune")
    env.wait_state("immutable", "Succeeded")
    env.delete("immutable")


def test_a_pod_that_cannot_start_fails_the_stage_with_its_reason(env: Env) -> None:
    artifacts = {**ARTIFACTS, "credentialsSecret": "no-such-secret"}
    env.create("no-secret", SPEC, {}, artifacts=artifacts)
    status = env.wait_state("no-secret", "Failed")
    failed = env.condition("no-secret", "Failed")
    assert failed["reason"] == "PodCannotStart"
    assert "CreateContainerConfigError" in failed["message"]
    assert "no-such-secret" in failed["message"]
    assert env.condition("no-secret", "Pruned")["reason"] == "PodCannotStart"
    assert status["stages"][0]["message"].startswith("Pod cannot start: CreateContainerConfigError")
    # Its Job goes, so the Pod stops retrying and no slot is held.
    _wait("the stuck Job to go", lambda: env.jobs("no-secret") == [], env.operator)
    env.delete("no-secret")


def test_an_upgrade_leaves_finished_resources_alone(env: Env) -> None:
    env.create("finished", SPEC, {})
    env.wait_state("finished", "Succeeded")
    before = env.status("finished")
    jobs = env.job_names("finished")
    env.stop_operator()
    # The next version changes a default; the stored spec keeps the value it was
    # created with, and the finished resource is not re-planned on resume.
    crd = env.ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    original = env.cluster.api_client().sanitize_for_serialization(crd)
    changed = json.loads(json.dumps(original))
    schema = changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema["properties"]["benchmark"]["properties"]["durationSeconds"]["default"] = 7.0
    env.ext.replace_custom_resource_definition(f"{PLURAL}.{GROUP}", changed)
    try:
        env.start_operator()
        env.operator.wait_for_output(f"{env.namespace}/finished: finished", timeout=60)
        stored = env.get("finished")["spec"]["benchmark"]["durationSeconds"]
        assert stored == BenchmarkSpec().duration_seconds != 7.0
        assert env.status("finished") == before
        assert env.job_names("finished") == jobs
    finally:
        env.stop_operator()
        current = env.ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        original["metadata"]["resourceVersion"] = current.metadata.resource_version
        env.ext.replace_custom_resource_definition(f"{PLURAL}.{GROUP}", original)
        env.start_operator()
    env.delete("finished")


def _patch(env: Env, name: str, body: dict[str, Any]) -> None:
    env.custom.patch_namespaced_custom_object(
        GROUP, VERSION, env.namespace, PLURAL, name, body,
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def test_suspend_resume_retry_and_cancel(env: Env) -> None:
    env.create("paused", SPEC, {"gate": ["prune"]})
    _wait("prune running", lambda: env.jobs("paused") == ["paused-prune-g1"], env.operator)
    _patch(env, "paused", {"spec": {"suspend": True}})
    env.wait_state("paused", "Suspended", generation=2)
    _wait("the running Job to go", lambda: env.jobs("paused") == [], env.operator)
    assert env.condition("paused", "Suspended")["status"] == "True"
    env.release("paused", "prune")
    _patch(env, "paused", {"spec": {"suspend": False}})
    env.wait_state("paused", "Succeeded", generation=3)
    assert env.condition("paused", "Suspended")["reason"] == "Resumed"
    assert "paused-prune-g3" in env.jobs("paused")
    env.delete("paused")

    # A failure that may not repeat: retried by annotation, the spec untouched.
    env.create("retried", SPEC, {"transient": ["quantize"]})
    env.wait_state("retried", "Failed")
    _patch(env, "retried", {"metadata": {"annotations": {"kubeslim.dev/retry": "1"}}})
    status = env.wait_state("retried", "Succeeded")
    assert status["retries"] == 1 and status["lastRetry"] == "1"
    assert "retried-quantize-g1-r1" in [
        re.sub(r"-[0-9a-f]{8}-r", "-r", j) for j in env.job_names("retried")
    ]
    env.delete("retried")

    env.create("cancelled", SPEC, {"gate": ["prune"]})
    _wait("prune running", lambda: env.jobs("cancelled") == ["cancelled-prune-g1"], env.operator)
    _patch(env, "cancelled", {"metadata": {"annotations": {"kubeslim.dev/cancel": "now"}}})
    env.wait_state("cancelled", "Failed")
    assert env.condition("cancelled", "Failed")["reason"] == "Cancelled"
    _wait("its Job to go", lambda: env.jobs("cancelled") == [], env.operator)
    env.delete("cancelled")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the trainer and runtime images' builds when the cache misses
def test_full_pipeline_on_digits_with_the_real_stages(
    env: Env, real_stages: dict[str, str]
) -> None:
    env.stop_operator()
    env.start_operator(real_stages)
    try:
        spec = {
            "model": {
                "architecture": "resnet18",
                "numClasses": 10,
                "inputShape": [1, 8, 8],
                "stem": "small",
            },
            "dataset": {"name": "digits", "calibrationSize": 64},
            "pruning": {"target": {"filterRate": 0.3}, "fineTune": {"epochs": 1}},
            "quantization": {"subsetSize": 64},
            "benchmark": {"durationSeconds": 0.5, "modes": ["latency"]},
            "execution": {"backoffLimit": 0},
        }
        env.create("digits", spec, {})
        # Four real stages; on two cores shared with other work prune alone took 2 min.
        status = env.wait_state("digits", "Succeeded", timeout=1200)
        metrics = status["metrics"]
        assert metrics["baseline"]["accuracy"] is not None
        assert metrics["optimized"]["accuracy"] > 0.2  # ten classes: well above chance
        assert metrics["optimized"]["sizeBytes"] < metrics["baseline"]["sizeBytes"]
        assert status["speedup"].endswith("x") and status["sizeReduction"].endswith("x")
        assert status["accuracyDrop"].endswith("pt")
        assert set(status["artifacts"]) == {"prunedModel", "onnx", "ir", "int8Ir", "report"}
        for entry in status["stages"]:
            assert entry["state"] == "Succeeded" and entry["resultUri"], entry
            # Keys relative to the root, resolved against the root the Pods see; from
            # here (another mount point of the same volume) they resolve as well.
            assert entry["resultUri"].startswith(f"{ARTIFACTS_PATH}/{env.namespace}/digits/")
            path = Path(str(env.artifacts) + entry["resultUri"].removeprefix(ARTIFACTS_PATH))
            assert path.is_file(), entry["resultUri"]
        env.delete("digits")
    finally:
        env.stop_operator()
        env.start_operator()


def _assert_refused(env: Env, name: str, reason: str, lead: str) -> None:
    """Failed before any Job, the condition and summary naming the field."""
    status = env.wait_state(name, "Failed")
    failed = env.condition(name, "Failed")
    assert failed["reason"] == reason
    assert failed["message"].startswith(lead + ":") and status["summary"].startswith(lead)
    assert env.jobs(name) == []


def _try_create(env: Env, name: str, spec: dict[str, Any]) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        env.create(name, spec, {})
    except ApiException as err:
        if err.status == 422:
            return False
        raise
    return True


def _names(env: Env) -> list[str]:
    items = env.custom.list_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL)
    return [i["metadata"]["name"] for i in items["items"]]
