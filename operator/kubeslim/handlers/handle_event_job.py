"""A stage Job changed: wake its ModelOptimization."""

from __future__ import annotations

from typing import Any

from kubeslim.constants import LABEL_NAME
from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.reconcile import Runtime, reconcile


def on_job_event(
    namespace: str,
    name: str,
    type: str | None,
    labels: Any,
    running_optimizations: Any,
    rt: Runtime,
    **_: Any,
) -> None:
    """Reconcile the owner named in the Job's label (an error is retried by the timer);
    not for the arrival of a Job this process just created (its status says so already)."""
    if type == "ADDED" and rt.first_sight(namespace, name):
        return
    owner = labels.get(LABEL_NAME)
    if owner:
        reconcile(rt, namespace, owner, running_keys(running_optimizations))
