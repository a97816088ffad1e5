"""Every few seconds while an optimization is not settled: progress and a safety net."""

from __future__ import annotations

from typing import Any

from kubeslim.api.status import State
from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.reconcile import Runtime, reconcile


def unsettled(status: Any, meta: Any, **_: Any) -> bool:
    """Whether the timer has work: not finished, or finished for an older generation."""
    done = status.get("state") in (State.succeeded, State.failed)
    return not done or status.get("observedGeneration") != meta.get("generation")


def on_timer(namespace: str, name: str, running_optimizations: Any, rt: Runtime, **_: Any) -> None:
    """Copy the running stage's progress into status; pick up freed capacity, missed events."""
    reconcile(rt, namespace, name, running_keys(running_optimizations), progress=True)
