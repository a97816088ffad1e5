"""Small real specs and a CLI runner shared by the pipeline tests."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# digits: 1,797 real 8x8 images from scikit-learn; upscaled to 16x16 so the
# compact model keeps a spatial map through its three stages.
DIGITS_SPEC: dict[str, Any] = {
    "model": {
        "entryPoint": "kubeslim.models.compact:compact_resnet",
        "numClasses": 10,
        "inputShape": [1, 16, 16],
    },
    "dataset": {"name": "digits", "mean": [0.3], "std": [0.4], "calibrationSize": 100},
    "pruning": {
        "target": {"flopsReduction": 0.5},
        "schedule": {"steps": 2},
        "fineTune": {"epochs": 2, "batchSize": 64, "learningRate": 0.02},
    },
    "quantization": {"subsetSize": 100},
    "benchmark": {"durationSeconds": 0.3, "batchSizes": [1]},
}


def manifest(name: str = "digits", **sections: Any) -> dict[str, Any]:
    """A full ModelOptimization; keyword sections are merged over DIGITS_SPEC."""
    spec = copy.deepcopy(DIGITS_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = _merge(spec[key], value)
        else:
            spec[key] = value
    return {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": spec,
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def kubeslim(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kubeslim", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def result_files(root: Path) -> list[Path]:
    """The run's stage results below root (not the entries of the shared cache, root/cache)."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("result.json") if p.relative_to(root).parts[0] != "cache")
