"""Runs one Pod's containers as local processes and reports like a kubelet.

There is no container runtime: the image is ignored, `command[0]` is looked
up on PATH (the test environment's bin directory first), and since a process
cannot mount, each volume mount and the termination-message file are mapped
to host paths. Their container paths are rewritten to the host paths wherever
they appear in the command, args, env values and workingDir.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from tests.cluster.logs import LogSource, copy_stream, tail_of, timestamp

log = logging.getLogger("kubelet.pods")

Obj = dict[str, Any]

POD_IP = "127.0.0.1"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
# Same limits as the kubelet: 4 KiB per message, 80 lines / 2 KiB of log tail.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
# Restart back-off for restartPolicy OnFailure/Always: shorter than the
# kubelet's 10 s doubling to 5 min, so that tests of restarts stay quick.
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# Host environment variables a container process inherits.
PASS_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")


class ConfigError(Exception):
    """The Pod cannot start yet (missing Secret, unsupported volume...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class NodeContext:
    """What every Pod runner shares: the node, the API and host paths."""

    node_name: str
    core: CoreV1Api
    state_dir: Path
    path_prepend: list[str]
    api_server: str
    api_ca_data: str  # base64 PEM of the API server's CA, for Pod kubeconfigs
    node_capacity: dict[str, str] = field(default_factory=dict)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` escapes, unknown names stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


class PathMap:
    """Container paths -> host paths, rewritten at path boundaries in one pass."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        self.mounts = {k.rstrip("/") or "/": v for k, v in mounts.items()}
        # Longest first, so that /data/sub wins over /data. A match must not
        # continue a longer path component (/database is not /data).
        names = sorted(self.mounts, key=len, reverse=True)
        alternatives = "|".join(re.escape(n) for n in names if n != "/")
        self.pattern = re.compile(rf"(?<![\w.\-])({alternatives})(?![\w.\-])") if names else None

    def rewrite(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: str(self.mounts[m.group(1)]), text)


@dataclass
class ContainerRun:
    """One container of the Pod and what it is doing."""

    spec: Obj
    init: bool
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    restart_at: float | None = None
    container_id: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path("/")
    log_dir: Path = Path("/")
    message_file: Path = Path("/")

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        return self.state.get("terminated")

    def log_path(self, restart: int) -> Path:
        return self.log_dir / f"{restart}.log"

    def status(self) -> Obj:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": self.container_id,
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodRunner(threading.Thread):
    """Brings one Pod from Pending to a terminal phase, then confirms its deletion."""

    def __init__(self, node: NodeContext, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = node.state_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.inits = [ContainerRun(c, init=True) for c in spec.get("initContainers", [])]
        self.mains = [ContainerRun(c, init=False) for c in spec.get("containers", [])]
        self.phase = "Pending"
        self.message = ""
        self.start_time = now()
        self.conditions: dict[str, Obj] = {}
        self.delete_requested = threading.Event()
        self.grace_s = 30.0
        self.wake = threading.Event()
        self.lock = threading.Lock()

    # --- called from other threads -------------------------------------------------

    def request_delete(self, grace_s: float) -> None:
        """The Pod is being deleted: stop within `grace_s`, then confirm."""
        self.grace_s = min(self.grace_s, grace_s) if self.delete_requested.is_set() else grace_s
        self.delete_requested.set()
        self.wake.set()

    def log_source(self, container: str, previous: bool) -> LogSource | str:
        run = next((c for c in self.inits + self.mains if c.name == container), None)
        if run is None:
            return f"container {container} is not valid for pod {self.pod_name}"
        restart = run.restart_count - 1 if previous else run.restart_count
        if restart < 0:
            return f"previous terminated container {container} in pod {self.pod_name} not found"
        path = run.log_path(restart)
        if not path.exists():
            return f'container "{container}" in pod "{self.pod_name}" is waiting to start'
        current = restart == run.restart_count

        def finished() -> bool:
            return not current or run.restart_count != restart or not run.running

        return LogSource(path, finished)

    def kill_all(self) -> None:
        """Kill every process at once (the kubelet itself is stopping)."""
        for run in self.inits + self.mains:
            _signal_group(run, signal.SIGKILL)

    # --- the Pod's life ------------------------------------------------------------

    def run(self) -> None:
        try:
            self._live()
        except Exception as err:
            # A bug or an API error here must not strand the Pod: report it as
            # failed, and still confirm its deletion below.
            log.exception("pod %s/%s: runner failed", self.namespace, self.pod_name)
            self.kill_all()
            self.phase = "Failed"
            self.message = f"fake kubelet: {err}"
            with contextlib.suppress(Exception):
                self._write_status()
        self.delete_requested.wait()
        try:
            self._stop_containers()
            self._finish_phase()
            self._write_status()
        except Exception:
            log.exception("pod %s/%s: stopping failed", self.namespace, self.pod_name)
            self.kill_all()
        self._confirm_deletion()

    def _live(self) -> None:
        self._set_condition("PodScheduled", True)
        self._set_condition("PodReadyToStartContainers", False)
        self._set_condition("Initialized", not self.inits)
        self._set_ready(False)
        if self.inits:
            for run in self.mains:
                run.state = {"waiting": {"reason": "PodInitializing"}}
        self._write_status()
        if not self._prepare():
            return
        self._set_condition("PodReadyToStartContainers", True)
        for run in self.inits:
            if run.sidecar:
                self._start(run)
                continue
            if not self._run_init(run):
                return
        self._set_condition("Initialized", True)
        for run in self.mains:
            self._start(run)
        self.phase = "Running"
        self._update_ready()
        self._write_status()
        self._supervise()

    def _prepare(self) -> bool:
        """Resolve volumes, env and commands; retry while a reference is missing."""
        while True:
            try:
                mounts = Volumes(self).materialize()
                for run in self.inits + self.mains:
                    self._prepare_container(run, mounts)
                return True
            except ConfigError as err:
                log.info("pod %s/%s: %s", self.namespace, self.pod_name, err.message)
                for run in self.inits + self.mains:
                    run.state = {"waiting": {"reason": err.reason, "message": err.message}}
                self._write_status()
                if self.delete_requested.wait(2.0):
                    return False

    def _prepare_container(self, run: ContainerRun, volumes: dict[str, Path]) -> None:
        spec = run.spec
        base = self.dir / "containers" / run.name
        run.cwd = base / "workdir"
        run.cwd.mkdir(parents=True, exist_ok=True)
        run.log_dir = base / "logs"
        run.log_dir.mkdir(parents=True, exist_ok=True)
        run.message_file = base / "termination-log"
        mounts: dict[str, Path] = {}
        for mount in spec.get("volumeMounts", []):
            host = volumes[mount["name"]]
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        mounts[spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH] = run.message_file
        paths = PathMap(mounts)
        builder = Env(self, run, volumes)
        # Only the Pod's own values are rewritten; the kubelet's PATH and
        # KUBECONFIG are host paths already.
        env = {**builder.base(), **{k: paths.rewrite(v) for k, v in builder.build().items()}}
        command = [paths.rewrite(expand(a, env)) for a in spec.get("command", [])]
        args = [paths.rewrite(expand(a, env)) for a in spec.get("args", [])]
        if not command:
            raise ConfigError(
                "CreateContainerError",
                f"container {run.name}: the fake kubelet needs spec.containers[].command "
                "(it cannot read the image's entrypoint)",
            )
        run.argv = [*command, *args]
        run.env = env
        if spec.get("workingDir"):
            wanted = Path(paths.rewrite(spec["workingDir"]))
            if wanted.is_dir() or wanted.is_relative_to(self.dir):
                wanted.mkdir(parents=True, exist_ok=True)
                run.cwd = wanted
            else:
                log.warning("pod %s: workingDir %s is not on this host", self.pod_name, wanted)

    def _run_init(self, run: ContainerRun) -> bool:
        """Run an init container to success, restarting it as the policy says."""
        while True:
            self._start(run)
            self._write_status()
            while not run.exited.wait(0.5):
                if self.delete_requested.is_set():
                    return False
            self._record_exit(run)
            if run.terminated and run.terminated["exitCode"] == 0:
                self._write_status()
                return True
            if self.restart_policy == "Never":
                self.phase = "Failed"
                self._write_status()
                return False
            if not self._wait_backoff(run):
                return False

    def _wait_backoff(self, run: ContainerRun) -> bool:
        delay = RESTART_BACKOFF_S[min(run.restart_count, len(RESTART_BACKOFF_S) - 1)]
        run.last_state = run.state
        run.state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:g}s"}}
        self._update_ready()
        self._write_status()
        run.restart_count += 1
        return not self.delete_requested.wait(delay)

    def _supervise(self) -> None:
        """Wait for main containers to exit, restart them as the policy says."""
        while not self.delete_requested.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
            changed = False
            for run in [*self.mains, *(c for c in self.inits if c.sidecar)]:
                if run.process is not None and run.exited.is_set() and run.running:
                    self._record_exit(run)
                    changed = True
                    if self._should_restart(run):
                        run.last_state = run.state
                        delay = RESTART_BACKOFF_S[
                            min(run.restart_count, len(RESTART_BACKOFF_S) - 1)
                        ]
                        run.state = {
                            "waiting": {
                                "reason": "CrashLoopBackOff",
                                "message": f"back-off {delay:g}s",
                            }
                        }
                        run.restart_count += 1
                        run.restart_at = time.monotonic() + delay
                if run.restart_at is not None and time.monotonic() >= run.restart_at:
                    run.restart_at = None
                    self._start(run)
                    changed = True
            if all(r.terminated and r.restart_at is None for r in self.mains):
                self._stop_sidecars()
                self._finish_phase()
                self._update_ready()
                self._write_status()
                return
            if changed:
                self._update_ready()
                self._write_status()

    def _stop_sidecars(self) -> None:
        """The main containers are done: sidecars get SIGTERM, as on a kubelet."""
        sidecars = [c for c in self.inits if c.sidecar and c.process is not None]
        for run in sidecars:
            run.restart_at = None
            _signal_group(run, signal.SIGTERM)
        self._await_exit(sidecars, 10.0)
        for run in sidecars:
            _signal_group(run, signal.SIGKILL)
        self._await_exit(sidecars, 5.0)
        for run in sidecars:
            if run.running:
                self._record_exit(run)

    def _should_restart(self, run: ContainerRun) -> bool:
        if run.sidecar:
            return True
        code = (run.terminated or {}).get("exitCode", 0)
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)

    def _finish_phase(self) -> None:
        if self.phase in ("Succeeded", "Failed"):
            return
        ok = all(r.terminated and r.terminated["exitCode"] == 0 for r in self.mains)
        self.phase = "Succeeded" if ok else "Failed"

    def _stop_containers(self) -> None:
        running = [r for r in self.inits + self.mains if r.process and not r.exited.is_set()]
        for run in running:
            _signal_group(run, signal.SIGTERM)
        self._await_exit(running, self.grace_s)
        for run in running:
            _signal_group(run, signal.SIGKILL)
        self._await_exit(running, 5.0)
        for run in self.inits + self.mains:
            if run.running:
                self._record_exit(run)
            elif "waiting" in run.state:
                run.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}
        self._update_ready()

    @staticmethod
    def _await_exit(runs: list[ContainerRun], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for run in runs:
            run.exited.wait(max(deadline - time.monotonic(), 0))

    # --- processes -----------------------------------------------------------------

    def _start(self, run: ContainerRun) -> None:
        run.exited.clear()
        run.message_file.write_bytes(b"")
        log_path = run.log_path(run.restart_count)
        run.container_id = "fake://" + secrets.token_hex(16)
        argv = [_resolve_command(run.argv[0], run.env), *run.argv[1:]]
        started = timestamp()
        try:
            run.process = subprocess.Popen(
                argv,
                env=run.env,
                cwd=run.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a unit
            )
        except OSError as err:
            # What containerd reports when the entrypoint cannot be executed.
            log_path.write_bytes(b"")
            run.process = None
            run.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": f"exec {argv[0]!r}: {err.strerror}",
                    "startedAt": started[:19] + "Z",
                    "finishedAt": now(),
                    "containerID": run.container_id,
                }
            }
            run.exited.set()
            self.wake.set()
            return
        log.info(
            "pod %s/%s: started %s (pid %d)", self.namespace, self.pod_name, argv, run.process.pid
        )
        run.state = {"running": {"startedAt": now()}}
        assert run.process.stdout is not None
        copier = threading.Thread(
            target=copy_stream, args=(run.process.stdout, log_path), daemon=True
        )
        copier.start()
        threading.Thread(target=self._wait_process, args=(run, copier), daemon=True).start()

    def _wait_process(self, run: ContainerRun, copier: threading.Thread) -> None:
        assert run.process is not None
        run.process.wait()
        # When a container's main process exits, the runtime kills what it left.
        _signal_group(run, signal.SIGKILL)
        copier.join(5.0)
        run.exited.set()
        self.wake.set()

    def _record_exit(self, run: ContainerRun) -> None:
        if run.process is None:  # StartError, already recorded
            return
        code = run.process.returncode
        if code is None:
            return
        if code < 0:  # killed by a signal: report as a shell would
            code = 128 - code
        message = run.message_file.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
        policy = run.spec.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            message = tail_of(
                run.log_path(run.restart_count), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES
            )
        terminated: Obj = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.state.get("running", {}).get("startedAt", now()),
            "finishedAt": now(),
            "containerID": run.container_id,
        }
        if message:
            terminated["message"] = message
        run.state = {"terminated": terminated}
        log.info("pod %s/%s: %s exited %d", self.namespace, self.pod_name, run.name, code)

    # --- status --------------------------------------------------------------------

    def _set_condition(self, kind: str, value: bool) -> None:
        status = "True" if value else "False"
        old = self.conditions.get(kind)
        if old and old["status"] == status:
            return
        self.conditions[kind] = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }

    def _set_ready(self, value: bool) -> None:
        self._set_condition("ContainersReady", value)
        self._set_condition("Ready", value)

    def _update_ready(self) -> None:
        self._set_ready(bool(self.mains) and all(r.running for r in self.mains))

    def _status(self) -> Obj:
        return {
            "phase": self.phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "initContainerStatuses": [r.status() for r in self.inits],
            "containerStatuses": [r.status() for r in self.mains],
            **({"message": self.message} if self.message else {}),
        }

    def _write_status(self) -> None:
        """Replace the Pod's status (a GET and PUT, retried on conflicts)."""
        core = self.node.core
        for _ in range(10):
            try:
                resp = core.read_namespaced_pod(
                    self.pod_name, self.namespace, _preload_content=False
                )
                pod = json.loads(resp.data)
                if pod["metadata"]["uid"] != self.uid:
                    return
                status = pod.get("status", {})
                if status.get("phase") in ("Succeeded", "Failed") and self.phase != status["phase"]:
                    return  # terminal phases are final
                ours = self._status()
                foreign = [
                    c for c in status.get("conditions", []) if c["type"] not in self.conditions
                ]
                status.update(ours)
                status["conditions"] = foreign + list(self.conditions.values())
                pod["status"] = status
                core.replace_namespaced_pod_status(self.pod_name, self.namespace, pod)
                return
            except ApiException as err:
                if err.status == 404:
                    return
                if err.status != 409:
                    log.warning("pod %s: status update failed: %s", self.pod_name, err.body)
                    return
        log.warning("pod %s: status update kept conflicting; gave up", self.pod_name)

    def _confirm_deletion(self) -> None:
        """Finish a graceful deletion, as the kubelet does once containers stopped."""
        try:
            self.node.core.delete_namespaced_pod(
                self.pod_name,
                self.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("pod %s: delete failed: %s", self.pod_name, err.body)
        shutil.rmtree(self.dir, ignore_errors=True)


def _signal_group(run: ContainerRun, sig: int) -> None:
    if run.process is None or (run.process.returncode is not None and sig != signal.SIGKILL):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(run.process.pid, sig)


def _resolve_command(command: str, env: dict[str, str]) -> str:
    """command[0] on this host: as given if it exists, else its name on PATH."""
    if "/" in command and Path(command).exists():
        return command
    found = shutil.which(Path(command).name, path=env.get("PATH"))
    return found or command


class Volumes:
    """Materializes a Pod's volumes as host directories."""

    def __init__(self, runner: PodRunner) -> None:
        self.runner = runner
        self.core = runner.node.core
        self.namespace = runner.namespace
        self.root = runner.dir / "volumes"

    def materialize(self) -> dict[str, Path]:
        return {v["name"]: self._volume(v) for v in self.runner.pod["spec"].get("volumes", [])}

    def _volume(self, volume: Obj) -> Path:
        name = volume["name"]
        path = self.root / name
        if "emptyDir" in volume:
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "hostPath" in volume:
            host = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type", "") in ("", "DirectoryOrCreate"):
                host.mkdir(parents=True, exist_ok=True)
            return host
        if "persistentVolumeClaim" in volume:
            # One directory per claim, shared by every Pod that mounts it.
            claim = volume["persistentVolumeClaim"]["claimName"]
            host = self.runner.node.state_dir / "pvcs" / self.namespace / claim
            host.mkdir(parents=True, exist_ok=True)
            return host
        files: dict[str, bytes] | None = None
        if "configMap" in volume:
            files = self._config_map_files(volume["configMap"])
        elif "secret" in volume:
            files = self._secret_files(volume["secret"])
        elif "downwardAPI" in volume:
            files = self._downward_files(volume["downwardAPI"].get("items", []))
        elif "projected" in volume:
            files = {}
            for source in volume["projected"].get("sources", []):
                files.update(self._projection(source))
        if files is None:
            kinds = sorted(k for k in volume if k != "name")
            raise ConfigError("CreateContainerConfigError", f"volume {name}: {kinds} unsupported")
        for rel, data in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _projection(self, source: Obj) -> dict[str, bytes]:
        if "configMap" in source:
            return self._config_map_files(source["configMap"])
        if "secret" in source:
            return self._secret_files(source["secret"])
        if "downwardAPI" in source:
            return self._downward_files(source["downwardAPI"].get("items", []))
        if "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            return {token_source["path"]: self.runner_token(token_source).encode()}
        raise ConfigError("CreateContainerConfigError", f"projection {sorted(source)} unsupported")

    def runner_token(self, source: Obj) -> str:
        """A token bound to the Pod, from the TokenRequest API."""
        pod = self.runner.pod
        spec: Obj = {
            "audiences": [source["audience"]] if source.get("audience") else [],
            "expirationSeconds": source.get("expirationSeconds", 3607),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.runner.pod_name,
                "uid": self.runner.uid,
            },
        }
        account = pod["spec"].get("serviceAccountName", "default")
        resp = self.core.create_namespaced_service_account_token(
            account, self.namespace, {"spec": spec}, _preload_content=False
        )
        return str(json.loads(resp.data)["status"]["token"])

    def _config_map_files(self, ref: Obj) -> dict[str, bytes]:
        data = read_config_map(self.core, self.namespace, ref["name"], ref.get("optional", False))
        return _select_items(data or {}, ref.get("items"))

    def _secret_files(self, ref: Obj) -> dict[str, bytes]:
        name = ref.get("secretName") or ref.get("name", "")
        data = read_secret(self.core, self.namespace, name, ref.get("optional", False))
        return _select_items(data or {}, ref.get("items"))

    def _downward_files(self, items: list[Obj]) -> dict[str, bytes]:
        pod = self.runner.pod
        out: dict[str, bytes] = {}
        for item in items:
            if "fieldRef" in item:
                out[item["path"]] = field_value(pod, item["fieldRef"]["fieldPath"]).encode()
        return out


def _select_items(data: dict[str, bytes], items: list[Obj] | None) -> dict[str, bytes]:
    if items is None:
        return dict(data)
    return {i["path"]: data[i["key"]] for i in items if i["key"] in data}


def read_config_map(
    core: CoreV1Api, namespace: str, name: str, optional: bool
) -> dict[str, bytes] | None:
    try:
        resp = core.read_namespaced_config_map(name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404 and optional:
            return None
        if err.status == 404:
            raise ConfigError(
                "CreateContainerConfigError", f'configmap "{name}" not found'
            ) from None
        raise
    obj = json.loads(resp.data)
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def read_secret(
    core: CoreV1Api, namespace: str, name: str, optional: bool
) -> dict[str, bytes] | None:
    try:
        resp = core.read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404 and optional:
            return None
        if err.status == 404:
            raise ConfigError("CreateContainerConfigError", f'secret "{name}" not found') from None
        raise
    obj = json.loads(resp.data)
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def field_value(pod: Obj, path: str) -> str:
    """The downward API's fieldRef values a process can use."""
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError("CreateContainerConfigError", f"fieldRef {path} unsupported")


class Env:
    """A container's environment, built in Kubernetes' order."""

    def __init__(self, runner: PodRunner, run: ContainerRun, volumes: dict[str, Path]) -> None:
        self.runner = runner
        self.run = run
        self.volumes = volumes
        self.core = runner.node.core

    def base(self) -> dict[str, str]:
        """What the image and the runtime would provide."""
        node = self.runner.node
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env["PATH"] = os.pathsep.join([*node.path_prepend, os.environ.get("PATH", "/usr/bin:/bin")])
        env["HOSTNAME"] = self.runner.pod_name
        kubeconfig = self._service_account_kubeconfig()
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def build(self) -> dict[str, str]:
        """The variables the container spec defines (envFrom, then env)."""
        env: dict[str, str] = {}
        for source in self.run.spec.get("envFrom", []):
            env.update(self._env_from(source))
        for var in self.run.spec.get("env", []):
            # $(VAR) in a value sees the variables defined before it.
            value = self._value(var, env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _service_account_kubeconfig(self) -> Path | None:
        """Pods reach the API with their ServiceAccount's token, via KUBECONFIG.

        A process cannot see the token at the in-cluster path, so clients that
        fall back to $KUBECONFIG (kopf, the kubernetes client) use this one.
        """
        for mount in self.run.spec.get("volumeMounts", []):
            if mount["mountPath"].rstrip("/") == SA_MOUNT:
                token = self.volumes[mount["name"]] / "token"
                if token.exists():
                    path = self.runner.dir / "containers" / self.run.name / "kubeconfig"
                    node = self.runner.node
                    write_kubeconfig(path, node.api_server, node.api_ca_data, token)
                    return path
        return None

    def _value(self, var: Obj, env: dict[str, str]) -> str | None:
        if "valueFrom" not in var:
            return expand(var.get("value", ""), env)
        ref = var["valueFrom"]
        ns = self.runner.namespace
        if "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            data = read_secret(self.core, ns, r["name"], r.get("optional", False))
            return self._key(data, r, "secret")
        if "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            data = read_config_map(self.core, ns, r["name"], r.get("optional", False))
            return self._key(data, r, "configmap")
        if "fieldRef" in ref:
            return field_value(self.runner.pod, ref["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in ref:
            return self._resource(ref["resourceFieldRef"])
        raise ConfigError("CreateContainerConfigError", f"env {var['name']}: unsupported valueFrom")

    @staticmethod
    def _key(data: dict[str, bytes] | None, ref: Obj, kind: str) -> str | None:
        if data is None:
            return None
        if ref["key"] not in data:
            if ref.get("optional", False):
                return None
            raise ConfigError(
                "CreateContainerConfigError",
                f"couldn't find key {ref['key']} in {kind} {ref['name']}",
            )
        return data[ref["key"]].decode(errors="replace")

    def _env_from(self, source: Obj) -> dict[str, str]:
        ns = self.runner.namespace
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            r = source["secretRef"]
            data = read_secret(self.core, ns, r["name"], r.get("optional", False))
        else:
            r = source["configMapRef"]
            data = read_config_map(self.core, ns, r["name"], r.get("optional", False))
        return {prefix + k: v.decode(errors="replace") for k, v in (data or {}).items()}

    def _resource(self, ref: Obj) -> str:
        """limits.cpu and friends; a missing limit means the node's capacity."""
        resource = ref["resource"]
        kind, _, name = resource.partition(".")
        resources = self.run.spec.get("resources", {})
        value = resources.get(kind, {}).get(name) or self.runner.node.node_capacity.get(name, "0")
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(math.ceil(parse_quantity(value) / divisor))


def write_kubeconfig(path: Path, server: str, ca_data: str, token_file: Path) -> None:
    """A kubeconfig whose token is re-read from a file (bound tokens rotate)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "rig", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": "pod", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "pod", "context": {"cluster": "rig", "user": "pod"}}],
        "current-context": "pod",
    }
    path.write_text(json.dumps(config, indent=2))
