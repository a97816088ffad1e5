"""An in-memory index of the optimizations whose status says Running (slot holders)."""

from __future__ import annotations

from typing import Any

from kubeslim.api.status import State
from kubeslim.planner.shared import IndexKey, shared_stages


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


def shared_stage_results(
    namespace: str | None, name: str | None, spec: Any, status: Any, **_: Any
) -> dict[IndexKey, Any]:
    """Index (artifacts.uri, stage, fingerprint) -> where its finished result is shared,
    for each stage of a resource that other resources with the same inputs may reuse."""
    return shared_stages(namespace or "", name or "", spec, status)


def running_keys(index: Any) -> list[str]:
    """The keys in the index (a kopf Index: key -> Store of values)."""
    return list(index.get("running", [])) if index is not None else []
