"""A ModelOptimization is being deleted: its Jobs go with it (ownerReferences)."""

from __future__ import annotations

from typing import Any

from kubeslim.handlers.handle_index import running_keys
from kubeslim.handlers.reconcile import Runtime, wake_waiting


def on_delete(namespace: str, name: str, running_optimizations: Any, rt: Runtime, **_: Any) -> None:
    """Free its concurrency slot at once and start the next waiting optimization."""
    key = f"{namespace}/{name}"
    with rt.table.lock:
        rt.table.settle(key, False)
    wake_waiting(rt, [k for k in running_keys(running_optimizations) if k != key])
