"""The Pruner: progressive soft filter pruning with fine-tuning, then removal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kubeslim.api.spec import PruningSpec
from kubeslim.errors import SpecError
from kubeslim.models import training
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import PRUNABLE, PruningGraph, build_graph, count
from kubeslim.pruning.importance import importance_for
from kubeslim.pruning.masks import SoftMasks
from kubeslim.pruning.policy import counts_for, epochs_per_step, schedule


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

    def __init__(self, spec: PruningSpec, reporter: Reporter) -> None:
        self.spec = spec
        self.reporter = reporter
        self.importance = importance_for(spec.criterion)

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
        """Prune model in place (soft, progressive, fine-tuned), then remove filters."""
        report = PruneReport()
        report.flops_before, report.params_before = count(model, example)
        teacher = self._teacher(model, data.device)
        graph = build_graph(model.cpu(), example, self.ignored_layers(model, num_classes))
        original = {g.index: g.channels for g in graph.groups}
        masks = SoftMasks(graph)
        target = self.spec.target.filter_rate or self.spec.target.flops_reduction or 0.0
        fractions = schedule(self.spec.schedule.kind, target, self.spec.schedule.steps)
        epochs = epochs_per_step(self.spec.fine_tune.epochs, self.spec.schedule.steps)
        model.to(data.device)
        opt, sched = training.make_optimizer(model, self.spec.fine_tune)
        total_epochs, epoch_no = sum(epochs), 0
        for step, (fraction, n_epochs) in enumerate(zip(fractions, epochs, strict=True), 1):
            self.reporter.phase("mask", step=step, steps=len(fractions))
            removed = self._mask_step(graph, masks, fraction)
            est = graph.estimate_macs(removed) / graph.total_macs
            report.steps.append(
                {"step": step, "target": round(fraction, 4), "flopsKept": round(est, 4)}
            )
            for _ in range(n_epochs):
                epoch_no += 1
                self.reporter.phase("fine-tune", epoch=epoch_no, epochs=total_epochs)
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
                sched.step()
        self.reporter.phase("remove")
        model.cpu().eval()
        masks.remove()
        report.flops_after, report.params_after = count(model, example)
        report.history = graph.graph.pruning_history()
        report.layers = [
            {"layer": g.root_name, "kept": _out_channels(g.root), "total": original[g.index]}
            for g in graph.groups
        ]
        return model, report

    def _teacher(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        if self.spec.fine_tune.distillation <= 0:
            return None
        return copy.deepcopy(model).to(device).eval()

    @torch.no_grad()
    def _mask_step(self, graph: PruningGraph, masks: SoftMasks, fraction: float) -> dict[int, int]:
        """Mask the least important channels so each group loses its share.

        Already-masked channels rank lowest, so masks only grow: the final
        removal takes exactly what fine-tuning has learned to do without.
        """
        scores: dict[int, torch.Tensor] = {}
        for g in graph.groups:
            full = g.group(graph.graph, list(range(g.channels)))
            s = self.importance(full)
            if s is None:  # a group without scorable layers: never prune it
                s = torch.full((g.channels,), float("inf"))
            s = s.detach().float().cpu().clone()
            s[masks.is_masked(g)] = -float("inf")
            scores[g.index] = s
        finite = {i: torch.nan_to_num(s, neginf=-1.0, posinf=1e9) for i, s in scores.items()}
        counts = counts_for(graph, self.spec, finite, fraction)
        chosen = {}
        for g in graph.groups:
            n = max(counts.get(g.index, 0), len(masks.masked.get(g.index, [])))
            chosen[g.index] = torch.argsort(scores[g.index])[:n].tolist() if n else []
        masks.update(chosen)
        return {i: len(idxs) for i, idxs in chosen.items()}


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return -1
