"""The prune stage: soft filter pruning with fine-tuning, then physical removal."""

from __future__ import annotations

import torch

from kubeslim.data.datasets import loader
from kubeslim.models.training import evaluate, pick_device
from kubeslim.models.zoo import load_model
from kubeslim.pruning.history import save_pruned
from kubeslim.pruning.pruner import FineTuneData, Pruner
from kubeslim.stages.context import StageContext, StageOutput

EVAL_BATCH = 256


def prune(ctx: StageContext) -> StageOutput:
    """Prune the spec's model; outputs the pruned model with its pruning history."""
    spec = ctx.spec
    model = load_model(spec.model)
    splits = ctx.splits
    device = pick_device(spec.pruning.device)
    # The test split, for the reported before/after figures only.
    test = loader(splits.test, EVAL_BATCH)
    ctx.reporter.phase("evaluate-original")
    acc_before = evaluate(model.to(device), test, ctx.preprocess, device)
    train = loader(
        splits.train, spec.pruning.fine_tune.batch_size, shuffle=True, seed=spec.dataset.seed
    )
    torch.manual_seed(spec.dataset.seed)
    pruner = Pruner(spec.pruning, ctx.reporter)
    data = FineTuneData(train=train, preprocess=ctx.preprocess, device=device)
    model, report = pruner.run(model, ctx.example_input(), spec.model.num_classes, data)
    ctx.reporter.phase("evaluate-pruned")
    acc_after = evaluate(model.to(device), test, ctx.preprocess, device)
    ctx.reporter.update(accuracy=round(acc_after, 4))
    path = ctx.scratch / "pruned.pt"
    save_pruned(model.cpu(), report.history, path)
    metrics = {
        "accuracyBefore": round(acc_before, 5),
        "accuracyAfter": round(acc_after, 5),
        "flopsBefore": report.flops_before,
        "flopsAfter": report.flops_after,
        "flopsReduction": round(1 - report.flops_after / report.flops_before, 4),
        "paramsBefore": report.params_before,
        "paramsAfter": report.params_after,
        "device": str(device),
    }
    return StageOutput(
        files={"model": path},
        metrics=metrics,
        details={"steps": report.steps, "layers": report.layers},
    )
