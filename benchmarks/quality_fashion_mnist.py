"""Compression quality on Fashion-MNIST: baseline, then the whole kubeslim pipeline.

For each model: `kubeslim train` makes the baseline, then `kubeslim run` runs
prune -> convert -> quantize -> benchmark once per configuration (FLOPs target,
ranking, distillation), plus one INT8-only run (pruning disabled: what
OpenVINO/NNCF quantization alone gives). Accuracy is the benchmark stage's:
OpenVINO at default precision on the Fashion-MNIST test split (10k images
unless --validation-limit). Afterwards the produced IRs are timed again here,
interleaved in one process, at default precision and forced f32, at batch 1.

The budget is the CPU one (2 cores, shared): see BUDGETS; --budget gpu is the
full one (benchmarks/gpu_quality.sh runs it on a CUDA machine).

    .venv/bin/python -m benchmarks.quality_fashion_mnist --models compact [--budget cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openvino as ov
import yaml

from benchmarks.common import (
    WORK,
    Stopwatch,
    Variant,
    add_ratios,
    header,
    ir_size,
    save,
    time_variants,
)

ROOT = Path(__file__).resolve().parent.parent
KUBESLIM = [sys.executable, "-m", "kubeslim"]

MODELS: dict[str, dict[str, Any]] = {
    "compact": {"entryPoint": "kubeslim.models.compact:compact_resnet"},
    "resnet18": {"architecture": "resnet18", "stem": "small"},
    "mobilenet_v2": {"architecture": "mobilenet_v2", "stem": "small"},
}

# trainLimit (None: all 60k), baseline epochs, fine-tune epochs (spread over the
# schedule steps), maxSteps (fine-tune batches of 128 per epoch; None: all), the
# fine-tune LR decay step in epochs, validationLimit (None: 10k).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "compact": {
            "trainLimit": None,
            "epochs": 3,
            "fineTune": 3,
            "maxSteps": 150,
            "stepSize": 1,
            "val": None,
        },
        "resnet18": {
            "trainLimit": 4000,
            "epochs": 2,
            "fineTune": 1,
            "maxSteps": None,
            "stepSize": 1,
            "val": 2000,
        },
        "mobilenet_v2": {
            "trainLimit": 4000,
            "epochs": 2,
            "fineTune": 1,
            "maxSteps": None,
            "stepSize": 1,
            "val": 2000,
        },
    },
    "gpu": {
        "compact": {"trainLimit": None, "epochs": 15, "fineTune": 9, "stepSize": 3, "val": None},
        "resnet18": {"trainLimit": None, "epochs": 15, "fineTune": 9, "stepSize": 3, "val": None},
        "mobilenet_v2": {
            "trainLimit": None,
            "epochs": 15,
            "fineTune": 9,
            "stepSize": 3,
            "val": None,
        },
    },
}

# name -> pruning overrides; "int8-only" disables pruning.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "int8-only": None,
    "uniform-70": {"target": {"flopsReduction": 0.7}, "globalRanking": False, "distillation": 0.0},
    # NNCF 2.19's widths (half of every layer): the equal-cut peer comparison.
    "uniform-r50": {"target": {"filterRate": 0.5}, "globalRanking": False, "distillation": 0.0},
    "global-kd-50": {"target": {"flopsReduction": 0.5}, "globalRanking": True, "distillation": 0.5},
    "global-kd-70": {"target": {"flopsReduction": 0.7}, "globalRanking": True, "distillation": 0.5},
}


def spec(
    model: str, budget: dict[str, Any], work: Path, config: dict[str, Any] | None
) -> dict[str, Any]:
    """A ModelOptimization manifest for one run."""
    dataset: dict[str, Any] = {
        "name": "fashion-mnist",
        "mean": [0.286],
        "std": [0.353],
        "calibrationSize": 300,
    }
    if budget["trainLimit"]:
        dataset["trainLimit"] = budget["trainLimit"]
    if budget["val"]:
        dataset["validationLimit"] = budget["val"]
    pruning: dict[str, Any] = {"enabled": False}
    if config is not None:
        fine_tune: dict[str, Any] = {
            "epochs": budget["fineTune"],
            "batchSize": 128,
            "learningRate": 0.02,
            "stepSize": budget["stepSize"],
            "distillation": config["distillation"],
        }
        if budget.get("maxSteps"):
            fine_tune["maxStepsPerEpoch"] = budget["maxSteps"]
        pruning = {
            "criterion": "geometric_median",
            "target": config["target"],
            "globalRanking": config["globalRanking"],
            "schedule": {"kind": "exponential", "steps": min(3, max(1, budget["fineTune"]))},
            "fineTune": fine_tune,
        }
    return {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": f"bench-{model}"},
        "spec": {
            "model": {
                **MODELS[model],
                "numClasses": 10,
                "inputShape": [1, 28, 28],
                "checkpoint": str(work / "baseline.pt"),
            },
            "dataset": dataset,
            "pruning": pruning,
            "quantization": {"preset": "performance", "subsetSize": 300},
            "benchmark": {
                "modes": ["latency", "throughput"],
                "batchSizes": [1],
                "durationSeconds": 1.0,
            },
            "artifacts": {"uri": str(work / "artifacts")},
        },
    }


def kubeslim(args: list[str]) -> float:
    """Run the CLI as a user would; returns wall seconds."""
    print("+ kubeslim " + " ".join(args), file=sys.stderr, flush=True)
    with Stopwatch() as t:
        subprocess.run([*KUBESLIM, *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return t.seconds


def stage_result(artifacts: Path, stage: str) -> dict[str, Any]:
    path = artifacts / stage / "result.json"
    return json.loads(path.read_text()) if path.exists() else {}


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def run_model(model: str, budget_name: str, work_root: Path, configs: list[str]) -> dict[str, Any]:
    budget = BUDGETS[budget_name][model]
    work = work_root / budget_name / model
    work.mkdir(parents=True, exist_ok=True)
    base_manifest = work / "baseline.yaml"
    base_manifest.write_text(yaml.safe_dump(spec(model, budget, work, None)))
    train_args = ["train", str(base_manifest), "--epochs", str(budget["epochs"]), "--lr", "0.05"]
    train_s = (
        kubeslim([*train_args, "--if-missing"])
        if (work / "baseline.pt").exists()
        else kubeslim(train_args)
    )
    runs = []
    for name in configs:
        config = CONFIGS[name]
        manifest = work / f"{name}.yaml"
        body = spec(model, budget, work, config)
        body["spec"]["artifacts"]["uri"] = str(work / name)
        manifest.write_text(yaml.safe_dump(body))
        wall = kubeslim(["run", str(manifest), "--quiet"])
        arts = work / name
        results = {s: stage_result(arts, s) for s in ("prune", "convert", "quantize", "benchmark")}
        runs.append({"config": name, "pruning": config, "wallSeconds": wall, "results": results})
    return {
        "model": model,
        "budget": {"name": budget_name, **budget},
        "trainSeconds": train_s,
        "trainCommand": "kubeslim " + " ".join(train_args),
        "runs": runs,
    }


def retime(model_result: dict[str, Any], seconds: float, rounds: int) -> None:
    """Time every run's IRs against the original FP32 IR, interleaved, both precisions."""
    runs = model_result["runs"]
    convert0 = runs[0]["results"]["convert"]
    baseline = local(convert0["outputs"]["baseline_ir"])
    fp16 = baseline.with_name("baseline_fp16.xml")
    core = ov.Core()
    ov.save_model(core.read_model(baseline), fp16, compress_to_fp16=True)
    model_result["originalIrBytes"] = {"fp32": ir_size(baseline), "fp16": ir_size(fp16)}
    variants = [
        Variant("original-fp32", baseline, "default"),
        Variant("original-fp32", baseline, "f32"),
    ]
    for run in runs:
        res = run["results"]
        if run["pruning"] is not None:
            ir = local(res["convert"]["outputs"]["ir"])
            variants.append(Variant(f"{run['config']}:pruned", ir, "default"))
            variants.append(Variant(f"{run['config']}:pruned", ir, "f32"))
        int8 = local(res["quantize"]["outputs"]["int8_ir"])
        variants.append(Variant(f"{run['config']}:int8", int8, "default"))
    rows = time_variants(variants, [1, 1, 28, 28], seconds, rounds)
    add_ratios(rows, "original-fp32")
    paths = {v.name: v.xml for v in variants}
    for r in rows:
        r["irBytes"] = ir_size(paths[r["name"]])
        r["irSizeVsFp16"] = round(model_result["originalIrBytes"]["fp16"] / r["irBytes"], 3)
    model_result["timing"] = rows


def headline(model_result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: accuracy drop, FLOPs/params/size reduction, speedups."""
    timing = {(r["name"], r["precisionHint"]): r for r in model_result.get("timing", [])}
    rows = []
    for run in model_result["runs"]:
        res = run["results"]
        bench = res["benchmark"].get("metrics", {})
        conv = res["convert"].get("metrics", {})
        t = timing.get((f"{run['config']}:int8", "default"), {})
        rows.append(
            {
                "config": run["config"],
                "accuracyBaseline": bench.get("baseline", {}).get("accuracy"),
                "accuracyOptimized": bench.get("optimized", {}).get("accuracy"),
                "accuracyDropPoints": bench.get("accuracyDrop"),
                "flopsReduction": round(1 - conv["flops"] / conv["baselineFlops"], 4)
                if conv
                else None,
                "paramsReduction": round(1 - conv["params"] / conv["baselineParams"], 4)
                if conv
                else None,
                "irSizeVsFp16": t.get("irSizeVsFp16"),
                "throughputVsFp32Default": t.get("throughputVsFp32Default"),
                "throughputVsFp32F32": t.get("throughputVsFp32F32"),
                "latencySpeedupVsFp32Default": t.get("latencySpeedupVsFp32Default"),
                "pruneSeconds": res["prune"].get("duration_seconds"),
                "wallSeconds": run["wallSeconds"],
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["compact"], choices=list(MODELS))
    parser.add_argument("--budget", default="cpu", choices=list(BUDGETS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", default=str(WORK), help="checkpoints and artifacts")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="quality_fashion_mnist")
    args = parser.parse_args()
    result: dict[str, Any] = {**header(), "budget": args.budget, "models": []}
    for model in args.models:
        model_result = run_model(model, args.budget, Path(args.work), args.configs)
        retime(model_result, args.seconds, args.rounds)
        model_result["headline"] = headline(model_result)
        result["models"].append(model_result)
        save(args.output, result)
    for m in result["models"]:
        print(f"## {m['model']} ({args.budget} budget)")
        for row in m["headline"]:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
