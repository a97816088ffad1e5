"""A ModelOptimization is being deleted: its Jobs go with it (ownerReferences)."""

from __future__ import annotations

from typing import Any

from kubeslim.handlers.reconcile import Runtime


def on_delete(namespace: str, name: str, rt: Runtime, **_: Any) -> None:
    """Free its concurrency slot at once, so a waiting optimization can start."""
    with rt.table.lock:
        rt.table.settle(f"{namespace}/{name}", False)
