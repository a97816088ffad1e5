"""Wall time of a 4-candidate search with parallelism 1, 2 and 4, as ratios.

Locally (`kubeslim run`, candidates as processes): the compact CNN on scikit-learn's
digits, trained once and cached in the benchmark work dir. Each run starts from an
empty artifacts dir, so nothing is reused between parallelism settings. Locally
the number of cores caps parallelism (executors/search.py), so on a 2-core machine
parallelism 4 runs two candidates at once, as 2 does; the result file records
the effective number.

    .venv/bin/python -m benchmarks.search_parallelism [--parallelism 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import WORK, header, save
from kubeslim.api.spec import SearchSpec
from kubeslim.executors.search import workers

TARGETS = [0.2, 0.4, 0.6, 0.8]


def spec(ckpt: Path, artifacts: Path, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "search-parallelism"},
        "spec": {
            "model": {
                "entryPoint": "kubeslim.models.compact:compact_resnet",
                "numClasses": 10,
                "inputShape": [1, 16, 16],
                "checkpoint": str(ckpt),
            },
            "dataset": {
                "name": "digits",
                "mean": [0.3],
                "std": [0.4],
                "calibrationSize": 100,
                "tuningFraction": 0.2,
            },
            "pruning": {"schedule": {"steps": 1}, "fineTune": {"epochs": 1, "batchSize": 64}},
            "quantization": {"subsetSize": 100},
            "benchmark": {"durationSeconds": 0.2, "rounds": 2},
            "search": {"targets": TARGETS, "maxAccuracyDrop": 0.03, "parallelism": parallelism},
            "artifacts": {"uri": str(artifacts)},
        },
    }


def kubeslim(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kubeslim", *args], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    work = WORK / "search-parallelism"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "baseline.pt"
    first = work / "search.yaml"
    first.write_text(yaml.safe_dump(spec(ckpt, work / "artifacts", 1)))
    kubeslim("train", str(first), "--epochs", "4", "--lr", "0.05", "--if-missing")
    rows = []
    for p in args.parallelism:
        artifacts = work / f"artifacts-p{p}"
        shutil.rmtree(artifacts, ignore_errors=True)
        manifest = work / f"search-p{p}.yaml"
        manifest.write_text(yaml.safe_dump(spec(ckpt, artifacts, p)))
        started = time.monotonic()
        kubeslim("run", str(manifest), "--quiet")
        wall = time.monotonic() - started
        search = SearchSpec(targets=TARGETS, max_accuracy_drop=0.03, parallelism=p)
        rows.append({"parallelism": p, "effective": workers(search), "wallSeconds": round(wall, 1)})
        print(f"parallelism {p}: {wall:.1f} s", file=sys.stderr)
    base = rows[0]["wallSeconds"]
    for row in rows:
        row["speedupOverFirst"] = round(base / row["wallSeconds"], 2)
    save("search_parallelism", {**header(), "where": "local (kubeslim run)",
                                "cores": os.cpu_count(), "candidates": len(TARGETS),
                                "runs": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
