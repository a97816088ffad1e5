"""What the `k8s_cluster` fixture yields: a cluster and helpers to use it.

The same object wraps the rig the tests start and a real cluster given by
`--kubeconfig`, so tests never need to know which one they run against.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tests.cluster.rig import ManagedProcess, Rig

if TYPE_CHECKING:
    from tests.cluster.node import RealNode

Obj = dict[str, Any]
Manifests = str | Path | Obj | Iterable[Obj]

FIELD_MANAGER = "kubeslim-tests"
WAIT_TIMEOUT_S = 60.0
# Apply order, as Helm does it: what others depend on goes first.
KIND_ORDER = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "ServiceAccount": 2,
    "ClusterRole": 2,
    "Role": 2,
    "ClusterRoleBinding": 3,
    "RoleBinding": 3,
    "ConfigMap": 4,
    "Secret": 4,
}


def load_manifests(manifests: Manifests) -> list[Obj]:
    """YAML text, a file or directory of YAML, one dict or dicts -> documents."""
    if isinstance(manifests, dict):
        docs: list[Any] = [manifests]
    elif isinstance(manifests, Path) or (
        isinstance(manifests, str) and "\n" not in manifests and Path(manifests).exists()
    ):
        path = Path(manifests)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        docs = [d for f in files for d in yaml.safe_load_all(f.read_text())]
    elif isinstance(manifests, str):
        docs = list(yaml.safe_load_all(manifests))
    else:
        docs = list(manifests)
    out: list[Obj] = []
    for doc in docs:
        if not doc:
            continue
        if doc.get("kind", "").endswith("List") and "items" in doc:
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


class Cluster:
    """A Kubernetes cluster the tests can use, with helpers.

    Attributes:
        kubeconfig: an admin kubeconfig (cluster-admin or system:masters).
        node_name: the node Pods run on (the rig's fake node, or a real node).
        rig: the control plane this session started, or None for --kubeconfig.
        node: the rig's real node (--node=real), or None.
    """

    def __init__(self, kubeconfig: Path, work_dir: Path, rig: Rig | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.work_dir = work_dir
        self.rig = rig
        self.processes: list[ManagedProcess] = []
        self._dynamic: DynamicClient | None = None
        self.node_name = rig.node_name if rig else self._first_node()
        self.node: RealNode | None = rig.node if rig else None
        self._test_image = ""

    @property
    def is_rig(self) -> bool:
        """True when Pods run on the rig's fake kubelet: as local processes of
        the checkout, images ignored, host paths shared with the tests."""
        return self.rig is not None and self.rig.node is None

    def test_image(self) -> str:
        """An image with Python for tests of the cluster itself: on the real
        node a small Debian image made here (imported on first use); elsewhere
        python:3.11-slim (the fake kubelet ignores it)."""
        if self.node is None:
            return "python:3.11-slim"
        if not self._test_image:
            from tests.cluster.node import ARCHIVES
            from tests.cluster.node_images import test_base_archive

            tag, archive = test_base_archive(ARCHIVES)
            self.node.images.import_archive(archive, tag)
            self._test_image = tag
        return self._test_image

    def import_image(self, archive: Path, tag: str) -> str:
        """Make a docker-archive's image runnable here (imported into the real
        node's containerd; the fake kubelet ignores images); returns `tag`."""
        if self.node is not None:
            self.node.images.import_archive(archive, tag)
        elif self.rig is None:
            raise RuntimeError(f"cannot import {archive} into an external cluster: push {tag}")
        return tag

    def api_client(self) -> client.ApiClient:
        """A new admin ApiClient for this cluster (not $KUBECONFIG)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def _first_node(self) -> str:
        nodes = client.CoreV1Api(self.api_client()).list_node().items
        return str(nodes[0].metadata.name) if nodes else ""

    # --- apply ---------------------------------------------------------------------

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            cache = self.work_dir / "discovery-cache.json"
            self._dynamic = DynamicClient(self.api_client(), cache_file=str(cache))
        return self._dynamic

    def apply(self, manifests: Manifests, namespace: str | None = None) -> list[Obj]:
        """Create or update objects by server-side apply; returns them as stored.

        Namespaced objects without a namespace go to `namespace` or "default".
        A CustomResourceDefinition is applied before its resources and waited
        for until Established; a new Namespace until its default ServiceAccount
        exists (Pods are refused before that).
        """
        docs = sorted(load_manifests(manifests), key=lambda d: KIND_ORDER.get(d.get("kind", ""), 5))
        applied = []
        for doc in docs:
            resource = self._resource(doc["apiVersion"], doc["kind"])
            ns = None
            if resource.namespaced:
                ns = doc.get("metadata", {}).get("namespace") or namespace or "default"
                doc = {**doc, "metadata": {**doc["metadata"], "namespace": ns}}
            result = self.dynamic.server_side_apply(
                resource, body=doc, namespace=ns, field_manager=FIELD_MANAGER, force_conflicts=True
            )
            applied.append(result.to_dict())
            if doc["kind"] == "CustomResourceDefinition":
                self.wait_crd_established(doc["metadata"]["name"])
            elif doc["kind"] == "Namespace":
                self._wait_default_service_account(doc["metadata"]["name"])
        return applied

    def _resource(self, api_version: str, kind: str) -> Any:
        """Look a kind up by discovery, refreshing once for a just-made CRD."""
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            self.dynamic.resources.invalidate_cache()
            return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def wait_crd_established(self, name: str, timeout: float = WAIT_TIMEOUT_S) -> None:
        api = client.ApiextensionsV1Api(self.api_client())

        def established() -> bool:
            crd = api.read_custom_resource_definition(name)
            conditions = crd.status.conditions or [] if crd.status else []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(f"CRD {name} Established", established, timeout)
        self.dynamic.resources.invalidate_cache()

    @contextlib.contextmanager
    def scratch_namespace(self, prefix: str) -> Iterator[str]:
        """A new namespace `prefix-xxxxxx` (ready for Pods), deleted afterwards."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        try:
            yield name
        finally:
            client.CoreV1Api(self.api_client()).delete_namespace(name)

    def _wait_default_service_account(self, namespace: str) -> None:
        core = client.CoreV1Api(self.api_client())

        def exists() -> bool:
            try:
                core.read_namespaced_service_account("default", namespace)
                return True
            except ApiException as err:
                if err.status == 404:
                    return False
                raise

        wait_for(f"ServiceAccount {namespace}/default", exists, WAIT_TIMEOUT_S)

    def pod_log(self, namespace: str, name: str, **params: Any) -> str:
        """A Pod's log as text (container=, tail_lines=, timestamps=, previous=...).

        kubernetes 36.0.x returns the repr of bytes ("b'...'") from
        read_namespaced_pod_log (kubernetes-client/python#2596), and parses a
        log that happens to be JSON; reading the raw body avoids both.
        """
        core = client.CoreV1Api(self.api_client())
        resp = core.read_namespaced_pod_log(name, namespace, _preload_content=False, **params)
        return str(resp.data.decode())

    # --- identities ----------------------------------------------------------------

    def service_account_kubeconfig(
        self, namespace: str, name: str, expiration_seconds: int = 24 * 3600
    ) -> Path:
        """A kubeconfig that acts as ServiceAccount namespace/name (created if
        missing), with a token from the TokenRequest API: RBAC applies for real."""
        core = client.CoreV1Api(self.api_client())
        try:
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        except ApiException as err:
            if err.status != 409:
                raise
        request = {"spec": {"audiences": [], "expirationSeconds": expiration_seconds}}
        resp = core.create_namespaced_service_account_token(
            name, namespace, request, _preload_content=False
        )
        token = json.loads(resp.data)["status"]["token"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": self._cluster_entry()}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": "cluster", "user": name, "namespace": namespace},
                }
            ],
            "current-context": name,
        }
        path = self.work_dir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        return path

    def kopf_connection(self, kubeconfig: Path | None = None) -> Any:
        """A kopf.ConnectionInfo for an operator run in the test process.

        Return it from an `@kopf.on.login()` handler: kopf's default login goes
        through the kubernetes client, which read $KUBECONFIG at import time.
        """
        import kopf

        doc = yaml.safe_load((kubeconfig or self.kubeconfig).read_text())
        context = _named(doc["contexts"], doc["current-context"])["context"]
        cluster = _named(doc["clusters"], context["cluster"])["cluster"]
        user = _named(doc["users"], context["user"])["user"]
        return kopf.ConnectionInfo(
            server=cluster["server"],
            ca_data=cluster.get("certificate-authority-data"),
            ca_path=cluster.get("certificate-authority"),
            insecure=cluster.get("insecure-skip-tls-verify"),
            token=user.get("token"),
            scheme="Bearer" if user.get("token") else None,
            certificate_data=user.get("client-certificate-data"),
            certificate_path=user.get("client-certificate"),
            private_key_data=user.get("client-key-data"),
            private_key_path=user.get("client-key"),
            default_namespace=context.get("namespace"),
        )

    def _cluster_entry(self) -> Obj:
        """The admin kubeconfig's current cluster, file paths made absolute."""
        doc = yaml.safe_load(self.kubeconfig.read_text())
        context_name = doc.get("current-context")
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        entry = dict(next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"]))
        if "certificate-authority" in entry:
            entry["certificate-authority"] = str(
                self.kubeconfig.parent / entry["certificate-authority"]
            )
        return entry

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        """The host directory behind a PersistentVolumeClaim that Pods mount:
        put input data here before a Pod mounts the claim. The fake kubelet
        mounts it for any claim of that name; on the real node the claim
        (created if missing) is bound to a hostPath PersistentVolume on it,
        writable by any user (stage images run as 10001)."""
        if self.rig is None:
            raise RuntimeError("pvc_dir needs the rig; a real cluster has real volumes")
        if self.is_rig:
            path = self.rig.dir / "kubelet" / "pvcs" / namespace / claim
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = self.rig.dir / "pvcs" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        self.apply(_host_volume(namespace, claim, path))
        return path

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl (the rig's build, else the one on PATH) as the admin."""
        binary = str(self.rig.bin / "kubectl") if self.rig else shutil.which("kubectl") or "kubectl"
        return subprocess.run(
            [binary, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    # --- processes -----------------------------------------------------------------

    def start_process(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        kubeconfig: Path | None = None,
        name: str | None = None,
    ) -> ManagedProcess:
        """Run a command (the operator) against this cluster as a subprocess.

        It sees $KUBECONFIG = `kubeconfig` (the admin one by default, or one
        from service_account_kubeconfig). `.stop()` sends SIGTERM to its
        process group and SIGKILL after a timeout; whatever is still running
        at the end of the session is stopped then.
        """
        full_env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig), **(env or {})}
        label = name or Path(args[0]).name
        log_path = self.work_dir / "processes" / f"{label}-{len(self.processes)}.log"
        proc = ManagedProcess(args, log_path, env=full_env)
        self.processes.append(proc)
        return proc

    def stop_processes(self) -> None:
        for proc in self.processes:
            proc.stop()


def _host_volume(namespace: str, claim: str, path: Path) -> list[Obj]:
    """A claim and a hostPath PersistentVolume bound to it ahead of time
    (no storage class: the rig has no provisioner)."""
    modes = ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"]
    name = f"{namespace}-{claim}"
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Ti"},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": name,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    return [volume, pvc]


def _named(items: list[Obj], name: str) -> Obj:
    return next(item for item in items if item["name"] == name)


def wait_for(
    what: str, condition: Any, timeout: float = WAIT_TIMEOUT_S, interval: float = 0.2
) -> None:
    """Poll `condition()` until it is true; TimeoutError naming `what` if not."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
