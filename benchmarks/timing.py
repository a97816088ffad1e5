"""Interleaved OpenVINO timing, run in a process of its own (no torch imported).

As in kubeslim's benchmark stage (kubeslim.stages.measure): torch's OpenMP
threads compete with OpenVINO's for the same cores, so the scripts that build
models with torch time them here:

    python -m benchmarks.timing REQUEST.json RESULT.json

REQUEST: {"variants": [{"name", "xml", "precision": "default"|"f32"}], "shape",
"seconds", "rounds"}. Every round visits every variant once (latency at batch 1,
then throughput with OpenVINO's suggested number of parallel requests); the
median over rounds is kept, so load from other processes on a shared machine
hits all variants alike.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from kubeslim.stages.measure import latency, throughput


def _compile(core: ov.Core, item: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if item["precision"] == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    model = core.read_model(item["xml"])
    model.reshape(shape)
    lat = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    thr = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
    value = lat.get_property("INFERENCE_PRECISION_HINT")
    precision = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"lat": lat, "thr": thr, "inferencePrecision": str(precision)}


def run(request: dict[str, Any]) -> list[dict[str, Any]]:
    core = ov.Core()
    shape = request["shape"]
    compiled = [_compile(core, item, shape) for item in request["variants"]]
    sample = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    lats: list[list[float]] = [[] for _ in compiled]
    thrs: list[list[float]] = [[] for _ in compiled]
    for r in range(request["rounds"]):
        for i, c in enumerate(compiled):
            lats[i].append(latency(c["lat"], sample, request["seconds"])["latencyMsP50"])
            thrs[i].append(throughput(c["thr"], sample, request["seconds"]))
        print(f"round {r + 1}/{request['rounds']} done", file=sys.stderr, flush=True)
    return [
        {
            "name": item["name"],
            "precisionHint": item["precision"],
            "inferencePrecision": c["inferencePrecision"],
            "latencyMsP50": round(statistics.median(lat), 3),
            "throughputFps": round(statistics.median(thr), 2),
            "latencyRounds": lat,
            "throughputRounds": thr,
        }
        for item, c, lat, thr in zip(request["variants"], compiled, lats, thrs, strict=True)
    ]


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(request)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
