"""A fake kubelet: one Node whose Pods run as local processes.

No kube-scheduler runs in the rig: this kubelet binds every unscheduled Pod
(that names the default scheduler and whose nodeSelector matches) to its own
Node through the `pods/binding` subresource, as the scheduler would. Each
bound Pod gets a `PodRunner` (tests/cluster/pods.py) that runs its
containers as processes and writes the Pod's status; deleting the Pod kills
them. Container logs are served over HTTPS for `pods/log`.

Run as `python -m tests.cluster.kubelet CONFIG.json` (the rig does this);
SIGTERM stops it and every process it started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.cluster.logs import LogServer, LogSource
from tests.cluster.pods import NodeContext, Obj, PodRunner, now

log = logging.getLogger("kubelet")

# The GPU a Pod can request, so that GPU-requesting specs are accepted as on a
# real GPU node (nothing enforces requests without a scheduler).
GPU_RESOURCE = "nvidia.com/gpu"
WATCH_TIMEOUT_S = 30


@dataclass(frozen=True)
class KubeletConfig:
    """Everything the fake kubelet needs; the rig writes it as JSON."""

    node_name: str
    kubeconfig: str
    state_dir: str
    port: int
    serving_cert: str
    serving_key: str
    client_ca: str
    path_prepend: list[str]

    @classmethod
    def load(cls, path: Path) -> KubeletConfig:
        return cls(**json.loads(path.read_text()))


def _meminfo_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 8 * 1024**3


def node_capacity() -> dict[str, str]:
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": str(_meminfo_bytes()),
        "pods": "110",
        "ephemeral-storage": str(100 * 1024**3),
        GPU_RESOURCE: "1",
    }


def node_object(name: str, port: int) -> Obj:
    capacity = node_capacity()
    stamp = now()
    conditions = [
        ("Ready", "True", "KubeletReady", "fake kubelet is posting ready status"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubeslim.dev/fake-kubelet": "true",
            },
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": m,
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for t, s, r, m in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "kubeslim fake kubelet",
                "containerRuntimeVersion": "fake://1",
                "kubeletVersion": "v0.0.0-fake",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


class FakeKubelet:
    """Registers the Node, binds and runs Pods, serves their logs."""

    def __init__(self, cfg: KubeletConfig) -> None:
        self.cfg = cfg
        api = config.new_client_from_config(config_file=cfg.kubeconfig)
        api.configuration.connection_pool_maxsize = 64
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 64
        self.core = client.CoreV1Api(api)
        kubeconfig = yaml.safe_load(Path(cfg.kubeconfig).read_text())
        cluster = kubeconfig["clusters"][0]["cluster"]
        self.node = NodeContext(
            node_name=cfg.node_name,
            core=self.core,
            state_dir=Path(cfg.state_dir),
            path_prepend=cfg.path_prepend,
            api_server=cluster["server"],
            api_ca_data=cluster["certificate-authority-data"],
            node_capacity=node_capacity(),
        )
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = LogServer(
            cfg.port,
            Path(cfg.serving_cert),
            Path(cfg.serving_key),
            Path(cfg.client_ca),
            self.resolve_log,
        )

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self.server.start()
        self.register_node()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.kill_all()
        self.server.stop()

    def register_node(self) -> None:
        body = node_object(self.cfg.node_name, self.server.port)
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as err:
            if err.status != 409:
                raise
        # Create may drop status; write it through the status subresource.
        current = json.loads(self.core.read_node(self.cfg.node_name, _preload_content=False).data)
        current["status"] = body["status"]
        self.core.replace_node_status(self.cfg.node_name, current, _preload_content=False)
        log.info("node %s registered, logs on port %d", self.cfg.node_name, self.server.port)

    # --- pods ----------------------------------------------------------------------

    def watch_pods(self) -> None:
        """List, then watch; relist when the watch expires or fails."""
        while not self.stopping.is_set():
            try:
                resp = self.core.list_pod_for_all_namespaces(_preload_content=False)
                pods = json.loads(resp.data)
                for pod in pods["items"]:
                    self.on_pod("SYNC", pod)
                self._watch_from(pods["metadata"]["resourceVersion"])
            except Exception as err:  # keep the node alive through API hiccups
                if not self.stopping.is_set():
                    log.warning("pod watch: %s; relisting", err)
                    self.stopping.wait(1.0)

    def _watch_from(self, resource_version: str) -> None:
        w = watch.Watch()
        stream = w.stream(
            self.core.list_pod_for_all_namespaces,
            resource_version=resource_version,
            timeout_seconds=WATCH_TIMEOUT_S,
            allow_watch_bookmarks=True,
        )
        for event in stream:
            if self.stopping.is_set():
                w.stop()
                return
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self.on_pod(event["type"], event["raw_object"])

    def on_pod(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        node = spec.get("nodeName")
        if kind == "DELETED":
            with self.lock:
                runner = self.runners.pop(uid, None)
            if runner is not None:
                runner.request_delete(0)
            return
        if not node:
            self.maybe_bind(pod)
            return
        if node != self.cfg.node_name:
            return
        deleting = bool(meta.get("deletionTimestamp"))
        terminal = pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
        with self.lock:
            runner = self.runners.get(uid)
            if runner is None and not deleting and not terminal:
                runner = self.runners[uid] = PodRunner(self.node, pod)
                runner.start()
        if deleting and runner is None:
            self._confirm_deletion(pod)
        elif deleting and runner is not None:
            runner.request_delete(float(meta.get("deletionGracePeriodSeconds", 30)))

    def maybe_bind(self, pod: Obj) -> None:
        """Do the scheduler's one job: bind a pending Pod to this Node."""
        meta, spec = pod["metadata"], pod["spec"]
        if meta.get("deletionTimestamp") or spec.get("schedulingGates"):
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        selector = spec.get("nodeSelector") or {}
        if selector and not self._selector_matches(selector):
            self._mark_unschedulable(pod)
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node_name},
        }
        try:
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], binding, _preload_content=False
            )
            log.info("pod %s/%s bound to %s", meta["namespace"], meta["name"], self.cfg.node_name)
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("binding %s failed: %s", meta["name"], err.body)

    def _selector_matches(self, selector: dict[str, str]) -> bool:
        # Read the labels now: tests may label the node after it registered.
        node = json.loads(self.core.read_node(self.cfg.node_name, _preload_content=False).data)
        labels = node["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in selector.items())

    def _mark_unschedulable(self, pod: Obj) -> None:
        """Say why the Pod stays Pending, in the scheduler's words."""
        meta = pod["metadata"]
        conditions = pod.get("status", {}).get("conditions") or []
        if any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: "
            "1 node(s) didn't match Pod's node affinity/selector.",
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {"status": {"conditions": [condition]}},
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
            )
        except ApiException as err:
            if err.status != 404:
                log.warning("pod %s: marking unschedulable failed: %s", meta["name"], err.body)

    def _confirm_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                _preload_content=False,
            )
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("deleting %s failed: %s", meta["name"], err.body)

    def resolve_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> LogSource | str:
        with self.lock:
            runner = next(
                (r for r in self.runners.values() if (r.namespace, r.pod_name) == (namespace, pod)),
                None,
            )
        if runner is None:
            return f'pod "{pod}" in namespace "{namespace}" is not running on this node'
        return runner.log_source(container, previous)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The API server's CA is trusted explicitly; silence nothing else.
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    kubelet = FakeKubelet(KubeletConfig.load(Path(argv[0])))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    kubelet.start()
    done.wait()
    kubelet.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
