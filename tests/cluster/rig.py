"""The test control plane: etcd, kube-apiserver, kube-controller-manager and
a node, as local processes.

The node is the fake kubelet (Pods run as local processes of the checkout,
images ignored; everything on loopback ports) or, with `node="real"`, a
real node (tests/cluster/node.py: containerd, kubelet, kube-proxy and
kube-scheduler; the API server then listens on the node's bridge address).

    rig = Rig(binaries_dir(), Path("/tmp/rig"))
    rig.start()          # about 10 s once the binaries are built
    ...                  # rig.kubeconfig is an admin kubeconfig
    rig.stop()

`python -m tests.cluster.rig [real]` starts one by hand and prints its kubeconfig.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tests.cluster.certs import SERVICE_CLUSTER_IP_RANGE, KeyPair, Pki, make_pki

if TYPE_CHECKING:
    from tests.cluster.node import RealNode

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = Path(__file__).resolve().parent / "k8s" / "build.sh"
NODE_NAME = "kubeslim-node"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The controllers the tests rely on; the node lifecycle controller is left out
# because the fake kubelet sends no heartbeats, and the scheduler is absent
# because the fake kubelet binds Pods itself.
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    # Aggregated ClusterRoles (admin, edit, view and chart roles that extend them).
    "clusterrole-aggregation-controller",
)
# A real node registers with the not-ready taint, which the node lifecycle
# controller lifts once the node is Ready; Services are routed by kube-proxy
# from EndpointSlices; orphaned Pods are collected.
REAL_NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "endpointslice-controller",
    "pod-garbage-collector-controller",
    # Cluster.pvc_dir binds claims to hostPath volumes.
    "persistentvolume-binder-controller",
)
NODE_KINDS = ("fake", "real")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


class RigError(RuntimeError):
    """The control plane could not start; the message ends with the log tail."""


def binaries_dir() -> Path:
    """Where the Kubernetes binaries are: $KUBESLIM_K8S_BIN, or what build.sh prints."""
    return built_dir(BUILD_SCRIPT, "KUBESLIM_K8S_BIN")


def built_dir(script: Path, env_var: str) -> Path:
    """$`env_var` if set, else the directory the build script prints; the
    script returns at once when its cache is warm and builds otherwise."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RigError(f"{script} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get `sig` when the test process dies.

    Only used from the main thread: Linux ties the signal to the thread that
    forked, and the main thread lives as long as the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sig)

    return preexec


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        death_signal: int | None = signal.SIGTERM,
    ) -> None:
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(death_signal) if death_signal else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        """Block until `text` appears in the output; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.returncode is not None:
                code = self.returncode
                raise RigError(f"{self.args[0]} exited {code} before {text!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.args[0]} did not print {text!r} in {timeout:g} s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the process group, SIGKILL it after `timeout`; the exit code."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %g s; killing it", self.args[0], timeout)
        # Whatever is left in the group (children of the process) goes too.
        self._signal(signal.SIGKILL)
        return self.popen.wait()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A self-contained kubeconfig (certificates embedded)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "rig", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "rig", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Rig:
    """Starts and stops the whole control plane under one work directory."""

    def __init__(
        self, bin_dir: Path, work_dir: Path, node_name: str = NODE_NAME, node: str = "fake"
    ) -> None:
        if node not in NODE_KINDS:
            raise ValueError(f"node: expected one of {', '.join(NODE_KINDS)}, got {node!r}")
        self.bin = bin_dir
        self.dir = work_dir
        self.node_name = node_name
        self.node_kind = node
        self.node: RealNode | None = None
        self.host = "127.0.0.1"
        self.processes: dict[str, ManagedProcess] = {}
        self.kubeconfig = work_dir / "admin.kubeconfig"
        self.api_port = 0
        self.ready_s = 0.0
        self.pki: Pki | None = None

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    def start(self) -> None:
        """Start everything and wait until Pods can run; raises RigError."""
        begin = time.monotonic()
        atexit.register(self.stop)
        try:
            if self.node_kind == "real":
                from tests.cluster.node import NODE_IP

                self.host = NODE_IP
            real = (self.host,) if self.node_kind == "real" else ()
            self.pki = make_pki(self.dir / "pki", node_ips=real)
            self.api_port = free_port()
            if self.node_kind == "real":
                self._prepare_real_node()
            write_kubeconfig(
                self.kubeconfig, self.server, self.pki.ca.cert, self.pki.admin, "admin"
            )
            self._start_etcd()
            self._start_apiserver()
            if self.node is not None:
                self.node.start_runtime()
            self._wait_api("/readyz")
            self._start_controller_manager()
            self._start_kubelet()
            self._wait_usable()
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - begin
        log.info("rig ready in %.1f s at %s", self.ready_s, self.server)

    def stop(self) -> None:
        """Stop in reverse order; the kubelet kills the Pods' processes, or the
        real node drains its Pods while the API server still runs."""
        node, self.node = self.node, None
        try:
            if node is not None:
                node.stop(self._delete_node_pods)
            for name in reversed(list(self.processes)):
                self.processes.pop(name).stop()
        finally:
            if node is not None:
                node.release()
        atexit.unregister(self.stop)

    # --- components ----------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        death_signal: int = signal.SIGKILL,
    ) -> None:
        """Start a component. Orphaned, the Go components are killed outright
        (kube-apiserver's graceful shutdown hangs once etcd is gone); the
        kubelet gets SIGTERM, so that it kills its Pods first."""
        log_path = self.dir / "logs" / f"{name}.log"
        self.processes[name] = ManagedProcess(args, log_path, env, cwd, death_signal)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=rig",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=rig={peer_url}",
                # Test data need not survive a power cut.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.pki
        assert pki is not None
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.dir / 'apiserver'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                # As on hardened clusters: blockOwnerDeletion needs update on the owner's
                # finalizers, so the chart's RBAC test can show that rule is needed.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account.cert}",
                f"--service-account-signing-key-file={pki.service_account.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self.pki
        assert pki is not None
        kubeconfig = write_kubeconfig(
            self.dir / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.controller_manager,
            "system:kube-controller-manager",
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                # No HTTPS endpoint: nothing reads it, and a port picked ahead
                # of time can be taken by someone else's connection meanwhile.
                "--secure-port=0",
                f"--cert-dir={self.dir / 'controller-manager'}",
                f"--controllers={','.join(self._controllers())}",
                # How soon a Ready node loses its not-ready taint (default 5 s).
                "--node-monitor-period=1s",
                # Each controller acts as its own ServiceAccount, as in kubeadm clusters.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account.key}",
                f"--root-ca-file={pki.ca.cert}",
                "--leader-elect=false",
            ],
        )

    def _prepare_real_node(self) -> None:
        from tests.cluster.node import RealNode, containerd_dir

        assert self.pki is not None
        self.node = RealNode(
            self.bin, containerd_dir(), self.dir / "logs", self.pki, self.server, self.node_name
        )
        self.node.create_link()

    def _controllers(self) -> tuple[str, ...]:
        return CONTROLLERS + (REAL_NODE_CONTROLLERS if self.node_kind == "real" else ())

    def _start_kubelet(self) -> None:
        if self.node is not None:
            self.node.start()
            return
        pki = self.pki
        assert pki is not None
        config = {
            "node_name": self.node_name,
            "kubeconfig": str(self.kubeconfig),
            "state_dir": str(self.dir / "kubelet"),
            "port": free_port(),
            "serving_cert": str(pki.kubelet_serving.cert),
            "serving_key": str(pki.kubelet_serving.key),
            "client_ca": str(pki.ca.cert),
            # The test environment's bin directory, so that `kubeslim` resolves.
            "path_prepend": [str(Path(sys.prefix) / "bin")],
        }
        path = self.dir / "kubelet.json"
        path.write_text(json.dumps(config, indent=2))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self._spawn(
            "kubelet",
            [sys.executable, "-m", "tests.cluster.kubelet", str(path)],
            env=env,
            cwd=REPO_ROOT,
            death_signal=signal.SIGTERM,
        )

    # --- readiness -----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.pki
        assert pki is not None
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        return context

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self._ssl_context(), timeout=5
            ) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.returncode is not None:
                raise RigError(
                    f"{name} exited with {proc.returncode}; its log ends:\n{proc.tail()}"
                )
        if self.node is not None:
            self.node.check_alive()

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}:\n{p.tail(1500)}" for n, p in self.processes.items())
                if self.node is not None:
                    tails += "\n" + self.node.tails()
                raise RigError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.1)

    def _request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self._ssl_context(), timeout=10) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def _node_pods(self) -> list[tuple[str, str]]:
        selector = urllib.parse.quote(f"spec.nodeName={self.node_name}")
        code, body = self._get(f"/api/v1/pods?fieldSelector={selector}")
        if code != 200:
            raise RigError(f"listing the node's Pods failed with HTTP {code}")
        items = json.loads(body)["items"]
        return [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items]

    def _delete_node_pods(self, timeout: float = 60.0) -> None:
        """Delete every Pod bound to the node and wait until the kubelet has
        stopped them and released their volumes (it deletes the Pod object last)."""
        deadline = time.monotonic() + timeout
        while pods := self._node_pods():
            for namespace, name in pods:
                self._request(
                    "DELETE",
                    f"/api/v1/namespaces/{namespace}/pods/{name}",
                    {"gracePeriodSeconds": 1},
                )
            if time.monotonic() > deadline:
                raise RigError(f"{len(pods)} Pods still on the node after {timeout:g} s")
            time.sleep(0.5)

    def _wait_api(self, path: str) -> None:
        self._wait(f"GET {path}", lambda: self._get(path)[0] == 200)

    def _wait_usable(self) -> None:
        """Pods can run once the node is Ready and the default namespace has its
        ServiceAccount and root CA (both made by controllers)."""

        def ready() -> bool:
            code, body = self._get(f"/api/v1/nodes/{self.node_name}")
            if code != 200:
                return False
            node = json.loads(body)
            conditions = node.get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
            # A real node's not-ready taint (set by admission) keeps the
            # scheduler away until the node lifecycle controller lifts it.
            if self.node is not None and node.get("spec", {}).get("taints"):
                return False
            return (
                self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
                and self._get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")[0] == 200
                and (self.node is None or self.node.service_routes_ready())
            )

        self._wait("the node, the default ServiceAccount and kube-root-ca.crt", ready)


def measure(node: str, cycles: int) -> None:
    """Start and stop a rig `cycles` times in a row; print each ready and stop time."""
    import tempfile

    bin_dir = binaries_dir()
    for _ in range(cycles):
        rig = Rig(bin_dir, Path(tempfile.mkdtemp(prefix="kubeslim-rig-")), node=node)
        rig.start()
        begin = time.monotonic()
        rig.stop()
        print(f"ready in {rig.ready_s:.1f} s, stopped in {time.monotonic() - begin:.1f} s")


def main() -> None:
    """Start a rig by hand: prints the kubeconfig path, stops on Ctrl-C.

    `python -m tests.cluster.rig [fake|real] [--cycles N]`: with --cycles,
    start and stop it N times and print the times instead.
    """
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:]
    node = args[0] if args and not args[0].startswith("-") else "fake"
    if "--cycles" in args:
        logging.getLogger().setLevel(logging.WARNING)
        measure(node, int(args[args.index("--cycles") + 1]))
        return
    work = Path(tempfile.mkdtemp(prefix="kubeslim-rig-"))
    rig = Rig(binaries_dir(), work, node=node)
    rig.start()
    print(f"ready in {rig.ready_s:.1f} s; export KUBECONFIG={rig.kubeconfig}", flush=True)
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        signal.sigwait(signals)
    finally:
        rig.stop()


if __name__ == "__main__":
    main()
