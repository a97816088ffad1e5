"""The benchmark's measurement: interleaved rounds, static shapes, paired ratios,
sizes against the FP16 original. Structure and invariants only, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest
import torch
from torch import nn

from kubeslim.errors import KubeslimError
from kubeslim.stages.benchmark import paired_ratio, paired_ratios, summarize
from kubeslim.stages.measure import interleaved_rounds

SHAPE = [1, 8, 8]


def test_every_round_measures_every_model_in_turn() -> None:
    calls: list[tuple[str, str]] = []

    def fake(label: str, name: str) -> float:
        calls.append((label, name))
        return float(len(calls))

    log = interleaved_rounds(["A", "B", "C"], ["latency", "1", "64"], 3, fake)
    per_round = [(n, m) for n in ("latency", "1", "64") for m in ("A", "B", "C")]
    assert [(e["model"], e["measurement"]) for e in log] == [(m, n) for n, m in per_round] * 3
    assert [e["round"] for e in log] == [r for r in range(3) for _ in per_round]
    assert calls == [(e["model"], e["measurement"]) for e in log]


def test_ratios_pair_the_same_rounds() -> None:
    base = {"rounds": {"latency": [2.0, 2.0, 4.0], "1": [100.0, 50.0, 100.0], "64": [10, 10, 10]}}
    fast = {"rounds": {"latency": [1.0, 2.0, 1.0], "1": [300.0, 100.0, 150.0], "64": [20, 5, 30]}}
    ratios = paired_ratios(base, fast)
    # per-round ratios 3, 2, 1.5 -> median 2 (the ratio of medians would be 1.5)
    assert ratios["1"] == {"median": 2.0, "min": 1.5, "max": 3.0}
    assert ratios["64"] == {"median": 2.0, "min": 0.5, "max": 3.0}
    assert ratios["latency"] == {"median": 2.0, "min": 1.0, "max": 4.0}  # lower is better
    with pytest.raises(KubeslimError, match="rounds differ"):
        paired_ratio([1.0, 2.0], [1.0])


def _row(model: str, **over: Any) -> dict[str, Any]:
    row = {
        "model": model,
        "accuracy": 0.9,
        "tuningAccuracy": 0.91,
        "sizeBytes": 4000,
        "sizeBytesFp16": 2000,
        "floatPrecision": "bf16",
        "precision": "bf16",
        "throughputFps": 100.0,
        "throughput": {"1": 50.0, "64": 100.0},
    }
    return {**row, **over}


def test_summary_compares_size_with_the_fp16_original_and_reports_each_batch() -> None:
    base = _row("original")
    opt = _row("pruned-int8", accuracy=0.89, tuningAccuracy=0.905, sizeBytes=500, precision="int8")
    ratios = {
        "latency": {"median": 1.2, "min": 1.1, "max": 1.3},
        "1": {"median": 1.5, "min": 1.4, "max": 1.6},
        "64": {"median": 2.5, "min": 2.4, "max": 2.6},
    }
    m = summarize(base, opt, ratios, rounds=5)
    assert m["sizeReduction"] == 4.0 and m["sizeReductionVsFp32"] == 8.0
    assert m["speedupByBatch"] == {"1": 1.5, "64": 2.5}
    assert (m["speedup"], m["speedupBatch"], m["latencySpeedup"]) == (2.5, 64, 1.2)
    assert m["accuracyDrop"] == 1.0 and m["tuningAccuracyDrop"] == 0.5
    assert m["accuracySplit"] == "test" and m["rounds"] == 5
    assert m["optimized"]["precision"] == "int8" and m["precision"] == "bf16"


def _ir(path: Path, width: int) -> Path:
    torch.manual_seed(width)
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    ).eval()
    ov.save_model(
        ov.convert_model(model, example_input=torch.randn(1, *SHAPE)), path, compress_to_fp16=False
    )
    return path


def _split(tmp: Path, name: str, n: int) -> dict[str, str]:
    rng = np.random.default_rng(len(name))
    x, y = tmp / f"{name}_x.npy", tmp / f"{name}_y.npy"
    np.save(x, rng.standard_normal((n, *SHAPE), dtype=np.float32))
    np.save(y, rng.integers(0, 10, n))
    return {"x": str(x), "y": str(y)}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real measuring child process on two small IRs, 3 rounds."""
    tmp = tmp_path_factory.mktemp("measure")
    request = {
        "models": [
            {"label": "A", "path": str(_ir(tmp / "a.xml", 64))},
            {"label": "B", "path": str(_ir(tmp / "b.xml", 32))},
        ],
        "data": {"test": _split(tmp, "test", 100), "tuning": _split(tmp, "tuning", 30)},
        "config": {
            "modes": ["latency", "throughput"],
            "batchSizes": [1, 4],
            "durationSeconds": 0.05,
            "precision": "default",
            "threads": None,
            "rounds": 3,
        },
    }
    req, out = tmp / "request.json", tmp / "result.json"
    req.write_text(json.dumps(request))
    cmd = [sys.executable, "-m", "kubeslim.stages.measure", str(req), str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_measurement_runs_every_model_in_every_round(measured: dict[str, Any]) -> None:
    assert measured["rounds"] == 3 and measured["measurements"] == ["latency", "1", "4"]
    log = measured["log"]
    assert len(log) == 3 * 3 * 2
    for r in range(3):
        in_round = [(e["measurement"], e["model"]) for e in log if e["round"] == r]
        assert in_round == [(n, m) for n in ("latency", "1", "4") for m in ("A", "B")]
    for row in measured["models"]:
        assert {k: len(v) for k, v in row["rounds"].items()} == {"latency": 3, "1": 3, "4": 3}
        assert row["throughputFps"] == row["throughput"]["4"] and row["throughputBatch"] == 4


def test_each_batch_size_is_compiled_with_a_static_shape(measured: dict[str, Any]) -> None:
    for row in measured["models"]:
        assert row["inputShapes"] == {"latency": [1, *SHAPE], "1": [1, *SHAPE], "4": [4, *SHAPE]}


def test_rows_say_split_sizes_precision_and_fp16_size(measured: dict[str, Any]) -> None:
    for row in measured["models"]:
        assert (row["testImages"], row["tuningImages"]) == (100, 30)
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["tuningAccuracy"] <= 1
        assert row["precision"] in ("bf16", "f32") and row["floatPrecision"] in ("bf16", "f32")
        assert sum(row["layerPrecisions"].values()) == 3  # two convolutions, one linear
        assert row["sizeBytesFp16"] < row["sizeBytes"]  # FP32 weights halve


def test_the_measuring_process_does_not_import_torch() -> None:
    code = "import sys, kubeslim.stages.measure; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
