"""Pruning ablations on Fashion-MNIST, in one process, paired by seed.

Each configuration prunes the same baseline checkpoint to the same FLOPs cut
with the same schedule and fine-tuning budget; a seed fixes the data order, so
configurations are compared seed by seed (paired differences against `fpgm`).
Accuracy is torch FP32 top-1 on the first `testLimit` images of the test split
(the pruned, physically smaller model). NNCF 2.19's legacy filter pruning runs
in its own venv at the same budget (benchmarks/nncf_legacy.py train --ablation)
and is read back from its train.json.

    .venv/bin/python -m benchmarks.pruning_ablation --seeds 0 1 2 [--budget tiny] [--model compact]
    /work/nncf219-venv/bin/python -m benchmarks.nncf_legacy train --ablation tiny --seed 0 [--kd]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch.utils.data import Subset

from benchmarks.common import WORK, header, save
from kubeslim.api.spec import DatasetSpec, FineTune, ModelSpec, PruningSpec
from kubeslim.data.datasets import Preprocess, load_splits, loader
from kubeslim.models.training import evaluate, make_optimizer, pick_device, train_epoch
from kubeslim.models.zoo import build_model, load_model
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import build_graph
from kubeslim.pruning.policy import rate_flops
from kubeslim.pruning.pruner import FineTuneData, Pruner

ROOT = Path(__file__).resolve().parent.parent
ABLATION = WORK / "ablation"
# What two shared CPU cores afford (see benchmarks/RESULTS.md); "gpu" is the
# budget benchmarks/gpu_quality.sh runs.
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "trainLimit": 12000,
        "baselineEpochs": 2,
        "batch": 64,
        "epochs": 3,
        "maxSteps": 20,
        "testLimit": 3000,
    },
    "small": {
        "trainLimit": 30000,
        "baselineEpochs": 3,
        "batch": 128,
        "epochs": 3,
        "maxSteps": 80,
        "testLimit": 5000,
    },
    "gpu": {
        "trainLimit": None,
        "baselineEpochs": 15,
        "batch": 128,
        "epochs": 9,
        "maxSteps": None,
        "testLimit": None,
    },
}
CUT = {"filterRate": 0.5}  # NNCF 2.19's widths at its 70% target: 74.6% of the FLOPs
# name -> pruning overrides (importance "tp-fpgm": torch-pruning 1.6.1's FPGMImportance)
CONFIGS: dict[str, dict[str, Any]] = {
    "tp-fpgm": {"masking": "hard", "importance": "tp-fpgm"},
    "fpgm": {"masking": "hard"},
    "fpgm-soft": {"masking": "soft"},
    "fpgm-global": {"masking": "hard", "globalRanking": True},
    "fpgm-kd": {"masking": "hard", "distillation": 0.5},
    "fpgm-soft-kd": {"masking": "soft", "distillation": 0.5},
    "tp-fpgm-kd": {"masking": "hard", "importance": "tp-fpgm", "distillation": 0.5},
}
REFERENCE = "fpgm"


MODELS: dict[str, dict[str, Any]] = {
    "compact": {"entryPoint": "kubeslim.models.compact:compact_resnet"},
    "resnet18": {"architecture": "resnet18", "stem": "small"},
    "mobilenet_v2": {"architecture": "mobilenet_v2", "stem": "small"},
}


def model_spec(checkpoint: Path | None, model: str = "compact") -> ModelSpec:
    return ModelSpec.model_validate(
        {
            **MODELS[model],
            "numClasses": 10,
            "inputShape": [1, 28, 28],
            **({"checkpoint": str(checkpoint)} if checkpoint else {}),
        }
    )


def work_dir(budget_name: str, model: str) -> Path:
    """Checkpoints and cached runs of one budget and model."""
    return ABLATION / (budget_name if model == "compact" else f"{budget_name}-{model}")


def dataset_spec(budget: dict[str, Any], seed: int = 0) -> DatasetSpec:
    body: dict[str, Any] = {"name": "fashion-mnist", "mean": [0.286], "std": [0.353]}
    if budget["trainLimit"]:
        body["trainLimit"] = budget["trainLimit"]
    return DatasetSpec.model_validate({**body, "seed": seed})


def data(budget: dict[str, Any], seed: int) -> tuple[Any, Any, Preprocess]:
    """Training split (seeded order) and the test subset, with the preprocessor."""
    ds = dataset_spec(budget, 0)  # the same images for every seed; the order varies
    splits = load_splits(ds, size=(28, 28))
    test = splits.test
    if budget["testLimit"]:
        test = Subset(test, range(min(budget["testLimit"], len(test))))
    return splits.train, test, Preprocess(ds, model_spec(None))


def baseline(
    budget_name: str, budget: dict[str, Any], model_name: str, device: torch.device
) -> Path:
    """Train (once) the baseline every configuration starts from."""
    path = work_dir(budget_name, model_name) / "baseline.pt"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    train, test, pre = data(budget, 0)
    model = build_model(model_spec(None, model_name)).to(device)
    ft = FineTune(epochs=budget["baselineEpochs"], learning_rate=0.05, step_size=1, gamma=0.5)
    opt, sched = make_optimizer(model, ft)
    for epoch in range(ft.epochs):
        train_epoch(model, loader(train, 128, True, epoch), pre, opt, device, Reporter("none"))
        sched.step()
    torch.save(model.cpu().state_dict(), path)
    acc = evaluate(model.to(device), loader(test, 256), pre, device)
    (path.parent / "baseline.json").write_text(json.dumps({"accuracy": acc}))
    return path


def prune_one(
    budget: dict[str, Any],
    checkpoint: Path,
    model_name: str,
    config: str,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    overrides = dict(CONFIGS[config])
    importance = overrides.pop("importance", None)
    distillation = overrides.pop("distillation", 0.0)
    spec = PruningSpec.model_validate(
        {
            "criterion": "geometric_median",
            "target": CUT,
            "schedule": {"kind": "exponential", "steps": 3},
            "fineTune": {
                "epochs": budget["epochs"],
                "batchSize": budget["batch"],
                "learningRate": 0.02,
                "stepSize": 1,
                "distillation": distillation,
                "maxStepsPerEpoch": budget["maxSteps"],
            },
            **overrides,
        }
    )
    model = load_model(model_spec(checkpoint, model_name))
    if spec.global_ranking:  # the same FLOPs cut as the uniform filterRate
        head: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        head = head[-1:]
        graph = build_graph(model, torch.zeros(1, 1, 28, 28), head)
        cut = round(rate_flops(graph, CUT["filterRate"], spec.round_to), 4)
        spec.target = spec.target.model_validate({"flopsReduction": cut})
    train, test, pre = data(budget, seed)
    torch.manual_seed(seed)
    fine = FineTuneData(loader(train, budget["batch"], True, seed), pre, device)
    imp = tp.importance.FPGMImportance(p=2) if importance == "tp-fpgm" else None
    started = time.monotonic()
    pruned, report = Pruner(spec, Reporter("none"), imp).run(
        model, torch.zeros(1, 1, 28, 28), 10, fine
    )
    seconds = time.monotonic() - started
    acc = evaluate(pruned.to(device), loader(test, 256), pre, device)
    return {
        "model": model_name,
        "config": config,
        "seed": seed,
        "accuracy": round(acc, 5),
        "flopsReduction": round(1 - report.flops_after / report.flops_before, 4),
        "steps": report.steps,
        "layers": report.layers,
        "seconds": round(seconds, 1),
    }


def paired(rows: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Per configuration: mean accuracy, and mean/min/max/stdev of its per-seed
    difference against the reference (points)."""
    by = {(r["config"], r["seed"]): r["accuracy"] for r in rows}
    out: dict[str, Any] = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        seeds = [s for (c, s) in by if c == config]
        accs = [by[(config, s)] for s in seeds]
        entry: dict[str, Any] = {"n": len(accs), "accuracyMean": round(statistics.mean(accs), 5)}
        diffs = [
            100 * (by[(config, s)] - by[(reference, s)]) for s in seeds if (reference, s) in by
        ]
        if diffs and config != reference:
            entry["vs"] = reference
            entry["diffPoints"] = [round(d, 2) for d in diffs]
            entry["diffMean"] = round(statistics.mean(diffs), 3)
            entry["diffStdev"] = round(statistics.stdev(diffs), 3) if len(diffs) > 1 else None
        out[config] = entry
    return out


def nncf_rows(budget_name: str, model: str, seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for kd in (False, True):
        for seed in seeds:
            name = f"{'kd-' if kd else ''}seed{seed}.json"
            path = work_dir(budget_name, model) / "nncf219" / name
            if path.exists():
                r = json.loads(path.read_text())
                rows.append(
                    {
                        "config": "nncf219-kd" if kd else "nncf219",
                        "seed": seed,
                        "accuracy": r["accuracyAfterTorch"],
                        "flopsReduction": r["nncfFlopsReduction"],
                        "seconds": r["pruneAndFineTuneSeconds"],
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="tiny", choices=list(BUDGETS))
    parser.add_argument("--model", default="compact", choices=list(MODELS))
    parser.add_argument("--device", default="auto", help="auto: CUDA when visible")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="pruning_ablation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    device = pick_device(args.device)
    checkpoint = baseline(args.budget, budget, args.model, device)
    result: dict[str, Any] = {
        **header(),
        "model": args.model,
        "device": str(device),
        "budget": {"name": args.budget, **budget},
        "cut": CUT,
        "baseline": json.loads((checkpoint.parent / "baseline.json").read_text()),
        "runs": [],
    }
    cache = work_dir(args.budget, args.model) / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: every configuration gets seed 0 first
        for config in args.configs:
            path = cache / f"{config}-seed{seed}.json"
            if not path.exists():
                print(f"+ {config} seed {seed}", file=sys.stderr, flush=True)
                run = prune_one(budget, checkpoint, args.model, config, seed, device)
                path.write_text(json.dumps(run))
            result["runs"].append(json.loads(path.read_text()))
            result["summary"] = paired(result["runs"], REFERENCE)
            save(args.output, result)
    result["runs"] += nncf_rows(args.budget, args.model, args.seeds)
    result["summary"] = paired(result["runs"], REFERENCE)
    save(args.output, result)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
