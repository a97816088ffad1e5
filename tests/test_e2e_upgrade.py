"""`helm upgrade` from 1 to 2 operator replicas on the real node (issue 13 item 9):
at no moment do two operators act.

    pytest --node=real --node-images=operator tests/test_e2e_upgrade.py

Going from 1 to 2 replicas switches the operator from standalone to kopf
peering. A rolling update would start the peering replicas while the old
standalone one (which ignores peering) still runs; the chart's Recreate
strategy stops the old Pod first. What is watched: every operator Pod's phase
and deletion, sampled during the whole upgrade, then when each of the two new
replicas acted (kopf starts a replica paused and logs each resume and pause): the
spells must not overlap. They did, for about 0.1 s, before the replicas announced
themselves before acting (operator/kubeslim/handlers/peering.py).
"""

from __future__ import annotations

import datetime
import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.cluster import Cluster, wait_for
from tests.test_e2e_node import _restricted_namespace
from tests.tools.chart import CHART, helm

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

RELEASE = "kubeslim-upgrade"
SELECTOR = "app.kubernetes.io/name=kubeslim"
HELM_TIMEOUT_S = 110  # under helm()'s own 120 s limit


class PodSampler:
    """The operator Pods that run (phase Running, containers started) at each moment."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.samples: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR).items
            self.samples.append((time.monotonic(), frozenset(running(pods))))
            self._stop.wait(0.2)


def running(pods: list[Any]) -> list[str]:
    """Pods whose operator container has started and not terminated (Terminating
    Pods included: a Pod being deleted may still act until its process exits)."""
    names = []
    for pod in pods:
        for status in pod.status.container_statuses or []:
            if status.state is not None and status.state.running is not None:
                names.append(pod.metadata.name)
    return names


@pytest.fixture
def release(k8s_cluster: Cluster, project_images: dict[str, str]) -> Iterator[tuple[str, str]]:
    if "operator" not in project_images:
        pytest.skip("needs the operator image: --node-images=operator")
    namespace = f"upgrade-{int(time.time()) % 100000}"
    _restricted_namespace(k8s_cluster, namespace)
    repository, tag = project_images["operator"].rsplit(":", 1)
    kubeconfig = str(k8s_cluster.kubeconfig)
    image = [f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never"]
    base = ["--kubeconfig", kubeconfig, "--namespace", namespace,
            *(arg for value in image for arg in ("--set", value)),
            "--wait", "--timeout", f"{HELM_TIMEOUT_S}s"]  # fmt: skip
    helm("install", RELEASE, str(CHART), *base, "--set", "replicas=1")
    try:
        yield namespace, " ".join(base)
    finally:
        helm("uninstall", RELEASE, "--kubeconfig", kubeconfig, "--namespace", namespace,
             "--wait", check=False)  # fmt: skip
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_upgrade_from_one_to_two_replicas_never_runs_two_active_operators(
    k8s_cluster: Cluster, release: tuple[str, str]
) -> None:
    namespace, args = release
    core = client.CoreV1Api(k8s_cluster.api_client())
    (old,) = running(core.list_namespaced_pod(namespace, label_selector=SELECTOR).items)

    with PodSampler(core, namespace) as sampler:
        helm("upgrade", RELEASE, str(CHART), *args.split(), "--set", "replicas=2")
        wait_for(
            "two new operator Pods to run",
            lambda: (
                len(
                    set(running(core.list_namespaced_pod(namespace, label_selector=SELECTOR).items))
                    - {old}
                )
                == 2
            ),
            HELM_TIMEOUT_S,
        )
    new = set(sampler.samples[-1][1]) - {old}

    # The standalone Pod never ran beside a peering one.
    overlap = [(t, sorted(s)) for t, s in sampler.samples if old in s and s - {old}]
    assert not overlap, f"the old operator ran beside new ones: {overlap[:3]}"
    assert any(old in s for _, s in sampler.samples)  # the sampler saw it before it went
    assert len(new) == 2

    # Of the two peering replicas one acts, and their active spells never overlap.
    time.sleep(15)  # keep-alives and their watch events have gone round
    logs = {p: k8s_cluster.pod_log(namespace, p) for p in new}
    spells = {p: active_spells(text) for p, text in logs.items()}
    acting = [p for p, s in spells.items() if s and s[-1][1] == math.inf]
    assert len(acting) == 1, logs
    (a, b) = spells.values()
    overlaps = [(x, y) for x in a for y in b if x[0] < y[1] and y[0] < x[1]]
    assert not overlaps, f"two replicas acted at once: {overlaps}\n{logs}"
    assert all("announced" in text for text in logs.values()), logs


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def active_spells(log: str) -> list[tuple[float, float]]:
    """When a peering replica acted, from kopf's log: it starts paused, acts from each
    "Resuming operations" to the next "Pausing" (math.inf: still acting)."""
    spells: list[tuple[float, float]] = []
    since: float | None = None
    for line in log.splitlines():
        found = LOG_TIME.match(line)
        if not found:
            continue
        at = datetime.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "Resuming operations" in line and since is None:
            since = at
        elif "Pausing" in line and since is not None:
            spells.append((since, at))
            since = None
    if since is not None:
        spells.append((since, math.inf))
    return spells
