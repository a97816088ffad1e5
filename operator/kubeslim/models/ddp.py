"""The torch.distributed side of data-parallel fine-tuning: process group, DDP, collectives.

Every helper is a no-op (or the identity) in a single process, so the training
code reads the same with one process or many.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kubeslim.api.spec import DistributedBackend
from kubeslim.stages.distributed import Rank, current_rank

T = TypeVar("T")


def backend_for(backend: DistributedBackend, cuda: bool) -> str:
    """auto: nccl when the processes train on GPUs, gloo on the CPU."""
    if backend is DistributedBackend.auto:
        return "nccl" if cuda else "gloo"
    return str(backend)


def init(backend: DistributedBackend, cuda: bool) -> Rank:
    """Join torchrun's process group (env:// rendezvous) when there is more than one rank."""
    rank = current_rank()
    if rank.distributed and not dist.is_initialized():
        _die_with_launcher()
        if cuda:
            torch.cuda.set_device(rank.local_rank)
        dist.init_process_group(backend_for(backend, cuda))
    return rank


def _die_with_launcher() -> None:
    """Exit when torchrun dies: it starts workers in sessions of their own, so a SIGKILLed
    torchrun (a killed `kubeslim run`) would otherwise leave them training as orphans,
    writing checkpoints beside the run that replaces them. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def shutdown() -> None:
    """Leave the process group (a clean exit for every rank)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def size() -> int:
    """The number of processes training together (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def broadcast(value: T) -> T:
    """Rank 0's value on every rank (any picklable object)."""
    if not active():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's value, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def total(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return [float(v) for v in t]


def average_buffers(model: nn.Module) -> None:
    """Every floating-point buffer (BatchNorm's running statistics) averaged over the
    ranks in place, so each rank holds the same model."""
    if not active():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= dist.get_world_size()


def barrier() -> None:
    if active():
        dist.barrier()


class Replicated:
    """A model wrapped in DistributedDataParallel, rewrapped when its parameter shapes change.

    DDP fixes its gradient buckets to the shapes it saw when built; physically
    removing channels (torch-pruning) changes them, so the wrapper is rebuilt
    then rather than reused.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.module = model
        self.device = device
        self._wrapped: nn.Module | None = None
        self._shapes: list[torch.Size] = []

    def training_model(self) -> nn.Module:
        """What the training step calls: DDP over the model on many ranks, else the model."""
        if not active():
            return self.module
        shapes = [p.shape for p in self.module.parameters()]
        if self._wrapped is None or shapes != self._shapes:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(self.module, device_ids=ids)
            self._shapes = shapes
        return self._wrapped
