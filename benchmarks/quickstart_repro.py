"""The quickstart's before -> after table, reproduced: `kubeslim run` of
examples/quickstart.yaml N times from scratch (the baseline trained once, as
`make quickstart` does), each run in an artifacts root of its own so no stage is
reused from the cache.

Per run it keeps what the README's table shows: test and tuning accuracy of each
model, and the speed ratios of the pruned and pruned-int8 models over the
original (median and range of the per-round ratios, at batch 1 and 64). Run it on
idle cores: the ratios come from interleaved rounds, but two busy cores still
shift which kernels win.

    .venv/bin/python -m benchmarks.quickstart_repro --runs 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import WORK, Stopwatch, header, save
from kubeslim.store.shared import CACHE_DIR

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
KUBESLIM = [sys.executable, "-m", "kubeslim"]
# What `make quickstart` passes to `kubeslim train`.
TRAIN_ARGS = ["--epochs", "2", "--lr", "0.1"]


def manifest(work: Path, run: int | None) -> Path:
    """The quickstart's resource with the checkpoint and artifacts under `work`."""
    body = yaml.safe_load(QUICKSTART.read_text())
    body["spec"]["model"]["checkpoint"] = str(work / "baseline.pt")
    body["spec"]["artifacts"]["uri"] = str(work / (f"run-{run}" if run is not None else "train"))
    path = work / (f"run-{run}.yaml" if run is not None else "train.yaml")
    path.write_text(yaml.safe_dump(body))
    return path


def kubeslim(args: list[str]) -> float:
    """The CLI as a user runs it; wall seconds."""
    print("+ kubeslim " + " ".join(args), file=sys.stderr, flush=True)
    with Stopwatch() as t:
        subprocess.run([*KUBESLIM, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return t.seconds


def table(artifacts: Path) -> dict[str, Any]:
    """The benchmark stage's rows and ratios, as the README's table shows them."""
    result = json.loads((artifacts / "benchmark" / "result.json").read_text())
    details, metrics = result["details"], result["metrics"]
    models = {
        row["model"]: {
            "precision": row.get("precision"),
            "floatPrecision": row.get("floatPrecision"),
            "accuracyTest": row.get("accuracy"),
            "accuracyTuning": row.get("tuningAccuracy"),
        }
        for row in details["models"]
    }
    return {
        "models": models,
        "ratios": details["ratios"],
        "accuracyDropPoints": metrics.get("accuracyDrop"),
        "tuningAccuracyDropPoints": metrics.get("tuningAccuracyDrop"),
        "sizeReduction": metrics.get("sizeReduction"),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across runs: each model's batch-64 throughput ratio and the accuracy drop."""

    def over_runs(model: str, key: str) -> list[float]:
        return [r["table"]["ratios"][model][key]["median"] for r in runs]

    out: dict[str, Any] = {}
    for model in runs[0]["table"]["ratios"]:
        out[model] = {
            "throughputBatch64": over_runs(model, "64"),
            "throughputBatch1": over_runs(model, "1"),
        }
    out["accuracyDropPoints"] = [r["table"]["accuracyDropPoints"] for r in runs]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(WORK / "quickstart-repro"))
    parser.add_argument("--output", default="quickstart_repro")
    parser.add_argument(
        "--rebench",
        action="store_true",
        help="keep each run's prune, convert and quantize outputs and measure again "
        "(on idle cores, after the runs were made on a busy machine)",
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**header(), "spec": str(QUICKSTART.relative_to(ROOT)), "runs": []}
    result["rebench"] = args.rebench
    train = ["train", str(manifest(work, None)), *TRAIN_ARGS, "--if-missing"]
    result["trainSeconds"] = kubeslim(train)
    for run in range(args.runs):
        artifacts = work / f"run-{run}"
        # Nothing reused from an earlier run; with --rebench only the benchmark stage reruns.
        for gone in [artifacts / "benchmark", artifacts / CACHE_DIR / "benchmark"]:
            shutil.rmtree(gone if args.rebench else artifacts, ignore_errors=True)
        wall = round(kubeslim(["run", str(manifest(work, run)), "--quiet"]), 1)
        result["runs"].append({"run": run, "wallSeconds": wall, "table": table(artifacts)})
        result["summary"] = summary(result["runs"])
        save(args.output, result)
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
