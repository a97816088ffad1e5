"""pytest plugin: the `k8s_cluster` fixture and its options.

Without options the session starts the rig (tests/cluster/rig.py) the first
time a test asks for `k8s_cluster` and stops it at the end; its node is the
fake kubelet (Pods run as local processes, images ignored). `--node=real`
gives the rig a real node instead (tests/cluster/node.py: containerd,
kubelet, kube-proxy, kube-scheduler; Pods run their images), and
`--node-images=operator,runtime` builds those of the project's images
(tests/images/build.py) and imports them into that node for the
`project_images` fixture. With
`--kubeconfig PATH` the tests use that cluster instead (kind, k3s, a cloud
cluster): no fake kubelet, so its Pods run their real images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.cluster.cluster import Cluster

log = logging.getLogger(__name__)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        action="store",
        default=None,
        metavar="PATH",
        help="run cluster tests against this cluster instead of starting the test control plane",
    )
    parser.addoption(
        "--node",
        action="store",
        choices=("fake", "real"),
        default=os.environ.get("KUBESLIM_TEST_NODE", "fake"),
        help="the test control plane's node: fake (Pods as local processes, the default) or "
        "real (containerd + kubelet; needs root, runc and the CNI plugins)",
    )
    parser.addoption(
        "--node-images",
        action="store",
        default="",
        metavar="KINDS",
        help="build these of the project's images (comma-separated: operator,runtime,trainer; "
        "'all' for the three) and import them into the real node (the project_images fixture)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_node: needs the rig's real node (--node=real)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip real_node tests up front without --node=real (before any fixture
    would start a cluster for them)."""
    if config.getoption("--node") == "real":
        return
    skip = pytest.mark.skip(reason="tests of the real node: run with --node=real")
    for item in items:
        if item.get_closest_marker("real_node"):
            item.add_marker(skip)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _teardown_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the session like Ctrl-C, so fixtures tear down and
    a real node leaves nothing behind (SIGKILL leaves it to the next session)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="session")
def k8s_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A Kubernetes cluster for the session: the rig, or --kubeconfig's cluster."""
    # Imported here so that sessions without cluster tests never load the
    # kubernetes client.
    from tests.cluster.cluster import Cluster
    from tests.cluster.rig import Rig, binaries_dir

    work_dir = tmp_path_factory.mktemp("k8s")
    external = request.config.getoption("--kubeconfig")
    if external:
        cluster = Cluster(Path(external).expanduser().resolve(), work_dir)
        try:
            yield cluster
        finally:
            cluster.stop_processes()
        return
    from tests.cluster.hoststate import sweep_if_idle

    for line in sweep_if_idle():
        log.warning("a killed test session's real node left state behind: %s", line)
    with _teardown_on_termination():
        rig = Rig(binaries_dir(), work_dir, node=request.config.getoption("--node"))
        rig.start()
        log.info("k8s rig ready in %.1f s (logs under %s)", rig.ready_s, work_dir / "logs")
        cluster = Cluster(rig.kubeconfig, work_dir, rig)
        try:
            yield cluster
        finally:
            cluster.stop_processes()
            rig.stop()


@pytest.fixture(scope="session")
def project_images(request: pytest.FixtureRequest) -> dict[str, str]:
    """The project's images by kind (operator, runtime, trainer) -> tag, built
    by tests/images/build.py (cached by input hash) and imported into the real
    node: those named by --node-images."""
    option = str(request.config.getoption("--node-images"))
    if not option:
        pytest.skip("needs the project's images: run with --node=real --node-images=KINDS")
    if request.config.getoption("--node") != "real" or request.config.getoption("--kubeconfig"):
        pytest.skip("--node-images imports into the rig's real node: add --node=real")
    from tests.images.build import DEFAULT_KINDS, build_lock, images

    cluster: Cluster = request.getfixturevalue("k8s_cluster")
    assert cluster.node is not None
    kinds = DEFAULT_KINDS if option == "all" else tuple(option.split(","))
    tags = {}
    # Held through the imports too: another session's build would otherwise replace
    # (and delete) an archive while this node reads it.
    with build_lock():
        for kind, built in images(kinds).items():
            cluster.node.images.import_archive(Path(built.archive), built.tag)
            tags[kind] = built.tag
    return tags
