"""The training loop shared by fine-tuning and baseline training."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kubeslim.api.spec import Device, FineTune
from kubeslim.progress import Reporter

Batches = DataLoader[tuple[torch.Tensor, int]]


def pick_device(device: Device | str) -> torch.device:
    """auto: CUDA when a GPU is visible, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device) == "cuda" and not torch.cuda.is_available():
        from kubeslim.errors import SpecError

        raise SpecError("spec.pruning.device", "cuda was asked for but no GPU is visible")
    return torch.device(str(device))


def make_optimizer(
    model: nn.Module, cfg: FineTune
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with (Nesterov) momentum and a step decay, per the spec."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


def train_epoch(
    model: nn.Module,
    batches: Batches,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    device: torch.device,
    reporter: Reporter,
    after_step: Callable[[], None] | None = None,
    teacher: nn.Module | None = None,
    distillation: float = 0.0,
    max_steps: int | None = None,
) -> float:
    """One pass over the data; returns the mean loss."""
    model.train()
    total, seen = 0.0, 0
    steps = len(batches) if max_steps is None else min(max_steps, len(batches))
    last_report = 0.0
    for step, (images, labels) in enumerate(batches):
        if step >= steps:
            break
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
        total += float(loss.detach()) * len(y)
        seen += len(y)
        now = time.monotonic()
        if now - last_report > 0.5 or step + 1 == steps:
            reporter.update(step=step + 1, steps=steps, loss=round(float(loss.detach()), 4))
            last_report = now
    return total / max(seen, 1)


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
    model.eval()
    correct, seen = 0, 0
    for images, labels in batches:
        pred = model(preprocess(images).to(device)).argmax(dim=1).cpu()
        correct += int((pred == labels).sum())
        seen += len(labels)
    return correct / max(seen, 1)
