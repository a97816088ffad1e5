"""The Pruner: progressive filter pruning (soft or hard masks) with fine-tuning, then removal."""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from kubeslim.api.spec import Masking, PruningSpec
from kubeslim.data.sampler import ShareSampler
from kubeslim.errors import SpecError
from kubeslim.models import ddp, training
from kubeslim.models.checkpoint import Checkpointer, Position, rng_state, set_rng_state
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import PRUNABLE, PruningGraph, build_graph, count
from kubeslim.pruning.importance import Importance, importance_for
from kubeslim.pruning.masks import SoftMasks
from kubeslim.pruning.policy import counts_for, epochs_per_step, rate_flops, schedule
from kubeslim.stages.distributed import procs_per_worker


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
    # One entry per rank: digests of its masks and weights before removal.
    ranks: list[dict[str, str]] = field(default_factory=list)
    throughput: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None
    # Batches whose forward passes re-estimated BatchNorm's statistics after fine-tuning.
    batch_norm_recalibration: int = 0


@dataclass
class FineTuneData:
    """What fine-tuning needs: batches, the batch preprocessor and the device."""

    train: training.Batches
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device


@dataclass(frozen=True)
class MaskAction:
    """Select and mask channels for one step of the schedule."""

    step: int
    steps: int
    fraction: float
    hard: bool
    last: bool
    record: bool


@dataclass(frozen=True)
class EpochAction:
    """One epoch of fine-tuning, then a learning-rate decay."""

    number: int
    total: int


Action = MaskAction | EpochAction


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

    def plan(self, fractions: list[float], epochs: list[int]) -> list[Action]:
        """The schedule as a flat list, so a checkpoint can name where it stopped."""
        soft = self.spec.masking is Masking.soft
        actions: list[Action] = []
        total, number = sum(epochs), 0
        for step, (fraction, n_epochs) in enumerate(zip(fractions, epochs, strict=True), 1):
            last = step == len(fractions)
            # Soft Filter Pruning re-selects before every epoch; the last step's
            # choice is final and hard, so fine-tuning ends on the network that
            # removal leaves.
            hard = not soft or last
            selections = 1 if hard else max(1, n_epochs)
            for selection in range(selections):
                actions.append(
                    MaskAction(step, len(fractions), fraction, hard, last, selection == 0)
                )
                for _ in range(n_epochs if hard else (1 if n_epochs else 0)):
                    number += 1
                    actions.append(EpochAction(number, total))
        return actions

    def run(
        self,
        model: nn.Module,
        example: torch.Tensor,
        num_classes: int,
        data: FineTuneData,
        checkpoints: Checkpointer | None = None,
    ) -> tuple[nn.Module, PruneReport]:
        """Prune model in place (masked, progressive, fine-tuned), then remove filters.

        With many ranks (torchrun) every rank runs this: DDP averages the gradients,
        rank 0's mask choice is applied everywhere. With checkpoints, the state is
        saved as the spec says and a stored one is resumed from.
        """
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
        plan = self.plan(
            fractions, epochs_per_step(self.spec.fine_tune.epochs, self.spec.schedule.steps)
        )
        model.to(data.device)
        opt, sched = training.make_optimizer(model, self.spec.fine_tune, ddp.size())
        loop = _Loop(self, model, data, opt, sched, masks, teacher, checkpoints)
        if checkpoints is not None and (state := checkpoints.load(ddp.size())) is not None:
            loop.restore(state, report)
        for index in range(loop.position.action, len(plan)):
            action = plan[index]
            if isinstance(action, MaskAction):
                self.reporter.phase("mask", step=action.step, steps=action.steps)
                removed = self._mask_step(
                    graph, masks, action.fraction, action.hard, opt, action.last
                )
                if action.record:
                    report.steps.append(
                        {
                            "step": action.step,
                            "target": round(action.fraction, 4),
                            "flopsKept": round(1 - graph.reduction(removed), 4),
                        }
                    )
            else:
                resumed = report.resumed_from_step
                self.reporter.phase(
                    "fine-tune",
                    epoch=action.number,
                    epochs=action.total,
                    **({} if resumed is None else {"resumedFrom": resumed}),
                )
                loop.epoch(index, report)
        report.batch_norm_recalibration = self._recalibrate(model, data, len(plan))
        report.ranks = ddp.gather(_digests(model, masks))
        report.throughput = loop.throughput()
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

    def _recalibrate(self, model: nn.Module, data: FineTuneData, epoch: int) -> int:
        """BatchNorm's running statistics re-estimated on the final (masked) weights.

        Fine-tuning leaves running averages (momentum 0.1) over weights that kept
        moving, and narrow pruned networks are sensitive to that lag: on mobilenet_v2
        (benchmarks/RESULTS.md 5b) re-estimating them took the default from 12 points
        behind NNCF 2.19 to 1.7 ahead, neutral on resnet18. Each rank reads its own
        share; the statistics are then averaged so every rank holds the same model.
        """
        limit = self.spec.fine_tune.batch_norm_recalibration
        if limit == 0 or self.spec.fine_tune.epochs == 0:
            return 0
        self.reporter.phase("recalibrate-bn", batches=limit)
        batches = _epoch_batches(data.train, epoch, 0)  # an order no epoch used
        used = training.recalibrate_batch_norm(model, batches, data.preprocess, data.device, limit)
        ddp.average_buffers(model)
        return used

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
        # Every rank computes the same choice from the same weights; rank 0's is
        # applied everywhere so that no rounding difference can split the masks.
        chosen = ddp.broadcast(chosen)
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


def _digests(model: nn.Module, masks: SoftMasks) -> dict[str, str]:
    """Short hashes of this rank's masks, parameters and buffers (ranks must agree).

    Buffers (BatchNorm's running statistics) agree once the recalibration averaged
    them over the ranks; without it each rank keeps the ones of its own last forward
    pass (DDP copies rank 0's at the start of each one), and rank 0's are saved.
    """
    mask_text = repr(sorted((int(i), list(v)) for i, v in masks.masked.items()))
    return {
        "masks": hashlib.sha256(mask_text.encode()).hexdigest()[:16],
        "weights": _tensors_digest(model.named_parameters()),
        "buffers": _tensors_digest(model.named_buffers()),
    }


def _tensors_digest(tensors: Iterator[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _epoch_batches(loader: training.Batches, epoch: int, done: int) -> Any:
    """The batches of an epoch that are left once `done` of them have been trained.

    kubeslim's loaders start their sampler `done` batches in, in the same order, so a
    resumed run reads none of the items it skips; any other loader's first batches are
    read and dropped. The iterator is made here, before the caller restores the RNG
    state: making it draws the loader's base seed, as it did when the epoch began.
    """
    sampler, batch_size = loader.sampler, loader.batch_size
    unread = 0  # batches the sampler itself skips
    if isinstance(sampler, ShareSampler) and batch_size is not None:
        sampler.set_epoch(epoch, start=done * batch_size)
        unread = done
    elif (set_epoch := getattr(sampler, "set_epoch", None)) is not None:
        set_epoch(epoch)  # torch's DistributedSampler: each epoch its own order
    if not done:
        return loader
    remaining = len(loader) - (done - unread)  # before iter() ends the sampler's skip
    batches = iter(loader)
    for _ in range(done - unread):  # read and dropped: trained before the interruption
        next(batches)
    return _Resumed(batches, remaining)


class _Resumed:
    """The rest of an epoch's batches after a resume skipped the ones already trained."""

    def __init__(self, batches: Iterator[Any], remaining: int) -> None:
        self.batches = batches
        self.remaining = remaining

    def __iter__(self) -> Iterator[Any]:
        return self.batches

    def __len__(self) -> int:
        return self.remaining


class _Loop:
    """The fine-tuning state a checkpoint saves: weights, optimizer, masks, position, RNG."""

    def __init__(
        self,
        pruner: Pruner,
        model: nn.Module,
        data: FineTuneData,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        masks: SoftMasks,
        teacher: nn.Module | None,
        checkpoints: Checkpointer | None,
    ) -> None:
        self.pruner = pruner
        self.model = model
        self.replica = ddp.Replicated(model, data.device)
        self.data = data
        self.opt = opt
        self.sched = sched
        self.masks = masks
        self.teacher = teacher
        self.checkpoints = checkpoints
        self.position = Position()
        self.meter = training.Throughput(processes_per_worker=procs_per_worker(pruner.spec))
        self._resume_rng: dict[str, Any] | None = None
        self._loader_state: torch.Tensor | None = None

    def restore(self, state: dict[str, Any], report: PruneReport) -> None:
        """Continue where the checkpoint stopped (every rank loads the same file)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.masks.restore(state["masks"]["masked"], state["masks"]["hard"])
        report.steps[:] = state["reportSteps"]
        self.position = Position(**state["position"])
        mine = state["ranks"][ddp.rank()]
        self._resume_rng = mine["rng"]
        self._loader_state = mine["loader"]
        report.resumed_from_step = self.position.global_step
        self.pruner.reporter.update(resumedFrom=self.position.global_step)
        print(
            f"resuming from checkpoint: step {self.position.global_step} "
            f"(plan action {self.position.action}, batch {self.position.batch})",
            file=sys.stderr,
            flush=True,
        )

    def epoch(self, index: int, report: PruneReport) -> None:
        """One fine-tuning epoch (or its rest, when resuming into it), then the LR decay."""
        loader = self.data.train
        generator = getattr(loader, "generator", None)
        if self._loader_state is not None and generator is not None:
            generator.set_state(self._loader_state)
        self._loader_state = None
        epoch_start = generator.get_state() if generator is not None else None
        done = self.position.batch if index == self.position.action else 0
        batches = _epoch_batches(loader, index, done)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        spec = self.pruner.spec.fine_tune

        def on_step(step: int) -> None:
            self.position = Position(index, step, self.position.global_step + 1)
            if self.checkpoints and self.checkpoints.due(self.position.global_step, False):
                self.save(report, epoch_start)

        training.train_epoch(
            self.replica.training_model(),
            batches,
            self.data.preprocess,
            self.opt,
            self.data.device,
            self.pruner.reporter,
            after_step=self.masks.apply,
            teacher=self.teacher,
            distillation=spec.distillation,
            max_steps=spec.max_steps_per_epoch,
            done=done,
            on_step=on_step,
            meter=self.meter,
        )
        self.sched.step()
        self.position = Position(index + 1, 0, self.position.global_step)
        if self.checkpoints and self.checkpoints.due(self.position.global_step, True):
            self.save(report, generator.get_state() if generator is not None else None)

    def save(self, report: PruneReport, loader_state: torch.Tensor | None) -> None:
        """A checkpoint of this moment; loader_state restarts the position's epoch."""
        assert self.checkpoints is not None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "masks": {"masked": self.masks.masked, "hard": self.masks.hard},
            "reportSteps": report.steps,
            "position": asdict(self.position),
        }
        self.checkpoints.save(state, {"rng": rng_state(), "loader": loader_state})

    def throughput(self) -> dict[str, float]:
        """Images per second per worker and the loader wait share, over every rank."""
        rates = ddp.gather((self.meter.images_per_second(), self.meter.loader_wait_share()))
        workers = self.pruner.spec.distributed.workers
        return {
            "imagesPerSecondPerWorker": round(sum(r for r, _ in rates) / workers, 1),
            "loaderWaitShare": round(sum(w for _, w in rates) / len(rates), 4),
        }
