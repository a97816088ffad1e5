"""The benchmark stage: the original and every produced model side by side, in
one process, on the same data and the same CPU settings.

Accuracy is reported on the test split (and, labelled, on the tuning split that
accuracy control used); speed comes from interleaved rounds (stages/measure.py)
and every ratio is taken round by round, so both sides share the same rounds."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

import numpy as np

from kubeslim.api.status import ModelMetrics
from kubeslim.data.arrays import ImageSource, batches
from kubeslim.errors import KubeslimError
from kubeslim.stages.context import StageContext, StageOutput
from kubeslim.stages.measure import LATENCY

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
    # Reported accuracy comes from the test split; the tuning split's is shown
    # beside it, labelled, since accuracy control decided on it.
    data = {
        "test": _split_arrays(ctx, ctx.arrays.test, "test"),
        "tuning": _split_arrays(ctx, ctx.arrays.tuning, "tuning"),
    }
    request = {
        "models": models,
        "data": data,
        "config": spec.benchmark.model_dump(mode="json", by_alias=True),
    }
    measured = measure_in_child(ctx, request)
    rows = measured["models"]
    for row in rows:
        original = row["model"] == "original"
        row["flops"] = convert.metrics.get("baselineFlops" if original else "flops")
        row["params"] = convert.metrics.get("baselineParams" if original else "params")
    ratios = {row["model"]: paired_ratios(rows[0], row) for row in rows[1:]}
    metrics = summarize(rows[0], rows[-1], ratios[rows[-1]["model"]], measured["rounds"])
    details = {"models": rows, "ratios": ratios, "rounds": measured["rounds"]}
    report = ctx.scratch / "benchmark.json"
    report.write_text(json.dumps({**details, "summary": metrics, "log": measured["log"]}, indent=2))
    return StageOutput(files={"report": report}, metrics=metrics, details=details)


def _split_arrays(ctx: StageContext, split: ImageSource, name: str) -> dict[str, str]:
    """A split, preprocessed, as .npy files (memory-mapped, so a large split never
    sits in memory twice). numpy only: the stage runs in the runtime image, no torch."""
    n = len(split)
    x_path, y_path = ctx.scratch / f"{name}_x.npy", ctx.scratch / f"{name}_y.npy"
    x = np.lib.format.open_memmap(
        x_path, mode="w+", dtype=np.float32, shape=(n, *ctx.spec.model.input_shape)
    )
    y = np.empty(n, dtype=np.int64)
    i = 0
    for images, labels in batches(split, PREPARE_BATCH):
        x[i : i + len(labels)] = ctx.array_preprocess(images)
        y[i : i + len(labels)] = labels
        i += len(labels)
    x.flush()
    np.save(y_path, y)
    return {"x": str(x_path), "y": str(y_path)}


def _run_measure(ctx: StageContext, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows only (one per model)."""
    rows: list[dict[str, Any]] = measure_in_child(ctx, request)["models"]
    return rows


def measure_in_child(ctx: StageContext, request: dict[str, Any]) -> dict[str, Any]:
    """Run kubeslim.stages.measure in a process without torch; its whole result."""
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
    measured: dict[str, Any] = json.loads(out.read_text())
    return measured


def paired_ratio(faster: list[float], slower: list[float]) -> dict[str, float] | None:
    """faster/slower round by round (both lists hold the same rounds, in order):
    the median and the spread over rounds."""
    if len(faster) != len(slower):
        raise KubeslimError(f"rounds differ: {len(faster)} vs {len(slower)}")
    per_round = [a / b for a, b in zip(faster, slower, strict=True) if a and b]
    if not per_round:
        return None
    return {
        "median": round(statistics.median(per_round), 3),
        "min": round(min(per_round), 3),
        "max": round(max(per_round), 3),
    }


def paired_ratios(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Speedups of `other` over the baseline: throughput at each batch size and
    latency p50, each from the same rounds."""
    base, opt = baseline["rounds"], other["rounds"]
    out: dict[str, Any] = {}
    for name in base:
        if name == LATENCY:
            out["latency"] = paired_ratio(base[name], opt[name])  # lower is better
        else:
            out[name] = paired_ratio(opt[name], base[name])
    return out


def summarize(
    baseline: dict[str, Any], optimized: dict[str, Any], ratios: dict[str, Any], rounds: int
) -> dict[str, Any]:
    """The status metrics: both models and the ratios between them."""
    # The status model declares which figures a model has: one source for both.
    keys = [f.alias or name for name, f in ModelMetrics.model_fields.items()]

    def pick(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in keys if row.get(k) is not None}

    by_batch = {b: r["median"] for b, r in ratios.items() if b != "latency" and r}
    largest = max(by_batch, key=int) if by_batch else None
    latency_ratio = ratios.get("latency")
    drop = (baseline["accuracy"] - optimized["accuracy"]) * 100
    tuning_drop = None
    if baseline.get("tuningAccuracy") is not None:
        tuning_drop = round((baseline["tuningAccuracy"] - optimized["tuningAccuracy"]) * 100, 3)
    return {
        "baseline": pick(baseline),
        "optimized": pick(optimized),
        "speedup": by_batch[largest] if largest else None,
        "speedupBatch": int(largest) if largest else None,
        "speedupByBatch": by_batch or None,
        "latencySpeedup": latency_ratio["median"] if latency_ratio else None,
        # Like with like: the optimized IR has FP16 weights, so the headline compares
        # it with the original saved the same way; the FP32 IR ratio is kept beside it.
        "sizeReduction": round(baseline["sizeBytesFp16"] / optimized["sizeBytes"], 3),
        "sizeReductionVsFp32": round(baseline["sizeBytes"] / optimized["sizeBytes"], 3),
        "accuracyDrop": round(drop, 3),
        "tuningAccuracyDrop": tuning_drop,
        "accuracySplit": "test",
        "precision": baseline["floatPrecision"],
        "rounds": rounds,
    }
