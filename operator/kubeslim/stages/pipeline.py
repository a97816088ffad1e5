"""The pipeline's shape: stage order, what each stage reads from the spec, fingerprints.

Both the planner (operator) and the local runner use this, so a stage is
re-run on a cluster exactly when it would be re-run locally.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec

STAGES: tuple[str, ...] = ("prune", "convert", "quantize", "benchmark")
# With spec.search the pipeline ends in select: it measures every candidate's
# pipeline (prune, convert, quantize under candidates/<name>/) and picks one.
SELECT = "select"

# The spec sections each stage's own work depends on (execution and artifacts
# never change a result, so they are left out).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prune": ("model", "dataset", "pruning"),
    "convert": ("model",),
    "quantize": ("dataset", "quantization"),
    "benchmark": ("model", "dataset", "benchmark", "quantization"),
    "select": ("model", "dataset", "pruning", "quantization", "benchmark", "search"),
}


def stage_enabled(spec: ModelOptimizationSpec, stage: str) -> bool:
    """Whether the spec asks for the stage; convert always runs."""
    if stage == "prune":
        return spec.pruning.enabled
    if stage == "quantize":
        return spec.quantization.enabled
    if stage == "benchmark":
        # With a search, the select stage measures every candidate instead.
        return spec.benchmark.enabled and spec.search is None
    if stage == "select":
        return spec.search is not None
    return True


def enabled_stages(spec: ModelOptimizationSpec) -> list[str]:
    """The stages to run, in order."""
    return [s for s in pipeline_stages(spec) if stage_enabled(spec, s)]


def pipeline_stages(spec: ModelOptimizationSpec) -> tuple[str, ...]:
    """Every stage of the spec's pipeline in order, disabled ones included."""
    return (*STAGES, SELECT) if spec.search is not None else STAGES


def spec_fingerprints(spec: ModelOptimizationSpec) -> dict[str, str]:
    """A chained hash per stage: its own spec sections plus every earlier stage's hash.

    A spec edit therefore changes the fingerprint of the first stage it touches
    and of every stage after it, and of no stage before it.
    """
    dumped = spec.model_dump(mode="json")
    out: dict[str, str] = {}
    previous = ""
    for stage in (*STAGES, SELECT):
        enabled = stage_enabled(spec, stage)
        sections = {k: dumped[k] for k in STAGE_SECTIONS[stage]} if enabled else {}
        previous = digest({"stage": stage, "enabled": enabled, "spec": sections, "up": previous})
        out[stage] = previous
    return out


def digest(value: Any) -> str:
    """A stable sha256 of a JSON-able value."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()
