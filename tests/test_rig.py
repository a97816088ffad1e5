"""Tests of the test control plane itself: real API server semantics, the real
Job controller and garbage collector, the node's Pods and logs, RBAC.

On the fake kubelet the image is ignored and `python` is the test
environment's. With --node=real or --kubeconfig the image matters: the real
node runs a small Debian image with Python made here
(`Cluster.test_image`), another cluster python:3.11-slim.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.cluster.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

IMAGE = "python:3.11-slim"
TIMEOUT_S = 120.0

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.rig.kubeslim.dev
spec:
  group: rig.kubeslim.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
                color: {type: string, enum: [red, blue], default: red}
            status:
              type: object
              properties:
                seen: {type: integer}
"""


@pytest.fixture(scope="module", autouse=True)
def _image(k8s_cluster: Cluster) -> None:
    """The image every Pod here runs, as the cluster can run it."""
    global IMAGE
    IMAGE = k8s_cluster.test_image()


@pytest.fixture(scope="module")
def widget_crd(k8s_cluster: Cluster) -> None:
    k8s_cluster.apply(WIDGET_CRD)


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    with k8s_cluster.scratch_namespace("rig") as name:
        yield name


def job(name: str, script: str, backoff_limit: int = 0, **pod_spec: Any) -> dict[str, Any]:
    """A Job running `python -c script` once."""
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["python", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **pod_spec.pop("container", {}),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    # A script as a container's PID 1 ignores SIGTERM: a deleted Pod would
                    # hold on for the default 30 s before the kubelet kills it.
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                    **pod_spec,
                }
            },
        },
    }


def grant(
    name: str, rules: list[dict[str, Any]], account: str, namespace: str, cluster: bool = False
) -> list[dict[str, Any]]:
    """A Role (or ClusterRole) and its binding to a ServiceAccount."""
    kind = "ClusterRole" if cluster else "Role"
    api = "rbac.authorization.k8s.io"
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    binding = {"apiGroup": api, "kind": kind, "name": name}
    return [
        {"apiVersion": f"{api}/v1", "kind": kind, "metadata": {"name": name}, "rules": rules},
        {
            "apiVersion": f"{api}/v1",
            "kind": f"{kind}Binding",
            "metadata": {"name": name},
            "roleRef": binding,
            "subjects": [subject],
        },
    ]


def job_condition(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The Job's terminal condition type (Complete or Failed), if any."""
    status = client.BatchV1Api(cluster.api_client()).read_namespaced_job(name, namespace).status
    for cond in status.conditions or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return str(cond.type)
    return None


def wait_job(cluster: Cluster, namespace: str, name: str) -> str:
    wait_for(f"job {name} to finish", lambda: job_condition(cluster, namespace, name), TIMEOUT_S)
    return str(job_condition(cluster, namespace, name))


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    core = client.CoreV1Api(cluster.api_client())
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items)


def test_crd_applies_and_invalid_resource_is_rejected(
    k8s_cluster: Cluster, widget_crd: None
) -> None:
    custom = client.CustomObjectsApi(k8s_cluster.api_client())
    good = {
        "apiVersion": "rig.kubeslim.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "good"},
        "spec": {"size": 3},
    }
    stored = k8s_cluster.apply(good, namespace="default")[0]
    assert stored["spec"] == {"size": 3, "color": "red"}  # the schema default was applied

    for bad_spec, field in (
        ({"size": 11}, "spec.size"),
        ({"size": 2, "color": "green"}, "spec.color"),
    ):
        bad = {**good, "metadata": {"name": "bad"}, "spec": bad_spec}
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(
                "rig.kubeslim.dev", "v1", "default", "widgets", bad
            )
        assert err.value.status == 422
        assert field in err.value.body
    custom.delete_namespaced_custom_object("rig.kubeslim.dev", "v1", "default", "widgets", "good")


def test_job_that_exits_0_completes(k8s_cluster: Cluster, namespace: str) -> None:
    script = "open('/dev/termination-log', 'w').write('result: ok'); print('working')"
    k8s_cluster.apply(job("ok", script), namespace=namespace)

    assert wait_job(k8s_cluster, namespace, "ok") == "Complete"
    (pod,) = job_pods(k8s_cluster, namespace, "ok")
    assert pod.spec.node_name == k8s_cluster.node_name
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.message == "result: ok"


def test_job_that_exits_1_is_retried_then_fails(k8s_cluster: Cluster, namespace: str) -> None:
    script = "import sys; print('attempt failed'); sys.exit(1)"
    k8s_cluster.apply(job("bad", script, backoff_limit=1), namespace=namespace)

    assert wait_job(k8s_cluster, namespace, "bad") == "Failed"
    batch = client.BatchV1Api(k8s_cluster.api_client())
    status = batch.read_namespaced_job("bad", namespace).status
    assert status.failed == 2  # the first try and one retry
    reasons = [c.reason for c in status.conditions if c.type == "Failed"]
    assert reasons == ["BackoffLimitExceeded"]
    pods = job_pods(k8s_cluster, namespace, "bad")
    assert len(pods) == 2
    for pod in pods:
        terminated = pod.status.container_statuses[0].state.terminated
        assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 1, "Error")
        # FallbackToLogsOnError: an empty termination message falls back to the log.
        assert terminated.message == "attempt failed\n"


def test_deleting_owner_garbage_collects_jobs_and_pods(
    k8s_cluster: Cluster, namespace: str, widget_crd: None, tmp_path: Path
) -> None:
    owner = k8s_cluster.apply(
        {
            "apiVersion": "rig.kubeslim.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "owner"},
            "spec": {"size": 1},
        },
        namespace=namespace,
    )[0]
    reference = {
        "apiVersion": "rig.kubeslim.dev/v1",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    # The Pod writes its PID to a hostPath volume, so the test can see the process.
    script = "import os, time; open('/out/pid', 'w').write(str(os.getpid())); time.sleep(600)"
    child = job(
        "child",
        script,
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
    )
    child["metadata"]["ownerReferences"] = [reference]
    k8s_cluster.apply(child, namespace=namespace)
    core = client.CoreV1Api(k8s_cluster.api_client())

    def running() -> bool:
        pods = job_pods(k8s_cluster, namespace, "child")
        return bool(pods) and pods[0].status.phase == "Running"

    wait_for("the child Job's Pod to run", running, TIMEOUT_S)
    client.CustomObjectsApi(k8s_cluster.api_client()).delete_namespaced_custom_object(
        "rig.kubeslim.dev", "v1", namespace, "widgets", "owner"
    )

    def collected() -> bool:
        jobs = client.BatchV1Api(k8s_cluster.api_client()).list_namespaced_job(namespace).items
        return not jobs and not core.list_namespaced_pod(namespace).items

    wait_for("the Job and its Pod to be garbage-collected", collected, TIMEOUT_S)
    if k8s_cluster.is_rig:
        pid = int((tmp_path / "pid").read_text())
        wait_for(f"process {pid} to end", lambda: not _alive(pid), 30.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pod_logs_are_readable_through_the_api(k8s_cluster: Cluster, namespace: str) -> None:
    script = (
        "import sys, time\n"
        "for i in range(1, 6): print(f'line {i}')\n"
        "print('KUBESLIM_PROGRESS 50', flush=True)\n"
        "time.sleep(600)\n"
    )
    k8s_cluster.apply(job("talker", script), namespace=namespace)

    def pod_name() -> str:
        pods = job_pods(k8s_cluster, namespace, "talker")
        return str(pods[0].metadata.name) if pods else ""

    wait_for("the Pod", pod_name, TIMEOUT_S)
    name = pod_name()

    def progress_logged() -> bool:
        try:
            return "KUBESLIM_PROGRESS 50" in k8s_cluster.pod_log(namespace, name)
        except ApiException:
            return False  # not started yet

    # The container is still running: logs are readable before it ends.
    wait_for("the progress line in the log", progress_logged, TIMEOUT_S)
    assert k8s_cluster.pod_log(namespace, name, container="main") == (
        "line 1\nline 2\nline 3\nline 4\nline 5\nKUBESLIM_PROGRESS 50\n"
    )
    last_two = k8s_cluster.pod_log(namespace, name, tail_lines=2)
    assert last_two == "line 5\nKUBESLIM_PROGRESS 50\n"
    stamped = k8s_cluster.pod_log(namespace, name, tail_lines=1, timestamps=True)
    assert stamped.endswith("Z KUBESLIM_PROGRESS 50\n")
    # kubectl takes the same path through the API server.
    assert k8s_cluster.kubectl("logs", "-n", namespace, name, "--tail=1").stdout == (
        "KUBESLIM_PROGRESS 50\n"
    )


def test_pod_env_volumes_and_working_dir(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds"},
                "stringData": {"key": "s3cret"},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"MODE": "fast"},
            },
        ],
        namespace=namespace,
    )
    script = (
        "import os\n"
        "print(os.environ['SECRET'], os.environ['CFG_MODE'], os.environ['POD'], os.environ['NS'])\n"
        "print(os.path.samefile(os.getcwd(), os.environ['WORK']))\n"
        "open('/work/note', 'w').write('kept')\n"
        "print(open(os.environ['WORK'] + '/note').read())\n"
    )
    env = [
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "WORK", "value": "/work"},
    ]
    container = {
        "env": env,
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "workingDir": "/work",
        "volumeMounts": [{"name": "scratch", "mountPath": "/work"}],
    }
    k8s_cluster.apply(
        job("env", script, container=container, volumes=[{"name": "scratch", "emptyDir": {}}]),
        namespace=namespace,
    )
    assert wait_job(k8s_cluster, namespace, "env") == "Complete"
    (pod,) = job_pods(k8s_cluster, namespace, "env")
    text = k8s_cluster.pod_log(namespace, pod.metadata.name)
    assert text == f"s3cret fast {pod.metadata.name} {namespace}\nTrue\nkept\n"


def test_service_account_kubeconfig_is_limited_by_rbac(
    k8s_cluster: Cluster, namespace: str
) -> None:
    path = k8s_cluster.service_account_kubeconfig(namespace, "reader")
    as_reader = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))

    with pytest.raises(ApiException) as err:
        as_reader.list_namespaced_config_map(namespace)
    assert err.value.status == 403

    list_config_maps = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    k8s_cluster.apply(
        grant("read-config-maps", list_config_maps, "reader", namespace), namespace=namespace
    )

    def allowed() -> bool:
        try:
            as_reader.list_namespaced_config_map(namespace)
            return True
        except ApiException as e:
            if e.status != 403:
                raise
            return False

    wait_for("the RoleBinding to take effect", allowed, 30.0)
    # The Role is namespaced: other namespaces and other verbs stay forbidden.
    for call in (
        lambda: as_reader.list_namespaced_config_map("kube-system"),
        lambda: as_reader.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}}),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403


LIST_CONFIG_MAPS = """
import os, signal, sys, time
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_kube_config()
try:
    client.CoreV1Api().list_namespaced_config_map(sys.argv[1])
    print("allowed", flush=True)
except ApiException as err:
    print("status", err.status, flush=True)
if len(sys.argv) > 2:
    signal.signal(signal.SIGTERM, lambda *_: (print("stopping", flush=True), sys.exit(0)))
    time.sleep(600)
"""


def test_start_process_runs_as_the_given_identity(k8s_cluster: Cluster, namespace: str) -> None:
    identity = k8s_cluster.service_account_kubeconfig(namespace, "nobody")
    proc = k8s_cluster.start_process(
        [sys.executable, "-c", LIST_CONFIG_MAPS, namespace, "wait"], kubeconfig=identity
    )
    proc.wait_for_output("status 403", timeout=60)
    assert proc.stop() == 0
    assert proc.output().endswith("stopping\n")


def test_pod_reaches_the_api_as_its_service_account(k8s_cluster: Cluster, namespace: str) -> None:
    if not k8s_cluster.is_rig:
        pytest.skip("the image would need the kubernetes package and in-cluster config")
    list_config_maps = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}}
    k8s_cluster.apply(
        [account, *grant("list-config-maps", list_config_maps, "lister", namespace)],
        namespace=namespace,
    )
    container = {"args": [namespace]}
    k8s_cluster.apply(
        [
            job("as-lister", LIST_CONFIG_MAPS, container=container, serviceAccountName="lister"),
            job("as-default", LIST_CONFIG_MAPS, container=container),
        ],
        namespace=namespace,
    )
    for name, expected in (("as-lister", "allowed\n"), ("as-default", "status 403\n")):
        assert wait_job(k8s_cluster, namespace, name) == "Complete"
        (pod,) = job_pods(k8s_cluster, namespace, name)
        assert k8s_cluster.pod_log(namespace, pod.metadata.name) == expected


def test_on_failure_restarts_the_container_in_place(k8s_cluster: Cluster, namespace: str) -> None:
    # The first run fails, the second succeeds: the emptyDir survives restarts.
    script = (
        "import os, sys\n"
        "first = not os.path.exists('/state/ran')\n"
        "open('/state/ran', 'w').close()\n"
        "print('first' if first else 'second')\n"
        "sys.exit(3 if first else 0)\n"
    )
    container = {"volumeMounts": [{"name": "state", "mountPath": "/state"}]}
    spec = job(
        "flaky",
        script,
        backoff_limit=2,
        container=container,
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    k8s_cluster.apply(spec, namespace=namespace)

    assert wait_job(k8s_cluster, namespace, "flaky") == "Complete"
    (pod,) = job_pods(k8s_cluster, namespace, "flaky")
    status = pod.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 3
    assert status.state.terminated.exit_code == 0
    assert k8s_cluster.pod_log(namespace, pod.metadata.name) == "second\n"
    assert k8s_cluster.pod_log(namespace, pod.metadata.name, previous=True) == "first\n"


def test_init_containers_sidecars_and_a_late_secret(k8s_cluster: Cluster, namespace: str) -> None:
    mount = [{"name": "shared", "mountPath": "/shared"}]
    init: dict[str, Any] = {"name": "init", "command": ["sh", "-c", "echo from-init > /shared/f"]}
    side: dict[str, Any] = {"name": "side", "restartPolicy": "Always", "command": ["sleep", "600"]}
    main: dict[str, Any] = {
        "name": "main",
        "command": ["sh", "-c", "cat /shared/f; echo $(GREETING) $KEY"],
    }
    main["env"] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "v"}}},
    ]
    init["volumeMounts"] = main["volumeMounts"] = mount
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "staged"},
        "spec": {
            "restartPolicy": "Never",
            # `sleep` as the sidecar's PID 1 ignores SIGTERM: stopping it once the main
            # container ends would take the default 30 s.
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{**init, "image": IMAGE}, {**side, "image": IMAGE}],
            "containers": [{**main, "image": IMAGE}],
            "volumes": [{"name": "shared", "emptyDir": {}}],
        },
    }
    k8s_cluster.apply(pod, namespace=namespace)
    core = client.CoreV1Api(k8s_cluster.api_client())

    def waiting_reason() -> str:
        statuses = core.read_namespaced_pod("staged", namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return str(waiting.reason) if waiting else ""

    # Like a kubelet, it waits for the missing Secret instead of failing the Pod.
    config_error = "CreateContainerConfigError"
    wait_for(config_error, lambda: waiting_reason() == config_error, TIMEOUT_S)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}}
    k8s_cluster.apply({**secret, "stringData": {"v": "sekrit"}}, namespace=namespace)

    def phase() -> str:
        return str(core.read_namespaced_pod("staged", namespace).status.phase)

    wait_for("the Pod to succeed", lambda: phase() == "Succeeded", TIMEOUT_S)
    assert k8s_cluster.pod_log(namespace, "staged") == "from-init\nhello sekrit\n"
    status = core.read_namespaced_pod("staged", namespace).status
    init_status, side_status = status.init_container_statuses
    assert init_status.state.terminated.exit_code == 0
    assert side_status.state.terminated is not None  # stopped once the main container ended


def test_kopf_in_the_test_process_acts_as_a_service_account(
    k8s_cluster: Cluster, namespace: str, widget_crd: None
) -> None:
    widgets = ["rig.kubeslim.dev"]
    rules = [
        {"apiGroups": widgets, "resources": ["widgets"], "verbs": ["list", "watch", "patch"]},
        {"apiGroups": widgets, "resources": ["widgets/status"], "verbs": ["patch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]
    # kopf also watches CRDs and namespaces cluster-wide; without these it
    # retries for about 50 s and then carries on with a warning.
    cluster_rules = [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"]},
        {"apiGroups": [""], "resources": ["namespaces"]},
    ]
    for rule in cluster_rules:
        rule["verbs"] = ["list", "watch"]
    cluster_role = f"widget-operator-{namespace}"
    k8s_cluster.apply(
        grant("widgets", rules, "widget-operator", namespace)
        + grant(cluster_role, cluster_rules, "widget-operator", namespace, cluster=True),
        namespace=namespace,
    )
    identity = k8s_cluster.service_account_kubeconfig(namespace, "widget-operator")
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return k8s_cluster.kopf_connection(identity)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="rig.kubeslim.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="rig.kubeslim.dev"
        )
        settings.persistence.finalizer = "rig.kubeslim.dev/finalizer"

    @kopf.on.create("rig.kubeslim.dev", "v1", "widgets", registry=registry)
    def created(spec: Any, patch: Any, **_: Any) -> None:
        patch.status["seen"] = spec["size"]

    stop = threading.Event()
    ready = threading.Event()
    operator = threading.Thread(
        target=lambda: asyncio.run(
            kopf.operator(
                registry=registry,
                namespaces=[namespace],
                standalone=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        ),
        daemon=True,
    )
    operator.start()
    try:
        assert ready.wait(60)
        widget = {"apiVersion": "rig.kubeslim.dev/v1", "kind": "Widget", "metadata": {"name": "w"}}
        k8s_cluster.apply({**widget, "spec": {"size": 4}}, namespace=namespace)
        custom = client.CustomObjectsApi(k8s_cluster.api_client())

        def seen() -> Any:
            obj = custom.get_namespaced_custom_object(
                "rig.kubeslim.dev", "v1", namespace, "widgets", "w"
            )
            return obj.get("status", {}).get("seen")

        wait_for("the operator to write status.seen", lambda: seen() == 4, TIMEOUT_S)
    finally:
        stop.set()
        operator.join(30)
        rbac = client.RbacAuthorizationV1Api(k8s_cluster.api_client())
        rbac.delete_cluster_role_binding(cluster_role)
        rbac.delete_cluster_role(cluster_role)
    assert not operator.is_alive()


def test_pod_whose_node_selector_matches_no_node_stays_pending(
    k8s_cluster: Cluster, namespace: str
) -> None:
    spec = job("nowhere", "print('never')", nodeSelector={"kubeslim.dev/no-such-label": "x"})
    k8s_cluster.apply(spec, namespace=namespace)

    def scheduled_condition() -> Any:
        pods = job_pods(k8s_cluster, namespace, "nowhere")
        conditions = (pods[0].status.conditions or []) if pods else []
        return next((c for c in conditions if c.type == "PodScheduled"), None)

    wait_for("the PodScheduled condition", scheduled_condition, TIMEOUT_S)
    condition = scheduled_condition()
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    (pod,) = job_pods(k8s_cluster, namespace, "nowhere")
    assert pod.spec.node_name is None and pod.status.phase == "Pending"
