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

The `real` budget runs torchvision's resnet18 and mobilenet_v2 with their
default (ImageNet) stems on Fashion-MNIST upsampled to 32x32; its cut is the one
NNCF 2.19 reaches at its target (nncf_legacy train --ablation real first).
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
    # The real topologies (default stems) at 32x32 on 20,000 images; the cut is
    # whatever NNCF 2.19 reaches at its target (nncf_legacy: 70%, mobilenet_v2 50%),
    # by kubeslim's own counter.
    "real": {
        "trainLimit": 20000,
        "baselineEpochs": 4,
        "batch": 128,
        "epochs": 3,
        "maxSteps": 40,
        "testLimit": 5000,
        "inputSize": 32,
        "stem": "default",
        "cut": "nncf",
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
    # roundTo 8 (default 16): a 16-block is half of a 32-channel mobilenet_v2 layer
    "tp-fpgm-round8": {"masking": "hard", "importance": "tp-fpgm", "roundTo": 8},
    "tp-fpgm-round8-kd": {
        "masking": "hard",
        "importance": "tp-fpgm",
        "roundTo": 8,
        "distillation": 0.5,
    },
    # the default, then BatchNorm statistics re-estimated on BN_BATCHES training
    # batches, here in the benchmark (what section 5b found missing)
    "tp-fpgm-bn": {"masking": "hard", "importance": "tp-fpgm", "recalibrateBn": True},
    # the product's default since section 5b: the Pruner re-estimates BatchNorm's
    # statistics itself (fineTune.batchNormRecalibration 40); every other configuration
    # here keeps its section-5/5b meaning with the re-estimation off
    "default": {"masking": "hard", "importance": "tp-fpgm", "batchNormRecalibration": 40},
}
BN_BATCHES = 40
REFERENCE = "fpgm"


MODELS: dict[str, dict[str, Any]] = {
    "compact": {"entryPoint": "kubeslim.models.compact:compact_resnet"},
    "resnet18": {"architecture": "resnet18", "stem": "small"},
    "mobilenet_v2": {"architecture": "mobilenet_v2", "stem": "small"},
}


def model_spec(
    checkpoint: Path | None, model: str = "compact", budget: dict[str, Any] | None = None
) -> ModelSpec:
    """The model as the budget runs it (its input size, and its stem for torchvision models)."""
    body = dict(MODELS[model])
    if budget and "stem" in body and "stem" in budget:
        body["stem"] = budget["stem"]
    size = input_size(budget)
    return ModelSpec.model_validate(
        {
            **body,
            "numClasses": 10,
            "inputShape": [1, size, size],
            **({"checkpoint": str(checkpoint)} if checkpoint else {}),
        }
    )


def input_size(budget: dict[str, Any] | None) -> int:
    """Fashion-MNIST's 28x28, or what the budget upsamples it to."""
    return int((budget or {}).get("inputSize", 28))


def example(budget: dict[str, Any]) -> torch.Tensor:
    size = input_size(budget)
    return torch.zeros(1, 1, size, size)


def work_dir(budget_name: str, model: str) -> Path:
    """Checkpoints and cached runs of one budget and model."""
    return ABLATION / (budget_name if model == "compact" else f"{budget_name}-{model}")


def dataset_spec(budget: dict[str, Any], seed: int = 0) -> DatasetSpec:
    body: dict[str, Any] = {"name": "fashion-mnist", "mean": [0.286], "std": [0.353]}
    if budget["trainLimit"]:
        body["trainLimit"] = budget["trainLimit"]
    return DatasetSpec.model_validate({**body, "seed": seed})


def data(budget: dict[str, Any], seed: int, model: str = "compact") -> tuple[Any, Any, Preprocess]:
    """Training split (seeded order) and the test subset, with the preprocessor
    (which resizes to the model's input)."""
    ds = dataset_spec(budget, 0)  # the same images for every seed; the order varies
    splits = load_splits(ds, size=(28, 28))
    test = splits.test
    if budget["testLimit"]:
        test = Subset(test, range(min(budget["testLimit"], len(test))))
    return splits.train, test, Preprocess(ds, model_spec(None, model, budget))


def baseline(
    budget_name: str, budget: dict[str, Any], model_name: str, device: torch.device
) -> Path:
    """Train (once) the baseline every configuration starts from."""
    path = work_dir(budget_name, model_name) / "baseline.pt"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    train, test, pre = data(budget, 0, model_name)
    model = build_model(model_spec(None, model_name, budget)).to(device)
    ft = FineTune(epochs=budget["baselineEpochs"], learning_rate=0.05, step_size=1, gamma=0.5)
    opt, sched = make_optimizer(model, ft)
    for epoch in range(ft.epochs):
        train_epoch(model, loader(train, 128, True, epoch), pre, opt, device, Reporter("none"))
        sched.step()
    torch.save(model.cpu().state_dict(), path)
    acc = evaluate(model.to(device), loader(test, 256), pre, device)
    (path.parent / "baseline.json").write_text(json.dumps({"accuracy": acc}))
    return path


def nncf_cut(budget_name: str, model: str) -> float:
    """The FLOPs cut NNCF 2.19 reached at this budget (kubeslim's counter, mean over
    its runs: its uniform rate does not depend on the seed)."""
    cuts = [
        json.loads(path.read_text())["flopsReductionKubeslim"]
        for path in sorted((work_dir(budget_name, model) / "nncf219").glob("*seed*.json"))
    ]
    if not cuts:
        raise SystemExit(
            f"--budget {budget_name}: no NNCF 2.19 run yet; first run "
            f"nncf_legacy train --ablation {budget_name} --model {model} --seed 0"
        )
    return round(statistics.mean(cuts), 4)


def target(
    budget_name: str, model_name: str, model: torch.nn.Module, spec: PruningSpec
) -> dict[str, float]:
    """The cut every configuration aims at: NNCF's reached cut, or CUT's filter rate
    (as a FLOPs reduction for global ranking, which takes no rate)."""
    if BUDGETS[budget_name].get("cut") == "nncf":
        return {"flopsReduction": nncf_cut(budget_name, model_name)}
    if not spec.global_ranking:
        return CUT
    head: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    graph = build_graph(model, example(BUDGETS[budget_name]), head[-1:])
    return {"flopsReduction": round(rate_flops(graph, CUT["filterRate"], spec.round_to), 4)}


def prune_one(
    budget_name: str,
    checkpoint: Path,
    model_name: str,
    config: str,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    budget = BUDGETS[budget_name]
    overrides = dict(CONFIGS[config])
    importance = overrides.pop("importance", None)
    distillation = overrides.pop("distillation", 0.0)
    recalibrate = overrides.pop("recalibrateBn", False)
    batch_norm_recalibration = overrides.pop("batchNormRecalibration", 0)
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
                "batchNormRecalibration": batch_norm_recalibration,
            },
            **overrides,
        }
    )
    model = load_model(model_spec(checkpoint, model_name, budget))
    spec.target = spec.target.model_validate(target(budget_name, model_name, model, spec))
    train, test, pre = data(budget, seed, model_name)
    torch.manual_seed(seed)
    fine = FineTuneData(loader(train, budget["batch"], True, seed), pre, device)
    imp = tp.importance.FPGMImportance(p=2) if importance == "tp-fpgm" else None
    started = time.monotonic()
    pruned, report = Pruner(spec, Reporter("none"), imp).run(model, example(budget), 10, fine)
    if recalibrate:
        recalibrate_bn(pruned.to(device), loader(train, budget["batch"], True, seed + 1000), pre)
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


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: Any, pre: Preprocess) -> None:
    """Re-estimate every BatchNorm's running statistics (cumulative average) on
    BN_BATCHES training batches, weights untouched; leaves the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    device = next(model.parameters()).device
    for index, (images, _) in enumerate(batches):
        if index >= BN_BATCHES:
            break
        model(pre(images).to(device))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()


# kubeslim configuration -> the NNCF 2.19 run it is paired with (same distillation)
PEERS = {
    "tp-fpgm": "nncf219",
    "tp-fpgm-round8": "nncf219",
    "fpgm": "nncf219",
    "tp-fpgm-kd": "nncf219-kd",
    "tp-fpgm-round8-kd": "nncf219-kd",
    "tp-fpgm-bn": "nncf219",
    "default": "nncf219",
    "fpgm-kd": "nncf219-kd",
}


def paired(rows: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Per configuration: mean accuracy, and mean/min/max/stdev of its per-seed
    difference against the reference (points)."""
    by = {(r["config"], r["seed"]): r["accuracy"] for r in rows}
    out: dict[str, Any] = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        accs = [a for (c, _), a in by.items() if c == config]
        entry: dict[str, Any] = {"n": len(accs), "accuracyMean": round(statistics.mean(accs), 5)}
        if config != reference:
            entry.update(difference(by, config, reference))
        out[config] = entry
    return out


def difference(by: dict[tuple[str, int], float], config: str, other: str) -> dict[str, Any]:
    """config minus other, seed by seed (points), over the seeds both ran."""
    diffs = [
        100 * (a - by[(other, s)]) for (c, s), a in by.items() if c == config and (other, s) in by
    ]
    if not diffs:
        return {}
    return {
        "vs": other,
        "diffPoints": [round(d, 2) for d in diffs],
        "diffMean": round(statistics.mean(diffs), 3),
        "diffStdev": round(statistics.stdev(diffs), 3) if len(diffs) > 1 else None,
    }


def against_nncf(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each kubeslim configuration against NNCF 2.19 with the same distillation."""
    by = {(r["config"], r["seed"]): r["accuracy"] for r in rows}
    pairs = {config: difference(by, config, peer) for config, peer in PEERS.items()}
    return {config: d for config, d in pairs.items() if d}


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
                        # kubeslim's counter, as its own rows (older runs: NNCF's)
                        "flopsReduction": r.get("flopsReductionCounted", r["nncfFlopsReduction"]),
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
    parser.add_argument(
        "--reference", default=REFERENCE, help="the configuration differences are taken against"
    )
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
        "cut": (
            {"flopsReduction": nncf_cut(args.budget, args.model)}
            if budget.get("cut") == "nncf"
            else CUT
        ),
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
                run = prune_one(args.budget, checkpoint, args.model, config, seed, device)
                path.write_text(json.dumps(run))
            result["runs"].append(json.loads(path.read_text()))
            result["summary"] = paired(result["runs"], args.reference)
            save(args.output, result)
    result["runs"] += nncf_rows(args.budget, args.model, args.seeds)
    result["summary"] = paired(result["runs"], args.reference)
    result["againstNncf"] = against_nncf(result["runs"])
    save(args.output, result)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
