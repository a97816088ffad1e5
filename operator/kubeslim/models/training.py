"""The training loop shared by fine-tuning and baseline training."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kubeslim.api.spec import Device, FineTune
from kubeslim.progress import Reporter

Batches = DataLoader[tuple[torch.Tensor, int]]


@dataclass
class Throughput:
    """Images trained and where the time went: blocked on the loader, or all of a step."""

    images: int = 0
    loader_seconds: float = 0.0
    step_seconds: float = 0.0
    # Processes per worker (one per GPU): one process's rate times this is the worker's.
    processes_per_worker: int = 1

    def add(self, images: int, loader_seconds: float, step_seconds: float) -> None:
        self.images += images
        self.loader_seconds += loader_seconds
        self.step_seconds += step_seconds

    def images_per_second(self) -> float:
        """This process's training rate."""
        return self.images / self.step_seconds if self.step_seconds > 0 else 0.0

    def images_per_second_per_worker(self) -> float:
        """The worker's rate, if its other processes keep this one's pace."""
        return self.images_per_second() * self.processes_per_worker

    def loader_wait_share(self) -> float:
        """Time blocked on the next batch over the whole step time (0: the loader keeps up)."""
        return self.loader_seconds / self.step_seconds if self.step_seconds > 0 else 0.0


def pick_device(device: Device | str) -> torch.device:
    """auto: CUDA when a GPU is visible, else the CPU."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "cuda" and not torch.cuda.is_available():
        from kubeslim.errors import SpecError

        raise SpecError("spec.pruning.device", "cuda was asked for but no GPU is visible")
    if str(device) == "cuda":
        from kubeslim.stages.distributed import current_rank

        # One process per GPU under torchrun: each takes the GPU of its local rank.
        return torch.device("cuda", current_rank().local_rank)
    return torch.device(str(device))


def make_optimizer(
    model: nn.Module, cfg: FineTune, world_size: int = 1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with (Nesterov) momentum and a step decay, per the spec.

    learningRate is for one process's batch; with world_size processes the global
    batch is world_size times larger and the rate scales with it (the linear
    scaling rule of Goyal et al., 2017).
    """
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate * world_size,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    device: torch.device,
    reporter: Reporter,
    after_step: Callable[[], None] | None = None,
    teacher: nn.Module | None = None,
    distillation: float = 0.0,
    max_steps: int | None = None,
    *,
    done: int = 0,
    on_step: Callable[[int], None] | None = None,
    meter: Throughput | None = None,
) -> float:
    """One pass over the data; returns the mean loss.

    done: batches of this epoch already trained (resuming): `batches` then yields
    the rest, and steps are numbered from done + 1. on_step(n) runs after step n.
    meter collects images and loader wait.
    """
    model.train()
    total, seen = 0.0, 0
    steps = _epoch_steps(batches, max_steps, done)
    meter = meter if meter is not None else Throughput()
    last_report = 0.0
    batch_iter = iter(batches)
    for step in range(done + 1, steps + 1):
        started = time.perf_counter()
        try:
            images, labels = next(batch_iter)
        except StopIteration:
            break
        loaded = time.perf_counter()
        x, y = preprocess(images).to(device), labels.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None and distillation > 0:
            loss = (1 - distillation) * loss + distillation * _kd_loss(logits, teacher, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        value = float(loss.detach())  # waits for the device: the step's time is complete
        meter.add(len(y), loaded - started, time.perf_counter() - started)
        total += value * len(y)
        seen += len(y)
        now = time.monotonic()
        if now - last_report > 0.5 or step == steps:
            reporter.update(
                step=step,
                steps=steps,
                loss=round(value, 4),
                imagesPerSecondPerWorker=round(meter.images_per_second_per_worker(), 1),
                loaderWaitShare=round(meter.loader_wait_share(), 4),
            )
            last_report = now
        if on_step is not None:
            on_step(step)
    return total / max(seen, 1)


def _epoch_steps(batches: Iterable[object], max_steps: int | None, done: int) -> int:
    """Steps in the whole epoch: the loader's length (plus the batches done), capped."""
    try:
        length = len(batches) + done  # type: ignore[arg-type]
    except TypeError:  # a stream of unknown length (an iterable dataset)
        if max_steps is None:
            raise ValueError("an epoch of unknown length needs max_steps") from None
        return max_steps
    return length if max_steps is None else min(max_steps, length)


def _kd_loss(
    logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor, t: float = 4.0
) -> torch.Tensor:
    """Hinton's distillation: match the original model's softened outputs."""
    with torch.no_grad():
        target = F.softmax(teacher(x) / t, dim=1)
    return F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * t * t


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """Top-1 accuracy, 0..1."""
    correct, seen = count_correct(model, batches, preprocess, device)
    return correct / max(seen, 1)


@torch.no_grad()
def count_correct(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> tuple[int, int]:
    """Correct top-1 predictions and images seen (sums over ranks give the accuracy)."""
    model.eval()
    correct, seen = 0, 0
    for images, labels in batches:
        pred = model(preprocess(images).to(device)).argmax(dim=1).cpu()
        correct += int((pred == labels).sum())
        seen += len(labels)
    return correct, seen


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    limit: int,
) -> int:
    """Re-estimate every BatchNorm's running statistics from `limit` batches, as a plain
    average over them (momentum None) of train-mode forward passes; weights unchanged.

    Returns the batches used; with none, the statistics are left as they were.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    inputs = iter(itertools.islice(batches, limit))
    first = next(inputs, None)
    if not norms or first is None:
        return 0
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    used = 0
    for images, _ in itertools.chain([first], inputs):
        model(preprocess(images).to(device))
        used += 1
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)
    return used
