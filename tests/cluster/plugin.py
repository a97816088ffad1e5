"""pytest plugin: the `k8s_cluster` fixture and the `--kubeconfig` option.

Without options the session starts the rig (tests/cluster/rig.py) the first
time a test asks for `k8s_cluster` and stops it at the end. With
`--kubeconfig PATH` the tests use that cluster instead (kind, k3s, a cloud
cluster): no fake kubelet, so its Pods run their real images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
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
    rig = Rig(binaries_dir(), work_dir)
    rig.start()
    log.info("k8s rig ready in %.1f s (logs under %s)", rig.ready_s, work_dir / "logs")
    cluster = Cluster(rig.kubeconfig, work_dir, rig)
    try:
        yield cluster
    finally:
        cluster.stop_processes()
        rig.stop()
