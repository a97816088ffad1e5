"""An in-memory index of the optimizations whose status says Running (slot holders)."""

from __future__ import annotations

from typing import Any

from kubeslim.api.status import State


def running_optimizations(
    namespace: str | None, name: str | None, status: Any, **_: Any
) -> dict[str, str]:
    """Index key "running" -> "namespace/name" for each optimization that holds a slot.

    Not running gives {}, not None: kopf keeps an object's last entries when its
    indexer returns None, so a finished optimization would hold its slot forever.
    """
    if status.get("state") == State.running:
        return {"running": f"{namespace}/{name}"}
    return {}


def running_keys(index: Any) -> list[str]:
    """The keys in the index (a kopf Index: key -> Store of values)."""
    return list(index.get("running", [])) if index is not None else []
