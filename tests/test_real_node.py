"""The real test node (`--node=real`, tests/cluster/node.py): Pods run in
containers under containerd and runc, and the kubelet enforces the Pod spec.

    pytest --node=real tests/test_real_node.py

The first two tests start and stop nodes of their own (in a subprocess, as
`python -m tests.cluster.rig real`), so they run before the session's node
exists: one stops its node with SIGTERM, the other kills it with SIGKILL
and leaves the cleanup to the next node, as when pytest itself is killed.
Both check that the host is left as it was.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.cluster import hoststate
from tests.cluster.cluster import Cluster, wait_for
from tests.cluster.node import ARCHIVES, STATE_DIR, containerd_dir
from tests.cluster.node_images import pause_archive

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120.0
NONROOT = 10001


@pytest.fixture(scope="module")
def cluster(k8s_cluster: Cluster) -> Cluster:
    assert k8s_cluster.node is not None
    return k8s_cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    with cluster.scratch_namespace("node") as name:
        yield name


def pod(name: str, image: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", script],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def finished(cluster: Cluster, namespace: str, name: str) -> Any:
    core = client.CoreV1Api(cluster.api_client())

    def done() -> bool:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_for(f"Pod {name} to finish", done, TIMEOUT_S)
    return core.read_namespaced_pod(name, namespace)


# --- teardown: these start their own node, before the session's ------------------------


class NodeProcess:
    """`python -m tests.cluster.rig real` in a subprocess of its own."""

    def __init__(self, work: Path) -> None:
        self.log = work / "rig.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(work)}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster.rig", "real"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        try:
            wait_for("the node to be ready", self._ready, 300.0, interval=0.5)
        except BaseException:
            self.kill()  # else it outlives the test and holds the machine's one node
            raise
        line = next(ln for ln in self.log.read_text().splitlines() if "KUBECONFIG=" in ln)
        self.kubeconfig = line.split("KUBECONFIG=", 1)[1].strip()

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return "KUBECONFIG=" in self.log.read_text()

    def run_pod_with_volumes(self) -> None:
        """A Pod with an emptyDir, a Secret and the projected token (mounts,
        a cgroup, a network namespace, log links) that keeps running."""
        api = config.new_client_from_config(config_file=self.kubeconfig)
        core = client.CoreV1Api(api)
        core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "data": {"k": "dg=="}})
        pause = {
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": pause_archive(containerd_dir() / "pause", ARCHIVES)[0],
                        "imagePullPolicy": "Never",
                        "volumeMounts": [
                            {"name": "scratch", "mountPath": "/scratch"},
                            {"name": "secret", "mountPath": "/secret"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "secret", "secret": {"secretName": "s"}},
                ],
            },
        }
        core.create_namespaced_pod("default", pause)

        def running() -> bool:
            return str(core.read_namespaced_pod("p", "default").status.phase) == "Running"

        wait_for("the Pod to run", running, TIMEOUT_S)

    def kill(self) -> None:
        """Whatever happened, leave no node running for the next test."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.own_node
def test_stopped_node_leaves_the_host_as_it_was(tmp_path: Path) -> None:
    before = hoststate.snapshot(STATE_DIR)
    node = NodeProcess(tmp_path)
    try:
        node.run_pod_with_volumes()
        assert hoststate.snapshot(STATE_DIR) != before  # the Pod changed the host
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(120) == 0, node.log.read_text()[-3000:]
    finally:
        node.kill()
    assert hoststate.snapshot(STATE_DIR) == before
    assert hoststate.HostRecord.load() is None


@pytest.mark.own_node
def test_killed_node_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    before = hoststate.snapshot(STATE_DIR)
    node = NodeProcess(tmp_path)
    try:
        node.run_pod_with_volumes()
    finally:
        node.kill()  # as when pytest is killed: no teardown at all
    assert hoststate.snapshot(STATE_DIR) != before
    # What the next session's node does before it starts.
    with hoststate.host_lock(timeout=30):
        removed = hoststate.undo_leftovers()
    assert removed, "the killed node left nothing to remove?"
    assert hoststate.snapshot(STATE_DIR) == before


# --- the session's node -----------------------------------------------------------------


def test_node_runs_containers_with_containerd(cluster: Cluster) -> None:
    node = client.CoreV1Api(cluster.api_client()).read_node(cluster.node_name)
    assert node.status.node_info.container_runtime_version == "containerd://2.4.2"
    assert node.status.node_info.kubelet_version == "v1.36.3"
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == "10.251.0.1"  # the node's own bridge, not the host's NIC


def test_pod_runs_to_succeeded_with_logs_and_termination_message(
    cluster: Cluster, namespace: str
) -> None:
    script = (
        "import platform\n"
        "print('hello from', platform.python_version())\n"
        "open('/dev/termination-log', 'w').write('result: ok')\n"
    )
    cluster.apply(pod("ok", cluster.test_image(), script), namespace=namespace)

    done = finished(cluster, namespace, "ok")
    assert done.status.phase == "Succeeded"
    terminated = done.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (
        0,
        "Completed",
        "result: ok",
    )
    assert cluster.pod_log(namespace, "ok").startswith("hello from 3.11")
    # The container's own filesystem: the image's Debian, not this machine.
    assert done.status.container_statuses[0].image_id.startswith("sha256:")


RESTRICTED_CHECK = """
import json, os
facts = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
try:
    open("/etc/written", "w")
    facts["root_fs"] = "writable"
except OSError as err:
    facts["root_fs"] = err.strerror
with open("/scratch/note", "w") as f:
    f.write("kept")
facts["scratch"] = open("/scratch/note").read()
facts["scratch_gid"] = os.stat("/scratch").st_gid
status = open("/proc/self/status").read()
facts["no_new_privs"] = "NoNewPrivs:\\t1" in status
facts["cap_eff"] = next(l.split()[1] for l in status.splitlines() if l.startswith("CapEff"))
print(json.dumps(facts))
"""


def test_restricted_security_context_is_enforced(cluster: Cluster, namespace: str) -> None:
    """What the chart asks of every Pod, enforced by the kubelet and runc:
    a non-root user, a read-only root filesystem, no capabilities, an emptyDir
    for scratch space owned by the fsGroup."""
    restricted = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NONROOT,
            "runAsGroup": NONROOT,
            "fsGroup": NONROOT,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "container": {
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        },
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    image = cluster.test_image()
    cluster.apply(pod("restricted", image, RESTRICTED_CHECK, **restricted), namespace=namespace)

    done = finished(cluster, namespace, "restricted")
    assert done.status.phase == "Succeeded", cluster.pod_log(namespace, "restricted")
    facts = json.loads(cluster.pod_log(namespace, "restricted"))
    assert (facts["uid"], facts["gid"]) == (NONROOT, NONROOT)
    assert NONROOT in facts["groups"]
    assert facts["root_fs"] == "Read-only file system"
    assert (facts["scratch"], facts["scratch_gid"]) == ("kept", NONROOT)
    assert facts["no_new_privs"] is True
    assert int(facts["cap_eff"], 16) == 0


def test_run_as_non_root_refuses_an_image_that_runs_as_root(
    cluster: Cluster, namespace: str
) -> None:
    spec = {"securityContext": {"runAsNonRoot": True}}
    cluster.apply(pod("as-root", cluster.test_image(), "print('ran')", **spec), namespace=namespace)
    core = client.CoreV1Api(cluster.api_client())

    def refused() -> str:
        statuses = core.read_namespaced_pod("as-root", namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return str(waiting.message) if waiting and waiting.message else ""

    wait_for("the kubelet to refuse the container", refused, TIMEOUT_S)
    assert "runAsNonRoot and image will run as root" in refused()


CALL_API = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request(f"https://{host}:{port}/version")
request.add_header("Authorization", "Bearer " + open(f"{sa}/token").read())
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print(host, json.load(response)["gitVersion"])
"""


def test_pod_reaches_the_api_server_through_the_kubernetes_service(
    cluster: Cluster, namespace: str
) -> None:
    """kube-proxy routes the `kubernetes` Service's cluster IP to the API
    server on the node's address; TLS verifies against the Pod's CA bundle."""
    cluster.apply(pod("caller", cluster.test_image(), CALL_API), namespace=namespace)

    done = finished(cluster, namespace, "caller")
    log = cluster.pod_log(namespace, "caller")
    assert done.status.phase == "Succeeded", log
    assert log == "10.0.0.1 v1.36.3\n"


def test_pvc_dir_is_shared_between_the_test_and_non_root_pods(
    cluster: Cluster, namespace: str
) -> None:
    """Cluster.pvc_dir on the real node: a claim bound to a hostPath volume
    that the test fills and a Pod running as 10001 reads and writes."""
    shared = cluster.pvc_dir(namespace, "data")
    (shared / "input.txt").write_text("from the test")
    script = "print(open('/data/input.txt').read()); open('/data/output.txt', 'w').write('pod')"
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": NONROOT},
        "container": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }
    cluster.apply(pod("reader", cluster.test_image(), script, **spec), namespace=namespace)

    assert finished(cluster, namespace, "reader").status.phase == "Succeeded"
    assert cluster.pod_log(namespace, "reader") == "from the test\n"
    assert (shared / "output.txt").read_text() == "pod"


def test_a_missing_image_fails_without_leaving_the_machine(
    cluster: Cluster, namespace: str
) -> None:
    """No registry is reachable: a pull goes to a closed loopback port and
    fails at once, instead of a DNS query for the registry."""
    manifest = pod("pulled", "ghcr.io/kubeslim/none:0", "")
    manifest["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    cluster.apply(manifest, namespace=namespace)
    core = client.CoreV1Api(cluster.api_client())

    def waiting() -> Any:
        statuses = core.read_namespaced_pod("pulled", namespace).status.container_statuses or []
        return statuses[0].state.waiting if statuses and statuses[0].state.waiting else None

    wait_for("the pull to fail", lambda: waiting() and waiting().message, TIMEOUT_S)
    assert waiting().reason in ("ErrImagePull", "ImagePullBackOff")
    assert "127.0.0.1:9" in waiting().message


def test_import_image_makes_a_docker_archive_runnable(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The path every image takes here: a docker-archive imported into the
    node's containerd, then run with imagePullPolicy Never. This one is the
    test image's layer plus one with a script. An older build (another tag of
    the same repository) leaves the store with the import, so the store that
    outlives nodes keeps one build of each image."""
    from tests.cluster.node_images import test_base_archive, write_docker_archive

    with tarfile.open(test_base_archive(ARCHIVES)[1]) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        tar.extract(manifest["Layers"][0], tmp_path, filter="tar")
    script = b"print('imported')\n"
    with tarfile.open(tmp_path / "top.tar", "w") as top:
        member = tarfile.TarInfo("hello.py")
        member.size = len(script)
        top.addfile(member, io.BytesIO(script))
    repository = f"localhost/kubeslim/imported-{secrets.token_hex(3)}"
    layers = [tmp_path / manifest["Layers"][0], tmp_path / "top.tar"]
    older = write_docker_archive(tmp_path / "older.tar", f"{repository}:older", layers, ["true"])
    cluster.import_image(older, f"{repository}:older")
    tag = f"{repository}:newer"
    archive = write_docker_archive(tmp_path / "image.tar", tag, layers, ["python", "/hello.py"])

    assert cluster.import_image(archive, tag) == tag
    assert cluster.node is not None
    assert f"{repository}:older" not in cluster.node.images.names()
    manifest_pod = pod("imported", tag, "")
    del manifest_pod["spec"]["containers"][0]["command"]
    cluster.apply(manifest_pod, namespace=namespace)
    try:
        assert finished(cluster, namespace, "imported").status.phase == "Succeeded"
        assert cluster.pod_log(namespace, "imported") == "imported\n"
    finally:
        client.CoreV1Api(cluster.api_client()).delete_namespaced_pod("imported", namespace)
        assert cluster.node is not None
        cluster.node.images.remove_image(tag)


def test_project_images_run_their_entry_point_restricted(
    cluster: Cluster, namespace: str, project_images: dict[str, str]
) -> None:
    """Each image built by tests/images/build.py, imported from its
    docker-archive, runs its entry point (`kubeslim --help`) as the image's
    non-root user with a read-only root filesystem (--node-images=KINDS)."""
    for kind, tag in project_images.items():
        container = {
            "name": "main",
            "image": tag,
            "imagePullPolicy": "Never",
            "args": ["--help"],
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
        spec = {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        }
        cluster.apply(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": kind}, "spec": spec},
            namespace=namespace,
        )
    for kind in project_images:
        done = finished(cluster, namespace, kind)
        log = cluster.pod_log(namespace, kind)
        assert done.status.phase == "Succeeded", f"{kind}: {log}"
        assert "usage: kubeslim" in log, f"{kind}: {log}"
