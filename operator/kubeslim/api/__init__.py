"""The ModelOptimization API: pydantic models are the single source of truth for the CRD."""

from kubeslim.api.manifest import ModelOptimization, load_manifest
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ModelOptimizationStatus

__all__ = ["ModelOptimization", "ModelOptimizationSpec", "ModelOptimizationStatus", "load_manifest"]
