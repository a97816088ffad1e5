"""The prune stage: soft filter pruning with fine-tuning, then physical removal.

Under torchrun every rank runs this function: each trains on its own share of
the data (DDP averages the gradients), evaluates its share of the test split
(the counts are summed), and only rank 0 writes the pruned model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kubeslim.data.datasets import Preprocess, loader, train_augment
from kubeslim.models import ddp
from kubeslim.models.checkpoint import Checkpointer
from kubeslim.models.training import count_correct, pick_device
from kubeslim.models.zoo import load_model
from kubeslim.pruning.history import save_pruned
from kubeslim.pruning.pruner import FineTuneData, Pruner, PruneReport
from kubeslim.stages.context import StageContext, StageOutput
from kubeslim.stages.distributed import Rank

EVAL_BATCH = 256


def prune(ctx: StageContext) -> StageOutput:
    """Prune the spec's model; outputs the pruned model with its pruning history."""
    spec = ctx.spec
    device = pick_device(spec.pruning.device)
    rank = ddp.init(spec.pruning.distributed.backend, cuda=device.type == "cuda")
    if not rank.main:
        ctx.reporter.mode = "none"  # rank 0 speaks for the job
    try:
        return _prune(ctx, device, rank)
    finally:
        ddp.shutdown()


def _prune(ctx: StageContext, device: torch.device, rank: Rank) -> StageOutput:
    spec = ctx.spec
    # Seeded before the model is built: without a checkpoint its random initialisation
    # is then the same on every rank (each evaluates its share of the test split with
    # it) and in every run (a resumed run continues the one it replaces).
    torch.manual_seed(spec.dataset.seed)
    model = load_model(spec.model)
    splits = ctx.splits
    ctx.reporter.phase("evaluate-original")
    acc_before = _accuracy(model.to(device), splits.test, ctx.preprocess, device, rank)
    # The rule looks at the data, not the model: a 1-channel dataset fed to a
    # 3-channel model stays unaugmented (kubeslim.data.augment).
    augment = train_augment(spec.dataset, splits.train)
    train = loader(
        splits.train,
        spec.pruning.fine_tune.batch_size,
        shuffle=True,
        seed=spec.dataset.seed,
        rank=rank.rank,
        world_size=rank.world_size,
        workers=spec.dataset.loader_workers,
        augment=augment,
    )
    torch.manual_seed(spec.dataset.seed)
    pruner = Pruner(spec.pruning, ctx.reporter)
    data = FineTuneData(train=train, preprocess=ctx.preprocess, device=device)
    checkpoints = _checkpointer(ctx, rank)
    model, report = pruner.run(
        model, ctx.example_input(), spec.model.num_classes, data, checkpoints
    )
    ctx.reporter.phase("evaluate-pruned")
    acc_after = _accuracy(model.to(device), splits.test, ctx.preprocess, device, rank)
    ctx.reporter.update(accuracy=round(acc_after, 4))
    metrics = _metrics(report, acc_before, acc_after, device, rank)
    details = {"steps": report.steps, "layers": report.layers, "ranks": report.ranks}
    if not rank.main:
        return StageOutput(files={}, metrics=metrics, details=details)
    path = ctx.scratch / "pruned.pt"
    save_pruned(model.cpu(), report.history, path)
    # The stage's outputs replace the checkpoint: a rerun reuses them instead.
    checkpoints.discard()
    return StageOutput(files={"model": path}, metrics=metrics, details=details)


def _checkpointer(ctx: StageContext, rank: Rank) -> Checkpointer:
    from kubeslim.stages.runner import fingerprint

    fp = fingerprint("prune", ctx)
    return Checkpointer(
        ctx.store,
        f"prune/{fp[:16]}",
        fp,
        ctx.spec.pruning.fine_tune.checkpoint_every_steps,
        main=rank.main,
        resume=not ctx.force,
    )


def _accuracy(
    model: nn.Module,
    test: Dataset[tuple[torch.Tensor, int]],
    preprocess: Preprocess,
    device: torch.device,
    rank: Rank,
) -> float:
    """Top-1 on the test split: each rank counts its share, the counts are summed."""
    share = loader(test, EVAL_BATCH, rank=rank.rank, world_size=rank.world_size)
    correct, seen = ddp.total(list(map(float, count_correct(model, share, preprocess, device))))
    return correct / max(seen, 1.0)


def _metrics(
    report: PruneReport, before: float, after: float, device: torch.device, rank: Rank
) -> dict[str, Any]:
    return {
        "accuracyBefore": round(before, 5),
        "accuracyAfter": round(after, 5),
        "flopsBefore": report.flops_before,
        "flopsAfter": report.flops_after,
        "flopsReduction": round(1 - report.flops_after / report.flops_before, 4),
        "paramsBefore": report.params_before,
        "paramsAfter": report.params_after,
        "device": str(device),
        "worldSize": rank.world_size,
        "masksIdenticalAcrossRanks": len({r["masks"] for r in report.ranks}) == 1,
        "resumedFromStep": report.resumed_from_step,
        "batchNormRecalibrationBatches": report.batch_norm_recalibration,
        **report.throughput,
    }
