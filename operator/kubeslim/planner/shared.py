"""Stages shared across resources: one resource's finished stage stands for another's.

Two resources with the same artifacts.uri whose stage has the same fingerprint
(the same spec sections, chained through the stages before it) would compute
the same thing. The stage Job that made it also put it in the shared cache
(`<artifacts.uri>/cache/<stage>/<sha256>/`, stages/runner.py), so the planner
marks the stage done for the other resource without a Job: its status points at
the cache entry, and its next stage's Job copies the entry into its own root
before reading it. The operator reads no store: what it knows comes from the
other resources' status (an index kopf keeps in memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubeslim.api.status import Artifacts, StageState, StageStatus
from kubeslim.planner.model import SharedStage
from kubeslim.planner.status import ARTIFACT_FIELDS

# The stages whose results a Job also writes to the shared cache (not select: a
# search's outputs live below its own root).
SHAREABLE = frozenset({"prune", "convert", "quantize", "benchmark"})
IndexKey = tuple[str, str, str]  # (artifacts.uri, stage, fingerprint)
_ALIASES = {name: f.alias or name for name, f in Artifacts.model_fields.items()}


def shared_stages(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> dict[IndexKey, SharedStage]:
    """What one resource offers others: each succeeded stage with a cache entry."""
    uri = str((spec.get("artifacts") or {}).get("uri") or "").rstrip("/")
    artifacts = status.get("artifacts") or {}
    offered: dict[IndexKey, SharedStage] = {}
    for entry in status.get("stages") or []:
        stage, key, fingerprint = entry.get("name"), entry.get("cacheKey"), entry.get("fingerprint")
        if entry.get("state") != StageState.succeeded or stage not in SHAREABLE:
            continue
        if not (uri and key and fingerprint):
            continue
        outputs = {
            output: str(artifacts[_ALIASES[attr]]).rpartition("/")[2]
            for (s, output), attr in ARTIFACT_FIELDS.items()
            if s == stage and artifacts.get(_ALIASES[attr])
        }
        offered[(uri, stage, fingerprint)] = SharedStage(
            owner=f"{namespace}/{name}",
            cache_key=key,
            outputs=outputs,
            metrics=status.get("metrics") if stage == "benchmark" else None,
            duration_seconds=entry.get("durationSeconds"),
        )
    return offered


def shared_for(
    index: Mapping[IndexKey, Iterable[SharedStage]] | None,
    uri: str,
    fingerprints: Mapping[str, str],
    own: str,
) -> dict[tuple[str, str], SharedStage]:
    """The stages of one resource (fingerprints by stage) that another one offers."""
    if index is None:
        return {}
    found: dict[tuple[str, str], SharedStage] = {}
    for stage, fingerprint in fingerprints.items():
        if stage not in SHAREABLE:
            continue
        offers = [s for s in index.get((uri.rstrip("/"), stage, fingerprint), ()) if s.owner != own]
        if offers:
            found[(stage, fingerprint)] = min(offers, key=lambda s: s.owner)  # stable choice
    return found


def shared_result(offer: SharedStage, uri: str) -> dict[str, Any]:
    """The stage result a reused stage records: outputs and result in the shared cache."""
    entry = f"{uri.rstrip('/')}/cache/{offer.cache_key}"
    result: dict[str, Any] = {
        "outputs": {name: f"{entry}/{file}" for name, file in offer.outputs.items()},
        "result_uri": f"{entry}/result.json",
        "cache_key": offer.cache_key,
        "reused": True,
    }
    if offer.duration_seconds is not None:
        result["duration_seconds"] = offer.duration_seconds
    if offer.metrics is not None:
        result["metrics"] = dict(offer.metrics)
    return result


SHARED_LEAD = "reused: "


def shared_message(offer: SharedStage) -> str:
    """The stage's status message: whose result it reuses."""
    return (
        f"{SHARED_LEAD}{offer.owner} ran it with the same inputs (shared cache {offer.cache_key})"
    )


def is_shared(entry: StageStatus) -> bool:
    """Whether a finished stage's entry is another resource's result (no Job of its own)."""
    return entry.state == StageState.succeeded and entry.message.startswith(SHARED_LEAD)
