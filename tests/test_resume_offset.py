"""A run resumed mid-epoch starts its loader at the checkpoint's batch: it reads none
of the items the interrupted run already trained on, and still ends exactly where an
uninterrupted run ends (one process here; tests/test_checkpoint.py kills a 2-process
torchrun run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from kubeslim.api.spec import PruningSpec
from kubeslim.data.datasets import loader
from kubeslim.models.checkpoint import Checkpointer
from kubeslim.progress import Reporter
from kubeslim.pruning.pruner import FineTuneData, Pruner, PruneReport
from kubeslim.store.local import LocalStore

ITEMS, BATCH, EPOCHS = 48, 4, 2  # 12 steps an epoch
KILLED_AT = 16  # global step: the 4th batch of the second epoch


class Counted(Dataset[tuple[torch.Tensor, int]]):
    """Small 8x8 grayscale images; counts the items read."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.images = torch.randint(0, 256, (ITEMS, 1, 8, 8), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, 10, (ITEMS,), generator=gen).tolist()
        self.reads = 0

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.images[index], self.labels[index]


class Killed(Exception):
    """The interruption: raised right after the checkpoint of KILLED_AT is written."""


class KilledAfterSave(Checkpointer):
    def save(self, state: dict[str, Any], rank_state: dict[str, Any]) -> None:
        super().save(state, rank_state)
        if state["position"]["global_step"] == KILLED_AT:
            raise Killed


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _prune(ds: Counted, checkpoints: Checkpointer) -> PruneReport:
    spec = PruningSpec.model_validate(
        {
            "target": {"filterRate": 0.25},
            "schedule": {"steps": 1},
            "roundTo": 1,
            "fineTune": {"epochs": EPOCHS, "batchSize": BATCH, "learningRate": 0.05},
        }
    )
    train = loader(ds, BATCH, shuffle=True, seed=5)
    data = FineTuneData(train, lambda t: t.float() / 255, torch.device("cpu"))
    torch.manual_seed(1)  # as the prune stage seeds before fine-tuning
    _, report = Pruner(spec, Reporter("none")).run(
        _model(), torch.zeros(1, 1, 8, 8), 10, data, checkpoints
    )
    return report


def test_a_resumed_epoch_reads_only_the_batches_left(tmp_path: Path) -> None:
    reference = Counted()
    expected = _prune(reference, Checkpointer(LocalStore(str(tmp_path / "a")), "p", "fp", 4, True))
    # Fine-tuning, then BatchNorm's re-estimation: up to 40 batches, here one epoch's.
    assert reference.reads == EPOCHS * ITEMS + ITEMS

    store = LocalStore(str(tmp_path / "b"))
    with pytest.raises(Killed):
        _prune(Counted(), KilledAfterSave(store, "p", "fp", 4, main=True))
    resumed = Counted()
    report = _prune(resumed, Checkpointer(store, "p", "fp", 4, main=True))

    assert report.resumed_from_step == KILLED_AT
    # Only the rest of the second epoch: the 16 steps already trained are not read again.
    assert resumed.reads == EPOCHS * ITEMS - KILLED_AT * BATCH + ITEMS
    # Same items in the same order: the same masks, parameters and statistics, bit for bit.
    assert report.ranks == expected.ranks and report.layers == expected.layers
