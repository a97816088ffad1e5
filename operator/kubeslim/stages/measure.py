"""OpenVINO measurements, run in a process of their own.

The benchmark stage prepares the test (and tuning) data and starts this module
with `python -m kubeslim.stages.measure REQUEST.json RESULT.json`. Nothing here
imports torch: torch's OpenMP threads would compete with OpenVINO's for the
same cores (spinning after each torch op), and the two runtimes loaded in one
process corrupted the heap now and then on these machines.

Speed is measured in interleaved rounds: every round visits every measurement
(latency, then throughput at each batch size) and, inside it, every model in
order (A, B, C, A, B, C, ...), so load from other processes hits all models
alike; each model is compiled once per batch size with a static input shape.
The stage derives medians and per-round ratios from the rounds reported here.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

ACCURACY_BATCH = 64
LATENCY = "latency"
# Layer types whose runtime precision says what a model computes in.
COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"}
PRECISION_NAMES = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f16": "f16", "f32": "f32"}


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
    """Synchronous requests (batch 1 unless `sample` holds more) for `duration`
    seconds: p50 and p90 in ms."""
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


@dataclass
class Subject:
    """One model, compiled once per measurement with a static input shape."""

    label: str
    path: Path
    compiled: dict[str, ov.CompiledModel] = field(default_factory=dict)


def measurements(cfg: dict[str, Any]) -> list[str]:
    """What each round measures: "latency" and one throughput entry per batch size."""
    out = [LATENCY] if LATENCY in cfg["modes"] else []
    if "throughput" in cfg["modes"]:
        out += [str(b) for b in cfg["batchSizes"]]
    return out


def interleaved_rounds(
    labels: list[str],
    names: list[str],
    rounds: int,
    measure: Callable[[str, str], float],
    on_round: Callable[[int], None] = lambda r: None,
) -> list[dict[str, Any]]:
    """Every round runs every measurement on every model, models innermost and
    always in the same order; one log entry per call, in the order they ran."""
    log: list[dict[str, Any]] = []
    for r in range(rounds):
        on_round(r)
        for name in names:
            for label in labels:
                value = measure(label, name)
                log.append({"round": r, "measurement": name, "model": label, "value": value})
    return log


def per_round(log: list[dict[str, Any]], label: str, name: str) -> list[float]:
    """One model's values for one measurement, in round order."""
    entries = sorted(
        (e for e in log if e["model"] == label and e["measurement"] == name),
        key=lambda e: e["round"],
    )
    return [float(e["value"]) for e in entries]


def compile_subject(
    core: ov.Core, item: dict[str, Any], shape: list[int], cfg: dict[str, Any]
) -> Subject:
    """The model compiled for latency (batch 1) and for each throughput batch size."""
    config: dict[str, Any] = {}
    if cfg["precision"] == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if cfg.get("threads"):
        config["INFERENCE_NUM_THREADS"] = cfg["threads"]
    subject = Subject(item["label"], Path(item["path"]))
    for name in measurements(cfg):
        model = core.read_model(subject.path)
        batch = int(cfg.get("latencyBatch", 1)) if name == LATENCY else int(name)
        model.reshape([batch, *shape])
        hint = "LATENCY" if name == LATENCY else "THROUGHPUT"
        subject.compiled[name] = core.compile_model(
            model, "CPU", {**config, "PERFORMANCE_HINT": hint}
        )
    # Accuracy is not timed: one dynamic-batch compile takes every split's tail.
    model = core.read_model(subject.path)
    model.reshape([-1, *shape])
    subject.compiled["accuracy"] = core.compile_model(
        model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"}
    )
    return subject


def compute_precision(compiled: ov.CompiledModel) -> tuple[str, dict[str, int]]:
    """What the convolutions and matrix products ran in ('int8', 'bf16', 'f32', or
    'int8+bf16' when accuracy control left some layers in float), with counts."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in COMPUTE_LAYERS:
            continue
        raw = rt["runtimePrecision"].astype(str)
        name = PRECISION_NAMES.get(raw, raw)
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts, key=lambda k: (k != "int8", -counts[k]))
    return "+".join(ranked) or "unknown", counts


def ir_size(path: Path) -> int:
    """Bytes on disk: the .xml plus its .bin."""
    return path.stat().st_size + path.with_suffix(".bin").stat().st_size


def fp16_size(core: ov.Core, path: Path) -> int:
    """The size the IR would have with FP16 weights (as the convert stage saves the
    optimized model), so size ratios compare like with like."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fp16.xml"
        ov.save_model(core.read_model(path), out, compress_to_fp16=True)
        return ir_size(out)


def _batches(x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(x), ACCURACY_BATCH):
        yield np.array(x[i : i + ACCURACY_BATCH]), y[i : i + ACCURACY_BATCH]


def _type_name(value: Any) -> str:
    """'bf16' or 'f32' rather than the repr of an ov.Type."""
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def static_figures(
    core: ov.Core, subject: Subject, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """Accuracy on each split, sizes, precisions and the compiled input shapes."""
    acc = subject.compiled["accuracy"]
    row: dict[str, Any] = {"model": subject.label}
    for split, (x, y) in data.items():
        key = "accuracy" if split == "test" else f"{split}Accuracy"
        row[key] = round(ov_accuracy(acc, _batches(x, y)), 5)
        row[f"{split}Images"] = len(y)
    row["sizeBytes"] = ir_size(subject.path)
    row["sizeBytesFp16"] = fp16_size(core, subject.path)
    timed = [c for name, c in subject.compiled.items() if name != "accuracy"] or [acc]
    row["precision"], row["layerPrecisions"] = compute_precision(timed[-1])
    row["floatPrecision"] = _type_name(acc.get_property("INFERENCE_PRECISION_HINT"))
    row["inputShapes"] = {
        name: [int(d) for d in c.input(0).get_shape()]
        for name, c in subject.compiled.items()
        if name != "accuracy"
    }
    return row


def speed_figures(log: list[dict[str, Any]], label: str, names: list[str]) -> dict[str, Any]:
    """Medians over rounds, and the per-round values they came from."""
    row: dict[str, Any] = {}
    rounds: dict[str, list[float]] = {}
    for name in names:
        rounds[name] = per_round(log, label, name)
    if LATENCY in rounds:
        row["latencyMsP50"] = round(statistics.median(rounds[LATENCY]), 4)
    batches = {n: v for n, v in rounds.items() if n != LATENCY}
    if batches:
        row["throughput"] = {n: round(statistics.median(v), 2) for n, v in batches.items()}
        largest = max(batches, key=int)
        row["throughputFps"] = row["throughput"][largest]
        row["throughputBatch"] = int(largest)
    row["rounds"] = rounds
    return row


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Every model's figures, from one process and one set of rounds."""
    cfg = request["config"]
    # {"data": {split: {x, y}}}, or a single split as top-level x and y.
    paths = request.get("data") or {"test": {"x": request["x"], "y": request["y"]}}
    data = {split: (np.load(p["x"], mmap_mode="r"), np.load(p["y"])) for split, p in paths.items()}
    shape = list(next(iter(data.values()))[0].shape[1:])
    core = ov.Core()
    subjects = [compile_subject(core, item, shape, cfg) for item in request["models"]]
    rows = []
    for s in subjects:
        _progress("accuracy-" + s.label)
        rows.append(static_figures(core, s, data))
    x = next(iter(data.values()))[0]
    sample = np.array(x[:1])
    latency_sample = np.repeat(sample, int(cfg.get("latencyBatch", 1)), axis=0)
    by_label = {s.label: s for s in subjects}
    p90: dict[str, list[float]] = {s.label: [] for s in subjects}
    names = measurements(cfg)
    duration = float(cfg["durationSeconds"])

    def measure(label: str, name: str) -> float:
        compiled = by_label[label].compiled[name]
        if name == LATENCY:
            figures = latency(compiled, latency_sample, duration)
            p90[label].append(figures["latencyMsP90"])
            return figures["latencyMsP50"]
        return throughput(compiled, np.repeat(sample, int(name), axis=0), duration)

    rounds = int(cfg.get("rounds", 1))
    log = interleaved_rounds(
        list(by_label), names, rounds, measure, lambda r: _progress(f"round-{r + 1}/{rounds}")
    )
    for row in rows:
        row.update(speed_figures(log, row["model"], names))
        if p90[row["model"]]:
            row["latencyMsP90"] = round(statistics.median(p90[row["model"]]), 4)
    return {"rounds": rounds, "measurements": names, "models": rows, "log": log}


def _progress(phase: str) -> None:
    print(f"KUBESLIM_PROGRESS {json.dumps({'phase': 'measure-' + phase})}", flush=True)


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(request)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
