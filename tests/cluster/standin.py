"""Shared by the stand-in stages of the operator and RBAC tests: the part that
commits a stage exactly as `kubeslim stage` does (result.json, termination message)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def commit_result(
    stage: str, artifacts: Path, result_file: str, outputs: dict[str, str], metrics: dict[str, Any]
) -> int:
    """Write <artifacts>/<stage>/result.json and the compact result; return exit code 0."""
    from kubeslim.stages.result import StageResult

    out = artifacts / stage
    out.mkdir(parents=True, exist_ok=True)
    result = StageResult(
        stage=stage,
        fingerprint="standin",
        outputs={k: str(out / v) for k, v in outputs.items()},
        metrics=metrics,
        duration_seconds=0.1,
        result_uri=str(out / "result.json"),
    )
    (out / "result.json").write_text(result.model_dump_json())
    Path(result_file).write_text(result.compact())
    return 0
