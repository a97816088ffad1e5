"""pytest plugin: the `k8s_cluster` fixture and its options.

Without options the session starts the rig (tests/cluster/rig.py) the first
time a test asks for `k8s_cluster` and stops it at the end; its node is a real
node (tests/cluster/node.py: containerd, kubelet, kube-proxy, kube-scheduler;
Pods run their images; needs root), as in `make test` and CI. `--node=fake`
(or KUBESLIM_TEST_NODE=fake) gives it the fake kubelet instead (Pods run as
local processes of the checkout, images ignored; no root needed): a
developer's quick loop. On the real node the project's images
(tests/images/build.py, cached by input hash) are built and imported on first
use: `project_image(s)` for the operator, runtime and trainer images
(`--node-images=KINDS` narrows them, `--node-images=` skips the tests that need
them), `standin_stage` for the operator tests' stand-in stage image. With
`--kubeconfig PATH` the tests use that cluster instead (kind, k3s, a cloud
cluster).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

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
        default=os.environ.get("KUBESLIM_TEST_NODE", "real"),
        help="the test control plane's node: real (containerd + kubelet; needs root, runc and "
        "the CNI plugins; the default, what make test and CI run) or fake (Pods as local "
        "processes of the checkout, images ignored, no root: a quick loop)",
    )
    parser.addoption(
        "--node-images",
        action="store",
        default=os.environ.get("KUBESLIM_NODE_IMAGES", "all"),
        metavar="KINDS",
        help="the project's images the project_images fixture builds and imports into the real "
        "node (comma-separated: operator,runtime,trainer; 'all', the default, for the three; "
        "empty skips the tests that need them)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_node: needs the rig's real node (--node=real)")
    config.addinivalue_line(
        "markers", "own_node: starts a real node of its own, so it runs before the session's"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip real_node tests up front without --node=real (before any fixture
    would start a cluster for them). With it, the own_node tests go first: one node
    runs on a machine at a time, and the session's, once started, lives to the end."""
    if config.getoption("--node") == "real":
        items.sort(key=lambda item: item.get_closest_marker("own_node") is None)
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


class ProjectImages:
    """The project's images on the real node, each built by tests/images/build.py (cached
    by input hash) and imported the first time a test asks for it: a test that needs the
    operator image alone does not wait for a trainer build."""

    def __init__(self, cluster: Cluster, kinds: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.kinds = kinds  # those --node-images allows
        self.tags: dict[str, str] = {}

    def tag(self, kind: str) -> str:
        """The imported image of `kind`; skips the test when --node-images leaves it out."""
        if kind not in self.kinds:
            pytest.skip(f"needs the {kind} image: --node-images leaves it out")
        if kind not in self.tags:
            from tests.images.build import build, build_lock

            assert self.cluster.node is not None
            # Held through the import too: another session's build would otherwise
            # replace (and delete) the archive while this node reads it.
            with build_lock():
                built = build(kind)
                self.cluster.node.images.import_archive(Path(built.archive), built.tag)
            self.tags[kind] = built.tag
        return self.tags[kind]


@pytest.fixture(scope="session")
def project_image(request: pytest.FixtureRequest) -> ProjectImages:
    """The project's images one kind at a time (`.tag("operator")`), those --node-images
    names (all three by default)."""
    option = str(request.config.getoption("--node-images"))
    if not option:
        pytest.skip("needs the project's images: run with --node-images=KINDS")
    if request.config.getoption("--node") != "real" or request.config.getoption("--kubeconfig"):
        pytest.skip("--node-images imports into the rig's real node: add --node=real")
    from tests.images.build import DEFAULT_KINDS

    cluster: Cluster = request.getfixturevalue("k8s_cluster")
    assert cluster.node is not None
    return ProjectImages(cluster, DEFAULT_KINDS if option == "all" else tuple(option.split(",")))


@pytest.fixture(scope="session")
def project_images(project_image: ProjectImages) -> dict[str, str]:
    """The project's images by kind (operator, runtime, trainer) -> tag: all that
    --node-images names, built and imported."""
    return {kind: project_image.tag(kind) for kind in project_image.kinds}


@dataclass(frozen=True)
class StandIn:
    """The stand-in stage (tests/cluster/standin.py) as the operator's stage image and
    command (KUBESLIM_TRAINER_IMAGE, KUBESLIM_RUNTIME_IMAGE, KUBESLIM_STAGE_COMMAND)."""

    image: str
    command: str

    def operator_env(self) -> dict[str, str]:
        return {
            "KUBESLIM_TRAINER_IMAGE": self.image,
            "KUBESLIM_RUNTIME_IMAGE": self.image,
            "KUBESLIM_IMAGE_PULL_POLICY": "Never",
            "KUBESLIM_STAGE_COMMAND": self.command,
        }

    @staticmethod
    def prepare(claim_dir: Path, namespace: str, name: str, control: dict[str, Any]) -> Path:
        """Write a resource's control.json where its stage Pods find it (<claim>/<namespace>/
        <name>), each folder writable by the stages' user (10001) as well as by the tests."""
        folder = claim_dir
        for part in (namespace, name):
            folder = folder / part
            folder.mkdir(exist_ok=True)
            folder.chmod(0o777)
        (folder / "control.json").write_text(json.dumps(control))
        return folder


@pytest.fixture(scope="session")
def standin_stage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StandIn:
    """On the real node: the stand-in image (a thin layer on the runtime image, built by
    tests/images/build.py and imported); on the fake node: the script run by the
    checkout's Python (the image is ignored there)."""
    cluster: Cluster = request.getfixturevalue("k8s_cluster")
    if cluster.node is not None:
        from tests.images.build import build_lock, standin_image

        with build_lock():  # as project_images: no build replaces the archive mid-import
            built = standin_image()
            cluster.import_image(Path(built.archive), built.tag)
        return StandIn(built.tag, "kubeslim-standin")
    if not cluster.is_rig:
        pytest.skip("the stand-in stage image is imported into the rig's node, not pushed")
    wrapper = tmp_path_factory.mktemp("standin") / "kubeslim-standin"
    script = Path(__file__).with_name("standin.py")
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    return StandIn("localhost/kubeslim/standin:fake-node", str(wrapper))


@pytest.fixture(scope="session")
def real_stages(request: pytest.FixtureRequest) -> dict[str, str]:
    """The operator settings (KUBESLIM_*) that run the real `kubeslim stage`: the trainer
    and runtime images on the real node, the checkout's console script on the fake one."""
    cluster: Cluster = request.getfixturevalue("k8s_cluster")
    if cluster.node is None:
        if not cluster.is_rig:
            pytest.skip("the project's stage images are imported into the rig's node")
        bin_dir = Path(sys.executable).parent
        return {"KUBESLIM_STAGE_COMMAND": str(bin_dir / "kubeslim")}
    images: ProjectImages = request.getfixturevalue("project_image")
    return {
        "KUBESLIM_TRAINER_IMAGE": images.tag("trainer"),
        "KUBESLIM_RUNTIME_IMAGE": images.tag("runtime"),
        "KUBESLIM_IMAGE_PULL_POLICY": "Never",
    }
