"""Every few seconds while an optimization is not settled: progress and a safety net."""

from __future__ import annotations

from typing import Any

from kubeslim.api.status import State
from kubeslim.constants import ANNOTATION_CANCEL, ANNOTATION_RETRY
from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.reconcile import Runtime, reconcile


def unsettled(status: Any, meta: Any, **_: Any) -> bool:
    """Whether the timer has work: not finished, finished for an older generation, or
    a retry or cancel request (an annotation no spec watch sees) not acted on yet."""
    done = status.get("state") in (State.succeeded, State.failed)
    annotations = meta.get("annotations") or {}
    asked = any(
        annotations.get(key) and annotations.get(key) != status.get(seen)
        for key, seen in ((ANNOTATION_RETRY, "lastRetry"), (ANNOTATION_CANCEL, "lastCancel"))
    )
    return not done or status.get("observedGeneration") != meta.get("generation") or asked


def on_timer(namespace: str, name: str, running_optimizations: Any, rt: Runtime, **_: Any) -> None:
    """Copy the running stage's progress into status; pick up freed capacity, missed events."""
    running = running_keys(running_optimizations)
    if not rt.table.admissible(f"{namespace}/{name}", running):
        return  # queued behind others: a freed slot wakes it, no API call until then
    reconcile(rt, namespace, name, running, progress=True)
