"""The benchmark stage: the original and every produced model side by side, in
one process, on the same data and the same CPU settings."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from kubeslim.api.spec import BenchmarkMode, BenchmarkSpec, Precision
from kubeslim.data.datasets import loader
from kubeslim.stages.context import StageContext, StageOutput

ACCURACY_BATCH = 64


def benchmark(ctx: StageContext) -> StageOutput:
    """Accuracy, latency, throughput, size, FLOPs and params of each model."""
    spec = ctx.spec
    convert = ctx.upstream("convert")
    candidates: list[tuple[str, str, str]] = [("original", "convert", "baseline_ir")]
    if spec.pruning.enabled:
        candidates.append(("pruned", "convert", "ir"))
    else:
        candidates.append(("fp16", "convert", "ir"))
    if spec.quantization.enabled:
        candidates.append(("pruned-int8" if spec.pruning.enabled else "int8", "quantize", "int8_ir"))
    core = ov.Core()
    rows = []
    for label, stage, output in candidates:
        ctx.reporter.phase(f"measure-{label}")
        path = ctx.fetch_output(stage, output)
        flops_key, params_key = ("baselineFlops", "baselineParams") if label == "original" else (
            "flops",
            "params",
        )
        row = measure_isolated(core, path, ctx, spec.benchmark)
        row.update(
            model=label,
            flops=convert.metrics.get(flops_key),
            params=convert.metrics.get(params_key),
        )
        rows.append(row)
    baseline, optimized = rows[0], rows[-1]
    metrics = summarize(baseline, optimized)
    return StageOutput(
        files={"report": _write_report(ctx.scratch, rows, metrics)},
        metrics=metrics,
        details={"models": rows},
    )


def measure_isolated(
    core: ov.Core, path: Path, ctx: StageContext, spec: BenchmarkSpec
) -> dict[str, Any]:
    """measure() with Python's cycle collector paused.

    If the collector runs on an OpenVINO worker thread (any thread that holds
    the GIL can trigger it) and frees a compiled model whose executor owns that
    thread, the executor joins itself and the process aborts. Collecting only
    here, on the main thread, between models, rules that out.
    """
    gc.collect()
    gc.disable()
    try:
        return measure(core, path, ctx, spec)
    finally:
        gc.enable()
        gc.collect()


def measure(core: ov.Core, path: Path, ctx: StageContext, spec: BenchmarkSpec) -> dict[str, Any]:
    """One model's figures."""
    config = _config(spec)
    model = core.read_model(path)
    model.reshape([-1, *ctx.spec.model.input_shape])
    thr = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    batches = (
        (ctx.preprocess(images).numpy(), labels.numpy())
        for images, labels in loader(ctx.splits.val, ACCURACY_BATCH)
    )
    row: dict[str, Any] = {
        "accuracy": round(ov_accuracy(thr, batches), 5),
        "sizeBytes": path.stat().st_size + path.with_suffix(".bin").stat().st_size,
        "precision": _type_name(thr.get_property("INFERENCE_PRECISION_HINT")),
    }
    sample = ctx.example_input().numpy()
    if BenchmarkMode.latency in spec.modes:
        lat = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        row.update(latency(lat, sample, spec.duration_seconds))
    if BenchmarkMode.throughput in spec.modes:
        row["throughput"] = {
            str(b): throughput(thr, np.repeat(sample, b, axis=0), spec.duration_seconds)
            for b in spec.batch_sizes
        }
        row["throughputFps"] = max(row["throughput"].values())
    return row


def _config(spec: BenchmarkSpec) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if spec.precision is Precision.f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if spec.threads:
        config["INFERENCE_NUM_THREADS"] = spec.threads
    return config


def ov_accuracy(compiled: ov.CompiledModel, items: Iterable[Any]) -> float:
    """Top-1 accuracy over (images, labels) batches."""
    correct, seen = 0, 0
    for images, labels in items:
        logits = compiled(images)[0]
        correct += int((np.asarray(logits).argmax(axis=1) == np.asarray(labels)).sum())
        seen += int(np.asarray(labels).size)
    return correct / max(seen, 1)


def latency(compiled: ov.CompiledModel, sample: np.ndarray, duration: float) -> dict[str, float]:
    """Synchronous requests at batch 1 for `duration` seconds: p50 and p90 in ms."""
    request = compiled.create_infer_request()
    for _ in range(5):  # warm-up: first runs allocate and tune
        request.infer({0: sample})
    times = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        request.infer({0: sample})
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "latencyMsP50": round(float(np.percentile(times, 50)), 4),
        "latencyMsP90": round(float(np.percentile(times, 90)), 4),
    }


def throughput(compiled: ov.CompiledModel, batch: np.ndarray, duration: float) -> float:
    """Images per second with as many parallel requests as OpenVINO suggests.

    Requests are started and awaited round-robin from this thread: no Python
    callback ever runs on OpenVINO's worker threads (see measure_isolated).
    """
    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [compiled.create_infer_request() for _ in range(max(1, n))]
    for r in requests:  # warm-up
        r.infer({0: batch})
    done = 0
    start = time.perf_counter()
    for r in requests:
        r.start_async({0: batch})
    while time.perf_counter() - start < duration:
        for r in requests:
            r.wait()
            done += 1
            r.start_async({0: batch})
    for r in requests:
        r.wait()
        done += 1
    return round(done * batch.shape[0] / (time.perf_counter() - start), 2)


def summarize(baseline: dict[str, Any], optimized: dict[str, Any]) -> dict[str, Any]:
    """The status metrics: both models and the ratios between them."""
    keys = ("accuracy", "latencyMsP50", "latencyMsP90", "throughputFps", "sizeBytes", "flops", "params")

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


def _write_report(scratch: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> Path:
    import json

    path = scratch / "benchmark.json"
    path.write_text(json.dumps({"models": rows, "summary": metrics}, indent=2))
    return path


def _type_name(value: Any) -> str:
    """'bf16' or 'f32' rather than the repr of an ov.Type."""
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)
