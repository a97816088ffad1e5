"""The Pruner: progressive filter pruning (soft or hard masks) with fine-tuning, then removal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kubeslim.api.spec import Masking, PruningSpec
from kubeslim.errors import SpecError
from kubeslim.models import training
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import PRUNABLE, PruningGraph, build_graph, count
from kubeslim.pruning.importance import Importance, importance_for
from kubeslim.pruning.masks import SoftMasks
from kubeslim.pruning.policy import counts_for, epochs_per_step, rate_flops, schedule


@dataclass
class PruneReport:
    """What pruning did, for result.json."""

    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)


@dataclass
class FineTuneData:
    """What fine-tuning needs: batches, the batch preprocessor and the device."""

    train: training.Batches
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device


class Pruner:
    """Holds the policy; the graph says what is coupled, importance what matters."""

    def __init__(
        self, spec: PruningSpec, reporter: Reporter, importance: Importance | None = None
    ) -> None:
        self.spec = spec
        self.reporter = reporter
        # importance: a stand-in criterion (benchmarks compare torch-pruning's own).
        self.importance = importance or importance_for(spec.criterion)

    def ignored_layers(self, model: nn.Module, num_classes: int) -> list[nn.Module]:
        """The spec's ignored layers plus the classifier (its outputs are the classes)."""
        modules = dict(model.named_modules())
        ignored = []
        for name in self.spec.ignored_layers:
            if name not in modules:
                raise SpecError(
                    "spec.pruning.ignoredLayers", f"no module named {name!r} in the model"
                )
            ignored.append(modules[name])
        heads = [
            m
            for m in model.modules()
            if isinstance(m, PRUNABLE)
            and (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == num_classes
        ]
        return ignored + heads[-1:]

    def run(
        self, model: nn.Module, example: torch.Tensor, num_classes: int, data: FineTuneData
    ) -> tuple[nn.Module, PruneReport]:
        """Prune model in place (masked, progressive, fine-tuned), then remove filters."""
        report = PruneReport()
        report.flops_before, report.params_before = count(model, example)
        teacher = self._teacher(model, data.device)
        graph = build_graph(model.cpu(), example, self.ignored_layers(model, num_classes))
        original = {g.index: g.channels for g in graph.groups}
        masks = SoftMasks(graph)
        rate = self.spec.target.filter_rate
        final = (
            self.spec.target.flops_reduction
            if rate is None
            else rate_flops(graph, rate, self.spec.round_to)
        )
        fractions = schedule(self.spec.schedule.kind, final or 0.0, self.spec.schedule.steps)
        epochs = epochs_per_step(self.spec.fine_tune.epochs, self.spec.schedule.steps)
        soft = self.spec.masking is Masking.soft
        model.to(data.device)
        opt, sched = training.make_optimizer(model, self.spec.fine_tune)
        total_epochs, epoch_no = sum(epochs), 0
        for step, (fraction, n_epochs) in enumerate(zip(fractions, epochs, strict=True), 1):
            last = step == len(fractions)
            # Soft Filter Pruning re-selects before every epoch; the last step's
            # choice is final and hard, so fine-tuning ends on the network that
            # removal leaves.
            hard = not soft or last
            selections = 1 if hard else max(1, n_epochs)
            for selection in range(selections):
                self.reporter.phase("mask", step=step, steps=len(fractions))
                removed = self._mask_step(graph, masks, fraction, hard, opt, last)
                if selection == 0:
                    report.steps.append(
                        {
                            "step": step,
                            "target": round(fraction, 4),
                            "flopsKept": round(1 - graph.reduction(removed), 4),
                        }
                    )
                for _ in range(n_epochs if hard else (1 if n_epochs else 0)):
                    epoch_no += 1
                    self.reporter.phase("fine-tune", epoch=epoch_no, epochs=total_epochs)
                    self._epoch(model, data, opt, masks, teacher)
                    sched.step()
        self.reporter.phase("remove")
        model.cpu().eval()
        masks.remove()
        report.flops_after, report.params_after = count(model, example)
        report.history = graph.history()
        report.layers = [
            {"layer": g.root_name, "kept": _out_channels(g.root), "total": original[g.index]}
            for g in graph.groups
        ]
        return model, report

    def _epoch(
        self,
        model: nn.Module,
        data: FineTuneData,
        opt: torch.optim.Optimizer,
        masks: SoftMasks,
        teacher: nn.Module | None,
    ) -> None:
        training.train_epoch(
            model,
            data.train,
            data.preprocess,
            opt,
            data.device,
            self.reporter,
            after_step=masks.apply,
            teacher=teacher,
            distillation=self.spec.fine_tune.distillation,
            max_steps=self.spec.fine_tune.max_steps_per_epoch,
        )

    def _teacher(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        if self.spec.fine_tune.distillation <= 0:
            return None
        return copy.deepcopy(model).to(device).eval()

    @torch.no_grad()
    def _mask_step(
        self,
        graph: PruningGraph,
        masks: SoftMasks,
        fraction: float,
        hard: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        last: bool = False,
    ) -> dict[int, int]:
        """Mask the least important channels so the model loses `fraction` of its FLOPs.

        Under hard masks, channels masked by an earlier hard step rank lowest and
        stay masked (masks only grow). Soft selection starts afresh each time:
        filters zeroed before have kept training and compete like the others.
        """
        keep_masked = hard and masks.hard
        scores: dict[int, torch.Tensor] = {}
        for g in graph.groups:
            s = self.importance(g.group(list(range(g.channels))))
            if s is None:  # a group without scorable layers: never prune it first
                s = torch.full((g.channels,), float("inf"))
            scores[g.index] = _normalise(s, masks.is_masked(g) if keep_masked else None)
        floor = {i: len(idxs) for i, idxs in masks.masked.items()} if keep_masked else {}
        counts = counts_for(graph, self.spec, scores, fraction, floor, last)
        chosen = {}
        for g in graph.groups:
            n = counts.get(g.index, 0)
            order = scores[g.index].clone()
            if keep_masked:
                order[masks.is_masked(g)] = -float("inf")
            chosen[g.index] = torch.argsort(order, stable=True)[:n].tolist() if n else []
        masks.update(chosen, hard=hard, optimizer=optimizer)
        return {i: len(idxs) for i, idxs in chosen.items()}


def _normalise(scores: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """Scores divided by their mean over live channels; masked ones 0.

    Makes groups comparable for global ranking whatever their size or scale.
    """
    s = scores.detach().float().cpu().clone()
    live = torch.isfinite(s) & (s > 0)
    if masked is not None:
        live &= ~masked
        s[masked] = 0.0
    if live.any():
        s = torch.where(torch.isfinite(s), s / s[live].mean(), s)
    return torch.nan_to_num(s, posinf=1e9)


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return -1
