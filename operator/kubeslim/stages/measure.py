"""OpenVINO measurements, run in a process of their own.

The benchmark stage prepares the validation data and starts this module with
`python -m kubeslim.stages.measure REQUEST.json RESULT.json`. Nothing here
imports torch: torch's OpenMP threads would compete with OpenVINO's for the
same cores (spinning after each torch op), and the two runtimes loaded in one
process corrupted the heap now and then on these machines.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

ACCURACY_BATCH = 64


def ov_accuracy(compiled: ov.CompiledModel, items: Iterable[Any]) -> float:
    """Top-1 accuracy over (images, labels) batches."""
    correct, seen = 0, 0
    for images, labels in items:
        # share_inputs=False: OpenVINO copies the batch. Sharing (the default of
        # CompiledModel.__call__) left the cached request pointing at memory
        # Python had freed, and the heap was corrupted a few calls later.
        logits = compiled(images, share_inputs=False)[0]
        correct += int((np.asarray(logits).argmax(axis=1) == np.asarray(labels)).sum())
        seen += int(np.asarray(labels).size)
    return correct / max(seen, 1)


def latency(compiled: ov.CompiledModel, sample: np.ndarray, duration: float) -> dict[str, float]:
    """Synchronous requests at batch 1 for `duration` seconds: p50 and p90 in ms."""
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(np.array(sample)))  # owned by the request
    for _ in range(5):  # warm-up: first runs allocate and tune
        request.infer()
    times: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter()
        request.infer()
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "latencyMsP50": round(float(np.percentile(times, 50)), 4),
        "latencyMsP90": round(float(np.percentile(times, 90)), 4),
    }


def throughput(compiled: ov.CompiledModel, batch: np.ndarray, duration: float) -> float:
    """Images per second with as many parallel requests as OpenVINO suggests,
    started and awaited round-robin from this thread (no Python callbacks)."""
    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [compiled.create_infer_request() for _ in range(max(1, n))]
    for r in requests:  # each request owns a copy of the input; warm-up
        r.set_input_tensor(ov.Tensor(np.array(batch)))
        r.infer()
    done = 0
    start = time.perf_counter()
    for r in requests:
        r.start_async()
    while time.perf_counter() - start < duration:
        for r in requests:
            r.wait()
            done += 1
            r.start_async()
    for r in requests:
        r.wait()
        done += 1
    return round(done * batch.shape[0] / (time.perf_counter() - start), 2)


def measure(
    core: ov.Core, path: Path, x: np.ndarray, y: np.ndarray, cfg: dict[str, Any]
) -> dict[str, Any]:
    """One model's figures: accuracy, latency, throughput, size, precision."""
    config: dict[str, Any] = {}
    if cfg["precision"] == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if cfg.get("threads"):
        config["INFERENCE_NUM_THREADS"] = cfg["threads"]
    model = core.read_model(path)
    model.reshape([-1, *x.shape[1:]])
    thr = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    row: dict[str, Any] = {
        "accuracy": round(ov_accuracy(thr, _batches(x, y)), 5),
        "sizeBytes": path.stat().st_size + path.with_suffix(".bin").stat().st_size,
        "precision": _type_name(thr.get_property("INFERENCE_PRECISION_HINT")),
    }
    sample = np.array(x[:1])
    if "latency" in cfg["modes"]:
        lat = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        row.update(latency(lat, sample, cfg["durationSeconds"]))
    if "throughput" in cfg["modes"]:
        row["throughput"] = {
            str(b): throughput(thr, np.repeat(sample, b, axis=0), cfg["durationSeconds"])
            for b in cfg["batchSizes"]
        }
        row["throughputFps"] = max(row["throughput"].values())
    return row


def _batches(x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(x), ACCURACY_BATCH):
        yield np.array(x[i : i + ACCURACY_BATCH]), y[i : i + ACCURACY_BATCH]


def _type_name(value: Any) -> str:
    """'bf16' or 'f32' rather than the repr of an ov.Type."""
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    x = np.load(request["x"], mmap_mode="r")
    y = np.load(request["y"])
    core = ov.Core()
    rows = []
    for item in request["models"]:
        print(f"KUBESLIM_PROGRESS {json.dumps({'phase': 'measure-' + item['label']})}", flush=True)
        row = measure(core, Path(item["path"]), x, y, request["config"])
        rows.append({"model": item["label"], **row})
    Path(argv[1]).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
