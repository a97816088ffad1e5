"""The benchmark stage: the original and every produced model side by side, in
one process, on the same data and the same CPU settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kubeslim.api.status import ModelMetrics
from kubeslim.data.datasets import loader
from kubeslim.errors import KubeslimError
from kubeslim.stages.context import StageContext, StageOutput

PREPARE_BATCH = 256


def benchmark(ctx: StageContext) -> StageOutput:
    """Accuracy, latency, throughput, size, FLOPs and params of each model."""
    spec = ctx.spec
    convert = ctx.upstream("convert")
    candidates = [("original", "convert", "baseline_ir")]
    candidates.append(("pruned" if spec.pruning.enabled else "fp16", "convert", "ir"))
    if spec.quantization.enabled:
        label = "pruned-int8" if spec.pruning.enabled else "int8"
        candidates.append((label, "quantize", "int8_ir"))
    models = [
        {"label": label, "path": str(ctx.fetch_output(stage, output))}
        for label, stage, output in candidates
    ]
    ctx.reporter.phase("prepare-data")
    x_path, y_path = _validation_arrays(ctx)
    request = {
        "models": models,
        "x": str(x_path),
        "y": str(y_path),
        "config": spec.benchmark.model_dump(mode="json", by_alias=True),
    }
    rows = _run_measure(ctx, request)
    for row in rows:
        original = row["model"] == "original"
        row["flops"] = convert.metrics.get("baselineFlops" if original else "flops")
        row["params"] = convert.metrics.get("baselineParams" if original else "params")
    metrics = summarize(rows[0], rows[-1])
    report = ctx.scratch / "benchmark.json"
    report.write_text(json.dumps({"models": rows, "summary": metrics}, indent=2))
    return StageOutput(files={"report": report}, metrics=metrics, details={"models": rows})


def _validation_arrays(ctx: StageContext) -> tuple[Path, Path]:
    """The preprocessed validation split as .npy files (memory-mapped, so a large
    split never sits in memory twice)."""
    val = ctx.splits.val
    n = len(val)  # type: ignore[arg-type]
    x_path, y_path = ctx.scratch / "val_x.npy", ctx.scratch / "val_y.npy"
    x = np.lib.format.open_memmap(
        x_path, mode="w+", dtype=np.float32, shape=(n, *ctx.spec.model.input_shape)
    )
    y = np.empty(n, dtype=np.int64)
    i = 0
    for images, labels in loader(val, PREPARE_BATCH):
        x[i : i + len(labels)] = ctx.preprocess(images).numpy()
        y[i : i + len(labels)] = labels.numpy()
        i += len(labels)
    x.flush()
    np.save(y_path, y)
    return x_path, y_path


def _run_measure(ctx: StageContext, request: dict[str, Any]) -> list[dict[str, Any]]:
    req, out = ctx.scratch / "measure-request.json", ctx.scratch / "measure-result.json"
    req.write_text(json.dumps(request))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeslim.stages.measure", str(req), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # pass progress lines through
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise KubeslimError(f"the measurement process failed with exit code {proc.returncode}")
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def summarize(baseline: dict[str, Any], optimized: dict[str, Any]) -> dict[str, Any]:
    """The status metrics: both models and the ratios between them."""
    # The status model declares which figures a model has: one source for both.
    keys = [f.alias or name for name, f in ModelMetrics.model_fields.items()]

    def pick(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in keys if row.get(k) is not None}

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "baseline": pick(baseline),
        "optimized": pick(optimized),
        "speedup": ratio(optimized.get("throughputFps"), baseline.get("throughputFps")),
        "latencySpeedup": ratio(baseline.get("latencyMsP50"), optimized.get("latencyMsP50")),
        "sizeReduction": ratio(baseline["sizeBytes"], optimized["sizeBytes"]),
        "accuracyDrop": round((baseline["accuracy"] - optimized["accuracy"]) * 100, 3),
        "precision": baseline["precision"],
    }
