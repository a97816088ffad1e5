"""A real node for the test cluster: containerd, kubelet, kube-proxy and
kube-scheduler, running Pods in containers with runc and the CNI bridge.

The node lives on a bridge link it makes for itself (`kubeslim0`,
10.251.0.1/24): the kubelet, kube-proxy and the API server use that
address and Pods get theirs from the same subnet, so no traffic leaves the
machine. Everything it changes on the host is written down first
(tests/cluster/hoststate.py) and undone by `stop`, or by the next session
when this one was killed.

    node = RealNode(k8s_bin, containerd_bin, work_dir / "logs", pki, server, name)
    node.create_link()   # before the API server binds to NODE_IP
    node.start_runtime() # containerd and the pause image, meanwhile
    node.start()         # kubelet, kube-proxy, scheduler, once the API server answers
    ...
    node.stop()          # Pods gone, processes stopped, host as before
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.cluster import hoststate
from tests.cluster.certs import KeyPair, Pki, issue
from tests.cluster.node_images import ImageStore, pause_archive
from tests.cluster.rig import ManagedProcess, RigError, built_dir, free_port, write_kubeconfig

log = logging.getLogger(__name__)

NODE_IP = "10.251.0.1"
NODE_PREFIX = 24
POD_SUBNET = "10.251.0.0/24"
BRIDGE = "kubeslim0"
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
CONTAINERD_BUILD = Path(__file__).resolve().parent / "containerd" / "build.sh"
# The image store outlives the node (a cache, like the binaries): a warm
# start imports nothing.
STORE = Path(
    os.environ.get("KUBESLIM_NODE_STORE", Path.home() / ".cache" / "kubeslim" / "node-store")
)
# Tarballs of the images the node makes itself (pause, test base).
ARCHIVES = STORE / "archives"
# Where the node keeps its state (kubelet root, containerd state, runc, CNI
# leases, Pod logs, configs): a short fixed path, because the kubelet and
# containerd put Unix sockets there (at most 104 bytes; pytest's temporary
# paths are longer) and one real node runs per host (hoststate.host_lock).
# Removed when the node stops.
STATE_DIR = Path(os.environ.get("KUBESLIM_NODE_STATE", "/var/lib/kubeslim-node"))
START_TIMEOUT_S = 90.0


def containerd_dir() -> Path:
    """containerd's binaries: $KUBESLIM_CONTAINERD_BIN, or what build.sh prints."""
    return built_dir(CONTAINERD_BUILD, "KUBESLIM_CONTAINERD_BIN")


def missing_host_tools() -> list[str]:
    """What the host lacks for a real node (Debian: runc, containernetworking-plugins, iptables)."""
    needed = {
        "runc": RUNC.exists(),
        "containernetworking-plugins": (CNI_BIN_DIR / "bridge").exists(),
        "iptables": bool(shutil.which("iptables")),
        "iproute2": bool(shutil.which("ip")),
    }
    missing = [name for name, ok in needed.items() if not ok]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


class RealNode:
    """One node whose Pods run in containers; see the module docstring."""

    def __init__(
        self,
        k8s_bin: Path,
        containerd_bin: Path,
        log_dir: Path,
        pki: Pki,
        server: str,
        node_name: str,
    ) -> None:
        self.k8s_bin = k8s_bin
        self.containerd_bin = containerd_bin
        self.log_dir = log_dir
        self.dir = STATE_DIR
        self.pki = pki
        self.server = server
        self.node_name = node_name
        self.socket = STATE_DIR / "containerd.sock"
        self.processes: dict[str, ManagedProcess] = {}
        self.images = ImageStore(containerd_bin / "ctr", self.socket, STORE)
        self.pause_image = ""
        self._kubeconfigs: dict[str, Path] = {}
        self._lock: contextlib.ExitStack | None = None
        self._record: hoststate.HostRecord | None = None

    # --- lifecycle -----------------------------------------------------------------

    def create_link(self) -> None:
        """Take the host lock, undo a killed session's leftovers, write down
        the host's state and make the bridge the node's address lives on."""
        missing = missing_host_tools()
        if missing:
            raise RigError(
                f"a real node needs: {', '.join(missing)} (see `make system-deps`); "
                "--node=fake runs the cluster tests on the simulated node"
            )
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(hoststate.host_lock())
        for line in hoststate.undo_leftovers():
            log.warning("a previous test node left state behind: %s", line)
        self.dir.mkdir(parents=True)
        self._record = hoststate.HostRecord.before_start(self.dir, BRIDGE, self.socket)
        self._record.save()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{NODE_IP}/{NODE_PREFIX}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")

    def start_runtime(self) -> None:
        """Start containerd with the sandbox image in place; needs no API
        server, so the rig does it while the control plane starts."""
        self.pause_image, archive = pause_archive(self.containerd_bin / "pause", ARCHIVES)
        self._start_containerd()
        self.images.remove_containers()  # a killed session's Pods
        self.images.import_archive(archive, self.pause_image)
        self._kubeconfigs = self._identities()

    def start(self) -> None:
        """Start the kubelet, kube-proxy and the scheduler once the API server
        answers (the caller waits for the Node to be Ready). Raises RigError."""
        identities = self._kubeconfigs
        self._start_kubelet(identities["kubelet"])
        self._start_kube_proxy(identities["kube-proxy"])
        self._start_scheduler(identities["kube-scheduler"])

    def stop(self, delete_pods: Callable[[], None] | None = None) -> None:
        """Remove the Pods (through `delete_pods`, while the API server still
        runs) and stop the node's processes; `release` then restores the host."""
        try:
            if "kube-scheduler" in self.processes:
                self.processes.pop("kube-scheduler").stop()
            if delete_pods and "kubelet" in self.processes:
                try:
                    delete_pods()
                except Exception as err:  # the host is cleaned up below anyway
                    log.warning("could not drain the node's Pods: %s", err)
            for name in ("kubelet", "kube-proxy"):
                if name in self.processes:
                    self.processes.pop(name).stop()
            if "containerd" in self.processes:
                self.images.remove_containers()
                self.processes.pop("containerd").stop()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Leave the host as it was and let the next node start. Call it once
        the API server has stopped: it removes the link the server listens on
        (with the link gone first, its shutdown waits 10 s on its own lease)."""
        for proc in self.processes.values():
            proc.stop()
        self.processes.clear()
        if self._record is not None:
            for line in hoststate.undo(self._record):
                log.info("node teardown: %s", line)
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], capture_output=True)
            hoststate.HostRecord.forget()
            self._record = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- components ----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        """Orphaned, every part is killed outright; the next session's
        leftover sweep removes what their Pods left behind."""
        proc = ManagedProcess(args, self.log_dir / f"{name}.log", death_signal=signal.SIGKILL)
        self.processes[name] = proc
        if self._record is not None:
            self._record.pids.append(proc.pid)
            self._record.save()
        return proc

    def _identities(self) -> dict[str, Path]:
        """A client certificate and kubeconfig per component, so that the Node
        authorizer and the bootstrap RBAC roles apply as on a real cluster."""
        subjects = {
            "kubelet": (f"system:node:{self.node_name}", "system:nodes"),
            "kube-proxy": ("system:kube-proxy", None),
            "kube-scheduler": ("system:kube-scheduler", None),
        }
        paths = {}
        for name, (user, group) in subjects.items():
            pair: KeyPair = issue(self.pki.ca, f"node-{name}", user, organization=group)
            paths[name] = write_kubeconfig(
                self.dir / f"{name}.kubeconfig", self.server, self.pki.ca.cert, pair, user
            )
        return paths

    def _start_containerd(self) -> None:
        config = self.dir / "containerd.toml"
        config.write_text(self._containerd_config())
        # Every registry resolves to a closed loopback port: a missing image
        # fails at once (ErrImagePull naming 127.0.0.1:9) instead of a DNS
        # query and a pull from outside the machine.
        default = self.dir / "registries" / "_default"
        default.mkdir(parents=True, exist_ok=True)
        (default / "hosts.toml").write_text('server = "http://127.0.0.1:9"\n')
        cni = self.dir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-kubeslim.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        proc = self._spawn(
            "containerd", [str(self.containerd_bin / "containerd"), f"--config={config}"]
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._containerd_answers():
            if proc.returncode is not None:
                raise RigError(f"containerd exited {proc.returncode}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RigError(f"containerd did not answer in time:\n{proc.tail()}")
            time.sleep(0.1)

    def _containerd_answers(self) -> bool:
        if not self.socket.exists():
            return False
        result = subprocess.run(
            [str(self.containerd_bin / "ctr"), "--address", str(self.socket), "version"],
            capture_output=True,
        )
        return result.returncode == 0

    def _containerd_config(self) -> str:
        state = self.dir / "containerd-state"
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        return f"""version = 3
root = "{STORE / "containerd"}"
state = "{state}"
# NRI would open a socket under /var/run; tracing is not needed.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{STORE / "opt"}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{self.pause_image}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{self.dir / "registries"}"
[{runtime}]
  # root here cannot raise oom_score_adj (no CAP_SYS_RESOURCE): without
  # this every sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [{runtime}.containerd]
    default_runtime_name = "runc"
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{self.dir / "runc"}"
        SystemdCgroup = false
  [{runtime}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{self.dir / "cni"}"
    # containerd brings up the Pod's lo itself instead of running a plugin.
    use_internal_loopback = true
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""

    def _cni_config(self) -> dict[str, object]:
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.251.0.10", "gateway": NODE_IP}]],
            "dataDir": str(self.dir / "cni-ipam"),
        }
        bridge = {
            "type": "bridge",
            "bridge": BRIDGE,
            # The bridge's address is the Pods' default route: Service IPs
            # (10.0.0.0/24) reach kube-proxy's rules on the node through it.
            "isGateway": True,
            "isDefaultGateway": True,
            # No NAT: Pods talk only to the node's address and each other.
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": ipam,
        }
        return {"cniVersion": "1.0.0", "name": hoststate.CNI_NETWORK, "plugins": [bridge]}

    def _start_kubelet(self, kubeconfig: Path) -> None:
        root = self.dir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = self.dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config()))
        self._spawn(
            "kubelet",
            [
                str(self.k8s_bin / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={self.node_name}",
                # Keep a restarted container's previous instance once the last
                # one has ended too, for `logs --previous` (the default keeps one
                # dead instance per container and removes the older at once).
                "--maximum-dead-containers-per-container=2",
                "--v=1",
            ],
        )

    def _kubelet_config(self) -> dict[str, object]:
        low = "1%"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # These VMs have cgroups v1 and no systemd-managed cgroups.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzPort": 0,
            "tlsCertFile": str(self.pki.kubelet_serving.cert),
            "tlsPrivateKeyFile": str(self.pki.kubelet_serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.pki.ca.cert)},
            },
            # Only the API server's kubelet-client certificate gets through
            # the x509 check above, and it is system:masters.
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.dir / "pod-logs"),
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # Images are imported, never pulled: never collect them, and evict
            # only when the disk is really full.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": low,
                "nodefs.inodesFree": low,
                "imagefs.available": low,
                "imagefs.inodesFree": low,
            },
            "protectKernelDefaults": False,  # the sysctls it sets are restored at stop
            "shutdownGracePeriod": "0s",
        }

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.node_name,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_SUBNET,
            # No health or metrics endpoints: nothing reads them.
            "healthzBindAddress": "",
            "metricsBindAddress": "",
            # Leave the host's conntrack settings and route_localnet alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(self.k8s_bin / "kube-proxy"), f"--config={path}", "--v=1"])

    def _start_scheduler(self, kubeconfig: Path) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(self.k8s_bin / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                # No HTTPS endpoint: nothing reads it, and a port picked ahead
                # of time can be taken by someone else's connection meanwhile.
                "--secure-port=0",
                "--leader-elect=false",
            ],
        )

    # --- readiness -----------------------------------------------------------------

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.returncode is not None:
                raise RigError(
                    f"{name} exited with {proc.returncode}; its log ends:\n{proc.tail()}"
                )

    def service_routes_ready(self) -> bool:
        """kube-proxy has written the `kubernetes` Service's rules."""
        result = subprocess.run(
            ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=False
        )
        return "default/kubernetes:https" in result.stdout

    def tails(self) -> str:
        return "\n".join(f"--- {n}:\n{p.tail(1500)}" for n, p in self.processes.items())


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RigError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
