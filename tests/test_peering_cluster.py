"""Two peering replicas started together never act at the same time (issue 13 item 9).

A Deployment's rollout starts its replicas together; each used to look at kopf's
peering object before the other had written to it, so both resumed and the lower
one paused a moment later. Two `kubeslim operator` processes on the test control
plane, started at once, show it without images (tests/test_e2e_upgrade.py runs
the chart's upgrade on the real node).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.rig import free_port
from tests.test_e2e_upgrade import active_spells

pytestmark = pytest.mark.cluster

PEERING_CRDS = Path(__file__).resolve().parent.parent / "charts/kubeslim/crds/kopf-peering.yaml"
NAMESPACE = "peering-tests"
PEERING = "kubeslim-peering-test"


def test_replicas_started_together_never_act_at_once(k8s_cluster: Any) -> None:
    k8s_cluster.apply(PEERING_CRDS)
    k8s_cluster.wait_crd_established("kopfpeerings.kopf.dev")
    k8s_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    k8s_cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
        namespace=NAMESPACE,
    )
    replicas = {
        name: k8s_cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator", "--namespace", NAMESPACE],
            env={
                "KUBESLIM_PEERING": PEERING,
                "KUBESLIM_PRIORITY": priority,
                "POD_ID": name,
                "PYTHONUNBUFFERED": "1",
                "KUBESLIM_HEALTH_PORT": str(free_port()),
            },
            name=name,
        )
        for name, priority in (("low", "100"), ("high", "200"))
    }
    try:
        for proc in replicas.values():
            proc.wait_for_output("watching " + NAMESPACE, timeout=60)
        time.sleep(15)  # keep-alives and their watch events have gone round
        logs = {name: proc.output() for name, proc in replicas.items()}
    finally:
        for proc in replicas.values():
            proc.stop()

    spells = {name: active_spells(text) for name, text in logs.items()}
    assert spells["high"] and spells["high"][-1][1] == math.inf, logs["high"]
    overlaps = [
        (x, y) for x in spells["low"] for y in spells["high"] if x[0] < y[1] and y[0] < x[1]
    ]
    assert not overlaps, f"both replicas acted at once: {overlaps}\n{logs}"
    assert not spells["low"], logs["low"]  # the lower one never acted
