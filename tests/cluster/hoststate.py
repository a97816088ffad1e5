"""What a real test node changes on the host, and how to undo it.

A kubelet, kube-proxy, containerd and the CNI bridge plugin change the host
beyond their own directories: mounts (Pod volumes, container root
filesystems, network namespaces), iptables chains (KUBE-*), cgroups
(/kubepods), a bridge link, sysctls, symlinks under /var/log/containers and
a few directories under /run and /var. `HostRecord` writes down, before the
node starts, what it will touch and what the host looked like, in a file
under /run (gone after a reboot, like everything it describes). `undo`
removes all of it, from the record of a node that stopped cleanly or of one
whose test session was killed: the next session calls it before it starts
its own node, and `python -m tests.cluster.hoststate` does it by hand.

One real node per host at a time: they would share the iptables chains,
cgroups and bridge. `host_lock` serialises sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RECORD_DIR = Path(os.environ.get("KUBESLIM_NODE_RECORD_DIR", "/run/kubeslim-node"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOGS = Path("/var/log/containers")
# Sysctls that the kubelet (its kernel defaults), kube-proxy and the CNI
# bridge plugin may change; restored to what they were before the node.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
)
# Directories outside the work directory that the node's parts create with
# fixed names (containerd's shim sockets, the kubelet's log links, the CNI
# result cache); removed if they did not exist before the node. Only
# /run/containerd is the node's alone; in the others only its own entries go.
FIXED_DIRS = ("/run/containerd", "/var/log/containers", "/var/log/pods", "/var/lib/cni")
OWN_DIR = "/run/containerd"
CNI_NETWORK = "kubeslim"


@dataclass
class HostRecord:
    """Where a node keeps its state and what the host looked like before it."""

    work_dir: str
    bridge: str
    containerd_socket: str
    cgroup_name: str = "kubepods"
    sysctls: dict[str, str] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @classmethod
    def before_start(cls, work_dir: Path, bridge: str, containerd_socket: Path) -> HostRecord:
        """Take note of the host as it is now, before the node changes it."""
        record = cls(str(work_dir), bridge, str(containerd_socket))
        for name in SYSCTLS:
            path = Path("/proc/sys") / name
            if path.exists():
                record.sysctls[name] = path.read_text().strip()
        record.created_dirs = [d for d in FIXED_DIRS if not Path(d).exists()]
        return record

    def save(self) -> None:
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        path = RECORD_DIR / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @staticmethod
    def load() -> HostRecord | None:
        path = RECORD_DIR / "node.json"
        if not path.exists():
            return None
        return HostRecord(**json.loads(path.read_text()))

    @staticmethod
    def forget() -> None:
        (RECORD_DIR / "node.json").unlink(missing_ok=True)


@contextlib.contextmanager
def host_lock(timeout: float = 600.0) -> Iterator[None]:
    """Hold the host's real-node lock; another session's node makes this wait."""
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    with (RECORD_DIR / "lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another test session holds {RECORD_DIR / 'lock'} (a real node runs)"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def undo(record: HostRecord) -> list[str]:
    """Remove everything the recorded node left on the host; what was removed.

    Order matters: processes first (they hold mounts and cgroups), then
    mounts (they pin directories), then the rest.
    """
    done: list[str] = []
    done += _kill_processes(record)
    done += _unmount_under(Path(record.work_dir))
    done += _remove_cgroups(record.cgroup_name)
    done += _remove_iptables_chains()
    done += _remove_link(record.bridge)
    done += _remove_log_links(record.work_dir)
    done += _restore_sysctls(record.sysctls)
    done += _remove_created_dirs(record.created_dirs)
    for socket in (record.containerd_socket, record.containerd_socket + ".ttrpc"):
        Path(socket).unlink(missing_ok=True)
    return done


def _pids_in_cgroups(name: str) -> set[int]:
    pids: set[int] = set()
    for procs in CGROUP_ROOT.glob(f"*/{name}/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    for procs in CGROUP_ROOT.glob(f"*/{name}/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _shim_pids(socket: str) -> set[int]:
    """containerd's shims daemonise, so outlive containerd: find them by the
    containerd address on their command line (every shim when empty)."""
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        shim = args[0].endswith(b"containerd-shim-runc-v2")
        if shim and (not socket or socket.encode() in args):
            pids.add(int(proc.name))
    return pids


def _is_ours(pid: int, work_dir: str) -> bool:
    """A recorded component pid, if it still runs our binary with our work dir
    (pids are reused)."""
    try:
        return work_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_processes(record: HostRecord) -> list[str]:
    victims = {p for p in record.pids if _is_ours(p, record.work_dir)}
    victims |= _shim_pids(record.containerd_socket) | _pids_in_cgroups(record.cgroup_name)
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in victims) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"killed {len(victims)} processes"] if victims else []


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _unmount_under(root: Path) -> list[str]:
    points = mounts_under(root)
    for point in points:
        # A lazy unmount never fails on a busy mount; the processes are gone.
        subprocess.run(["umount", "-l", point], capture_output=True)
    return [f"unmounted {len(points)} mounts"] if points else []


def _remove_cgroups(name: str) -> list[str]:
    removed = 0
    for top in CGROUP_ROOT.glob(f"*/{name}"):
        # rmdir children before parents; a cgroup directory holds only files
        # the kernel removes with it.
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
                removed += 1
        with contextlib.suppress(OSError):
            top.rmdir()
            removed += 1
    return [f"removed {removed} cgroups"] if removed else []


def _iptables_rules(binary: str, table: str) -> list[str]:
    result = subprocess.run([f"{binary}-save", "-t", table], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


def _remove_iptables_chains() -> list[str]:
    """Every KUBE-* chain (kubelet's and kube-proxy's) and the jumps to them."""
    removed = 0
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            lines = _iptables_rules(binary, table)
            chains = [ln[1:].split()[0] for ln in lines if ln.startswith(":KUBE-")]
            if not chains:
                continue
            for line in lines:
                if (
                    line.startswith("-A ")
                    and " -j KUBE-" in line
                    and not line[3:].startswith("KUBE-")
                ):
                    subprocess.run(
                        [binary, "-t", table, "-D", *shlex.split(line[3:])], capture_output=True
                    )
            for chain in chains:
                subprocess.run([binary, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([binary, "-t", table, "-X", chain], capture_output=True)
                removed += 1
    return [f"removed {removed} iptables chains"] if removed else []


def _remove_link(name: str) -> list[str]:
    if not Path(f"/sys/class/net/{name}").exists():
        return []
    subprocess.run(["ip", "link", "delete", name], capture_output=True)
    return [f"deleted link {name}"]


def _remove_log_links(work_dir: str) -> list[str]:
    """The kubelet's symlinks under /var/log/containers into the node's Pod
    logs (in its work directory), and any whose target is gone."""
    removed = 0
    if CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith(work_dir.rstrip("/") + "/") or not link.exists():
                link.unlink()
                removed += 1
    return [f"removed {removed} links under {CONTAINER_LOGS}"] if removed else []


def _restore_sysctls(values: dict[str, str]) -> list[str]:
    changed = []
    for name, value in values.items():
        path = Path("/proc/sys") / name
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)
                changed.append(name)
    return [f"restored sysctls {', '.join(changed)}"] if changed else []


def _remove_created_dirs(paths: list[str]) -> list[str]:
    """Remove the fixed directories the node created; in shared ones only
    the node's CNI results, then whatever is left empty."""
    removed = []
    for path in paths:
        top = Path(path)
        if not top.is_dir() or top.is_symlink():
            continue
        if path == OWN_DIR:
            subprocess.run(["rm", "-rf", "--one-file-system", path], capture_output=True)
        else:
            for network in (CNI_NETWORK, "cni-loopback"):
                for result in top.glob(f"results/{network}-*"):
                    result.unlink()
            for directory in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        if not top.exists():
            removed.append(path)
    return [f"removed {', '.join(removed)}"] if removed else []


def snapshot(scope: Path | None = None) -> dict[str, object]:
    """What a node changes on the host, as comparable data: equal before a
    node starts and after it stops, if teardown left nothing behind. Mounts
    are those under `scope` (the node's work directory or a parent) and
    the fixed directories."""
    roots = [Path(d) for d in FIXED_DIRS] + ([scope] if scope else [])
    chains = {
        f"{binary} {table}": sorted(
            ln.split()[0][1:] for ln in _iptables_rules(binary, table) if ln.startswith(":KUBE-")
        )
        for binary in ("iptables", "ip6tables")
        for table in ("filter", "nat", "mangle")
    }
    return {
        "mounts": sorted(m for root in roots for m in mounts_under(root)),
        "iptables": chains,
        "cgroups": sorted(str(p) for p in CGROUP_ROOT.glob("*/kubepods")),
        "links": sorted(p.name for p in Path("/sys/class/net").iterdir() if "kubeslim" in p.name),
        "container_logs": sorted(p.name for p in CONTAINER_LOGS.glob("*")),
        "sysctls": {n: (Path("/proc/sys") / n).read_text().strip() for n in SYSCTLS},
        "dirs": [d for d in [*FIXED_DIRS, str(scope or "")] if d and Path(d).exists()],
        "shims": len(_shim_pids("")),
    }


def undo_leftovers() -> list[str]:
    """Undo a previous node's changes if its session did not (call under host_lock)."""
    record = HostRecord.load()
    if record is None:
        return []
    done = undo(record)
    if Path(record.work_dir).exists():
        subprocess.run(["rm", "-rf", "--one-file-system", record.work_dir], capture_output=True)
    HostRecord.forget()
    return done


def sweep_if_idle() -> list[str]:
    """Undo a killed session's node if no node runs now (any session may call
    it at start, fake node or not); nothing without root or a record."""
    if os.geteuid() != 0 or HostRecord.load() is None:
        return []
    try:
        with host_lock(timeout=0):
            return undo_leftovers()
    except TimeoutError:  # another session's node is running
        return []


def main() -> None:
    """Remove what a killed test session's node left behind."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with host_lock(timeout=5):
        done = undo_leftovers()
    print("\n".join(done) or "nothing left behind")


if __name__ == "__main__":
    main()
