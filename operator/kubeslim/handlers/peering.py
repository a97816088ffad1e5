"""A replica announces itself in kopf's peering object before it starts acting.

kopf starts a replica paused and resumes it at the first look at the peering
object that shows no live peer of higher priority. Two replicas that start
together (a Deployment's rollout) each look before the other has written its
first keep-alive, so both resume, and the lower one pauses a fraction of a
second later, when the other's keep-alive arrives: for that moment two
operators act (measured on the real node by tests/test_e2e_upgrade.py). Writing
this replica's entry first (kopf's own format, under its own identity) and
waiting longer than a watch event takes makes every replica's first look see
every other: the lower never resumes, and a running lower one pauses before a
new higher one starts acting.
"""

from __future__ import annotations

import datetime
import logging
import os
import time

from kubernetes.client.exceptions import ApiException

from kubeslim.config import OperatorConfig
from kubeslim.handlers.kube import Kube

log = logging.getLogger("kubeslim.operator")
ANNOUNCE_WAIT_S = 5.0  # longer than a watch event takes to reach the other replicas
PEER_LIFETIME_S = 60  # kopf's default settings.peering.lifetime: its keep-alives take over


def announce(config: OperatorConfig, kube: Kube, wait: float = ANNOUNCE_WAIT_S) -> bool:
    """Write this replica's peering entry, then wait; False when there is nothing to do
    (standalone, or no POD_ID: kopf would name this process otherwise) or it failed."""
    identity = os.environ.get("POD_ID")  # kopf's own identity of a replica in a Pod
    if not config.peering or not identity:
        return False
    now = datetime.datetime.now(datetime.UTC).isoformat()
    peer = {"priority": config.priority, "lifetime": PEER_LIFETIME_S, "lastseen": now}
    try:
        for namespace in config.namespaces or (None,):
            kube.patch_peering(namespace, config.peering, identity, peer)
    except ApiException as err:
        # kopf reports a missing peering object or CRD itself; do not hold the start.
        log.warning("could not announce %s in peering %s: %s", identity, config.peering, err.reason)
        return False
    log.info("announced %s (priority %d); acting after %g s", identity, config.priority, wait)
    time.sleep(wait)
    return True
