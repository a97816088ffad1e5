"""A real S3 server for the tests: Ceph's radosgw on loopback, started once per session.

One monitor, one OSD keeping objects in memory (memstore), no cephx, pools of
size 1, and radosgw's beast frontend on 127.0.0.1. Everything runs in the
foreground from a scratch directory and is stopped at the end of the session.
Needs Debian's `radosgw ceph-mon ceph-osd ceph-common`; without them the s3
tests are skipped with the apt command to run.

To test against another server instead (MinIO, AWS), set
KUBESLIM_TEST_S3_ENDPOINT, KUBESLIM_TEST_S3_ACCESS_KEY and
KUBESLIM_TEST_S3_SECRET_KEY.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CEPH_PACKAGES = "radosgw ceph-mon ceph-osd ceph-common"
START_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1


@dataclass
class S3Server:
    """Where the server listens and the keys of its one user."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    started_in_s: float = 0.0
    rss_mb: float = 0.0
    pids: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point botocore (and kubeslim) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            # Never ask an instance-metadata service for a role on a test machine.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def filesystem(self) -> Any:
        """A fresh, uncached s3fs client with the user's keys (for checks behind the store)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            skip_instance_cache=True,
            use_listings_cache=False,
            client_kwargs={"endpoint_url": self.endpoint, "region_name": self.region},
            config_kwargs={"s3": {"addressing_style": "path"}},
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name unless given) and return its name."""
        bucket = name or f"kubeslim-{uuid.uuid4().hex[:12]}"
        self.filesystem().call_s3("create_bucket", Bucket=bucket)
        return bucket


@pytest.fixture(scope="session")
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """The session's S3 server: external if KUBESLIM_TEST_S3_ENDPOINT is set, else radosgw.

    With the rig's real node (--node=real, the default) and cluster tests in the session,
    radosgw listens on the node's bridge address instead of loopback, so that Pods reach
    it too (the node starts first).
    """
    external = os.environ.get("KUBESLIM_TEST_S3_ENDPOINT")
    if external:
        yield S3Server(
            endpoint=external,
            access_key=os.environ["KUBESLIM_TEST_S3_ACCESS_KEY"],
            secret_key=os.environ["KUBESLIM_TEST_S3_SECRET_KEY"],
            region=os.environ.get("KUBESLIM_TEST_S3_REGION", "us-east-1"),
        )
        return
    missing = [
        b for b in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin") if not shutil.which(b)
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: apt-get install -y {CEPH_PACKAGES}")
    address = _listen_address(request)
    cluster, server = _start_with_retry(
        lambda: RadosGateway(tmp_path_factory.mktemp("radosgw"), address)
    )
    try:
        yield server
    finally:
        cluster.stop()


def _start_with_retry(
    new: Callable[[], RadosGateway], attempts: int = 3
) -> tuple[RadosGateway, S3Server]:
    """Start a gateway, trying afresh (new directory, new ports) when a start fails.

    A start can fail for reasons outside the test: another process takes a port
    between _free_port() and the daemon's bind, or a loaded machine keeps the
    monitor from answering in time. Each failure keeps its logs in the message.
    """
    errors: list[str] = []
    for _ in range(attempts):
        cluster = new()
        try:
            return cluster, cluster.start()
        except RuntimeError as exc:
            cluster.stop()
            errors.append(str(exc))
    raise RuntimeError(f"radosgw did not start in {attempts} attempts: " + " || ".join(errors))


def _listen_address(request: pytest.FixtureRequest) -> str:
    """Loopback, or the real node's bridge address once that node runs: only when the
    session has cluster tests (whose Pods may read S3), so S3 tests alone start no node."""
    config = request.config
    if config.getoption("--node", None) != "real" or config.getoption("--kubeconfig", None):
        return "127.0.0.1"
    if not any(item.get_closest_marker("cluster") for item in request.session.items):
        return "127.0.0.1"
    from tests.cluster.node import NODE_IP

    request.getfixturevalue("k8s_cluster")  # creates the bridge that holds NODE_IP
    return NODE_IP


class RadosGateway:
    """A throwaway one-node Ceph cluster with a radosgw in front of it."""

    def __init__(self, scratch: Path, address: str = "127.0.0.1") -> None:
        self.dir = scratch
        self.address = address
        self.conf = scratch / "ceph.conf"
        self.mon_port = _free_port()
        self.rgw_port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> S3Server:
        t0 = time.monotonic()
        self._write_config()
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                  "--fsid", self.fsid, str(self.dir / "monmap"))  # fmt: skip
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(self.dir / "monmap"))
        self._daemon("ceph-mon", "-i", "a")
        # Registers osd.0 in the map; it also waits until the monitor answers.
        self._run("ceph", "--connect-timeout", "60", "osd", "create")
        (self.dir / "osd" / "0").mkdir(parents=True)
        self._run("ceph-osd", "-i", "0", "--mkfs")
        self._daemon("ceph-osd", "-i", "0")
        self._daemon("radosgw", "-n", "client.rgw")
        endpoint = f"http://{self.address}:{self.rgw_port}"
        self._wait_http(endpoint)
        access, secret = "KUBESLIMTESTKEY", uuid.uuid4().hex
        self._run("radosgw-admin", "user", "create", "--uid=kubeslim", "--display-name=kubeslim",
                  f"--access-key={access}", f"--secret={secret}")  # fmt: skip
        pids = [p.pid for p in self.procs]
        return S3Server(
            endpoint=endpoint,
            access_key=access,
            secret_key=secret,
            started_in_s=round(time.monotonic() - t0, 1),
            rss_mb=round(sum(_rss_mb(pid) for pid in pids), 1),
            pids=pids,
        )

    def stop(self) -> None:
        """SIGTERM in reverse start order, each after the one before it has gone.

        The OSD tells the monitor it is going down, so the monitor goes last
        (otherwise the OSD waits 5 s for it); SIGKILL after 15 s each.
        """
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _write_config(self) -> None:
        self.fsid = str(uuid.uuid4())
        for sub in ("mon", "osd", "run", "log", "rgw"):
            (self.dir / sub).mkdir()
        d = self.dir
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind msgr1 = false
# No cephx: nothing but this test talks to the cluster, on loopback.
auth cluster required = none
auth service required = none
auth client required = none
# radosgw asks for "secure" mon connections by default, which needs cephx.
ms mon client mode = crc
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = {d}/keyring
mon data = {d}/mon/$id
osd data = {d}/osd/$id
rgw data = {d}/rgw
# Objects live in the OSD's memory: nothing to format, gone at exit. Memory is taken
# as objects are written, up to this size.
osd objectstore = memstore
memstore device bytes = 6442450944
# radosgw frees overwritten and deleted objects only at its garbage collection, by
# default 2 hours later: a session rewriting checkpoints filled 2 GiB that way, the OSD
# went full and every request hung. Collect after 30 s instead.
rgw gc obj min wait = 30
rgw gc processor period = 30
rgw gc processor max time = 30
# One OSD: pools of one replica, few placement groups, no health nagging.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# The monitor shuts itself down below 5% free disk by default; a CI machine
# full of images is often there, and the test's data lives in memory anyway.
mon data avail crit = 0
mon data avail warn = 0
# radosgw creates six pools at first start, one map change each; the monitor
# batches changes for 1 s by default, which is most of the start-up time.
paxos propose interval = 0.05
rgw frontends = beast endpoint={self.address}:{self.rgw_port}
"""
        )
        (d / "keyring").touch()

    def _run(self, *cmd: str) -> None:
        full = [cmd[0], "-c", str(self.conf), *cmd[1:]]
        done = subprocess.run(full, capture_output=True, text=True, timeout=90, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(full)} exited {done.returncode}: {done.stderr.strip()[-1000:]}"
                f" | logs: {self._tail()}"
            )

    def _daemon(self, binary: str, *args: str) -> None:
        log = (self.dir / "log" / f"{binary}.out").open("wb")
        self.procs.append(
            subprocess.Popen(
                [binary, "-c", str(self.conf), "-f", *args],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        )

    def _wait_http(self, endpoint: str) -> None:
        """Wait for radosgw's anonymous bucket listing to answer."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(endpoint, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"radosgw did not answer at {endpoint} in {START_TIMEOUT_S}s: {self._tail()}"
        )

    def _tail(self) -> str:
        logs = sorted((self.dir / "log").glob("*"))
        return " | ".join(f"{p.name}: {p.read_text(errors='replace')[-400:]}" for p in logs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child: get SIGKILL when pytest dies, so no daemon outlives a crashed run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
