"""Shared by the benchmark scripts: machine facts, OpenVINO timing and result files.

Every speed figure is a ratio measured inside one run of one script: the
variants are timed in interleaved rounds (benchmarks/timing.py, a process of
its own without torch), so load from other processes on the shared machine hits
baseline and variants alike.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino as ov

RESULTS = Path(__file__).resolve().parent / "results"
# Checkpoints and artifacts of the benchmark runs: outside the checkout, where a
# `make clean` or a test that resets .kubeslim/ in the shared checkout cannot
# delete a baseline that took 20 minutes to train.
WORK = Path(os.environ.get("KUBESLIM_BENCH_DIR", Path.home() / ".cache" / "kubeslim-bench"))


def machine() -> dict[str, Any]:
    """CPU model, core count and the flags that decide OpenVINO's default precision."""
    info: dict[str, str] = {}
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    flags = info.get("Flags", "").split()
    import torch

    return {
        "cpuModel": info.get("Model name", platform.processor()),
        "cpus": info.get("CPU(s)"),
        "bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadAverage1m": round(float(open("/proc/loadavg").read().split()[0]), 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": ov.get_version(),
    }


def header() -> dict[str, Any]:
    """What every result file starts with: command, date (UTC) and machine."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    argv = ["-m", spec.name, *sys.argv[1:]] if spec is not None else sys.argv
    return {
        "command": " ".join(shlex.quote(a) for a in [_relative(sys.executable), *argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }


def _relative(path: str) -> str:
    """.venv/bin/python rather than the absolute path of this checkout."""
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return path.removeprefix(root)


def save(name: str, data: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json"""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path


def ir_size(xml: Path) -> int:
    """Bytes of an IR: the .xml plus its .bin."""
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


@dataclass
class Variant:
    """One IR to time at one precision hint ("default" or "f32")."""

    name: str
    xml: Path
    precision: str


def time_variants(
    variants: list[Variant], shape: list[int], seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Interleaved rounds in a child process without torch (benchmarks/timing.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
        body = {
            "variants": [
                {"name": v.name, "xml": str(v.xml), "precision": v.precision} for v in variants
            ],
            "shape": shape,
            "seconds": seconds,
            "rounds": rounds,
        }
        req.write_text(json.dumps(body))
        print(f"timing {len(variants)} variants x {rounds} rounds", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.timing", str(req), str(out)], check=True)
        return json.loads(out.read_text())


class Stopwatch:
    """with Stopwatch() as t: ...; t.seconds"""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.perf_counter() - self.start, 3)


def add_ratios(rows: list[dict[str, Any]], base: str) -> None:
    """Throughput and latency ratios against `base` at default and at forced f32."""
    by = {(r["name"], r["precisionHint"]): r for r in rows}
    ref_default, ref_f32 = by[(base, "default")], by.get((base, "f32"))
    for r in rows:
        r["throughputVsFp32Default"] = round(r["throughputFps"] / ref_default["throughputFps"], 3)
        r["latencySpeedupVsFp32Default"] = round(ref_default["latencyMsP50"] / r["latencyMsP50"], 3)
        if ref_f32 is not None:
            r["throughputVsFp32F32"] = round(r["throughputFps"] / ref_f32["throughputFps"], 3)
            r["latencySpeedupVsFp32F32"] = round(ref_f32["latencyMsP50"] / r["latencyMsP50"], 3)
