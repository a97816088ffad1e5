"""The whole manifest: the same YAML serves `kubectl apply` and `kubeslim run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from kubeslim.api.base import ApiModel
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ModelOptimizationStatus
from kubeslim.constants import API_VERSION, KIND
from kubeslim.errors import SpecError, describe_validation_error


class ObjectMeta(ApiModel):
    """The parts of metadata kubeslim reads; the rest passes through."""

    model_config = {**ApiModel.model_config, "extra": "allow"}

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="name: a DNS label (stage Job names are derived from it).",
    )
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None


class ModelOptimization(ApiModel):
    """A request to prune, convert, quantize and benchmark one model."""

    model_config = {**ApiModel.model_config, "extra": "ignore"}

    api_version: Literal["kubeslim.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelOptimization"]
    metadata: ObjectMeta
    spec: ModelOptimizationSpec
    status: ModelOptimizationStatus | None = None


def parse_manifest(doc: Any, source: str = "manifest") -> ModelOptimization:
    """Validate a loaded YAML document, raising SpecError naming the field."""
    if not isinstance(doc, dict):
        raise SpecError(source, "expected a YAML mapping with apiVersion, kind, metadata, spec")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError("apiVersion", f"expected {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise SpecError("kind", f"expected {KIND!r}, got {doc.get('kind')!r}")
    try:
        return ModelOptimization.model_validate(doc)
    except ValidationError as err:
        raise describe_validation_error(err, root="").with_traceback(None) from None


def parse_spec(spec: Any) -> ModelOptimizationSpec:
    """Validate a spec alone (what the operator receives)."""
    try:
        return ModelOptimizationSpec.model_validate(spec)
    except ValidationError as err:
        raise describe_validation_error(err) from None


def load_manifest(path: str | Path) -> ModelOptimization:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SpecError(str(p), "no such file") from None
    except yaml.YAMLError as err:
        raise SpecError(str(p), f"not valid YAML: {err}".splitlines()[0]) from None
    return parse_manifest(doc, source=str(p))
