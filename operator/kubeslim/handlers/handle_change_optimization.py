"""A ModelOptimization was created, its spec changed, or the operator restarted."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.reconcile import Runtime, reconcile
from kubeslim.planner import Action

log = logging.getLogger("kubeslim.operator")


def on_change(namespace: str, name: str, running_optimizations: Any, rt: Runtime, **_: Any) -> None:
    """Plan and act once; Job events and the timer take it from there."""
    decided = reconcile(rt, namespace, name, running_keys(running_optimizations))
    if decided is not None and decided.extra.get("settled"):
        log.info(
            "%s/%s: finished for this spec (%s); left as it is", namespace, name, decided.action
        )
    if decided is not None and decided.action == Action.invalid_spec:
        # The Failed condition names the field; retrying cannot help until the spec changes.
        raise kopf.PermanentError(decided.status.summary)
