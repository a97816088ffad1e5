"""Data-parallel fine-tuning: 1 against 2 workers (gloo, CPU) at the same global batch.

Runs the prune stage through `kubeslim run` (the torchrun path for 2 workers) on a
Fashion-MNIST subset, the variants in turn for --rounds rounds, and writes
benchmarks/results/ddp_scaling.json: the prune stage's wall time and the images per
second of the whole job (imagesPerSecondPerWorker x workers), each as a ratio of 2
workers to 1, the median over rounds.

torchrun gives each worker one intra-op thread (OMP_NUM_THREADS=1); a lone process
takes one per core. So the CPU variants are: 1 worker with 1 thread (the ratio to it is
the data-parallel scaling), 1 worker with torch's default threads (what `kubeslim run`
does with workers: 1), and 2 workers with 1 thread each.

    .venv/bin/python -m benchmarks.ddp_scaling                 # CPU: 1 vs 2 workers
    .venv/bin/python -m benchmarks.ddp_scaling --gpus 8        # GPU: 1, 2, 4, 8 processes

The GPU variant (--gpus N, prepared, not run here) trains on 1, 2, 4 ... N GPUs of this
machine (one worker with gpusPerWorker processes, nccl) on the full training split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import header, save


def spec(workers: int, gpus: int, args: argparse.Namespace) -> dict[str, Any]:
    """The manifest of one run: the global batch split evenly over the processes."""
    procs = max(workers, gpus)
    pruning: dict[str, Any] = {
        "target": {"flopsReduction": 0.5},
        "schedule": {"steps": 1},
        "fineTune": {
            "epochs": args.epochs,
            "batchSize": args.global_batch // procs,
            # learningRate is per process; the job's rate is procs times it.
            "learningRate": args.lr / procs,
        },
        "distributed": {"workers": workers, "gpusPerWorker": max(1, gpus)},
    }
    if gpus:
        pruning |= {"gpu": True, "device": "cuda"}
    return {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": f"ddp-{procs}"},
        "spec": {
            "model": {
                "entryPoint": "kubeslim.models.compact:compact_resnet",
                "numClasses": 10,
                "inputShape": [1, 28, 28],
            },
            "dataset": {
                "name": "fashion-mnist",
                "mean": [0.286],
                "std": [0.353],
                "trainLimit": args.train_limit,
                "loaderWorkers": args.loader_workers,
            },
            "pruning": pruning,
            "quantization": {"enabled": False},
            "benchmark": {"enabled": False},
        },
    }


def run_once(
    workers: int, gpus: int, threads: int | None, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One `kubeslim run`; the prune stage's figures from its result.json.

    threads: OMP_NUM_THREADS for a single process (None: torch's default)."""
    doc = spec(workers, gpus, args)
    name = doc["metadata"]["name"]
    manifest = work / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    artifacts = work / f"{name}-{time.monotonic_ns()}"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "kubeslim", "run", str(manifest), "--artifacts", str(artifacts)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None,
    )
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"kubeslim run ({name}) failed:\n{out.stderr[-3000:]}")
    result = json.loads((artifacts / "prune" / "result.json").read_text())
    m = result["metrics"]
    return {
        "variant": f"{m['worldSize']}p"
        + ("" if workers > 1 or gpus else f"-{threads}t" if threads else "-default"),
        "processes": m["worldSize"],
        "workers": workers,
        "pruneSeconds": result["duration_seconds"],
        "runSeconds": round(wall, 1),
        "imagesPerSecondPerWorker": m["imagesPerSecondPerWorker"],
        "imagesPerSecond": round(m["imagesPerSecondPerWorker"] * workers, 1),
        "loaderWaitShare": m["loaderWaitShare"],
        "accuracyAfter": m["accuracyAfter"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternating 1/2-worker rounds")
    parser.add_argument("--train-limit", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.02, help="the job's learning rate")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=0, help="GPU variant: 1, 2, 4 ... N GPUs")
    args = parser.parse_args()
    variants: list[tuple[int, int, int | None]]
    if args.gpus:
        sizes = [n for n in (1, 2, 4, 8, 16, 32) if n < args.gpus] + [args.gpus]
        variants = [(1, n, None) for n in sizes]
        if args.train_limit == 12000:
            args.train_limit = 60000
    else:
        variants = [(1, 0, 1), (1, 0, None), (2, 0, None)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kubeslim-ddp-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for workers, gpus, threads in variants:
                run = run_once(workers, gpus, threads, args, Path(tmp))
                runs.append({"round": round_no, **run})
                print(json.dumps(runs[-1]), file=sys.stderr)
    names = list(dict.fromkeys(r["variant"] for r in runs))
    ratios = {
        f"{name}/{base}": _ratios(runs, name, base)
        for base in names
        if base.startswith("1p")
        for name in names
        if not name.startswith("1p")
    }
    save(
        "ddp_scaling" if not args.gpus else "ddp_scaling_gpu",
        {**header(), "settings": vars(args), "runs": runs, "ratios": ratios},
    )


def _ratios(runs: list[dict[str, Any]], name: str, base: str) -> dict[str, Any]:
    """Per-round ratios of variant name to base: their median, min and max."""
    pairs = list(
        zip(
            [r for r in runs if r["variant"] == name],
            [r for r in runs if r["variant"] == base],
            strict=True,
        )
    )
    images = [t["imagesPerSecond"] / b["imagesPerSecond"] for t, b in pairs]
    speedup = [b["pruneSeconds"] / t["pruneSeconds"] for t, b in pairs]
    return {
        "imagesPerSecond": _summary(images),
        "pruneSpeedup": _summary(speedup),
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


if __name__ == "__main__":
    main()
