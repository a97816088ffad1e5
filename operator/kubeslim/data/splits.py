"""The three splits every stage draws from, planned as indices (no torch here).

- train: fine-tuning and quantization calibration;
- tuning: held out from train, for accuracy-controlled quantization and any
  selection between candidates, so nothing that picks or tunes sees the images
  whose accuracy is reported;
- test: the dataset's own test split (or a seeded hold-out when it has none),
  used only for reported figures.

The plan is plain numpy so that a reader without torch (the runtime image)
splits exactly as the torch readers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from kubeslim.api.spec import DatasetSpec
from kubeslim.errors import SpecError

D = TypeVar("D")


@dataclass
class Splits(Generic[D]):
    """What every stage needs from the data: three disjoint splits."""

    train: D
    tuning: D
    test: D
    num_classes: int


@dataclass(frozen=True)
class SplitPlan:
    """Indices of each split. train and tuning index the dataset's training part;
    test indexes its test part, or the training part when `shared` (no test part
    of its own, so the test split was held out of it first)."""

    train: np.ndarray
    tuning: np.ndarray
    test: np.ndarray
    shared: bool


def plan_splits(n_train: int, n_test: int | None, spec: DatasetSpec) -> SplitPlan:
    """Deterministic by spec.dataset.seed: the same spec gives the same indices.

    Order: the test split (own, or validationFraction held out), then trainLimit
    caps what is left, then tuningFraction of that is held out as the tuning split;
    validationLimit caps the test split.
    """
    rng = np.random.default_rng(spec.seed)
    if n_test is None:
        perm = rng.permutation(n_train)
        n_held = max(1, round(n_train * spec.validation_fraction)) if n_train > 1 else 0
        test, pool = perm[:n_held], perm[n_held:]
    else:
        test, pool = np.arange(n_test), np.arange(n_train)
    pool = _limit(pool, spec.train_limit, rng)
    test = _limit(test, spec.validation_limit, rng)
    shuffled = rng.permutation(pool)
    n_tuning = max(1, round(len(pool) * spec.tuning_fraction)) if len(pool) > 1 else 0
    tuning, train = shuffled[:n_tuning], shuffled[n_tuning:]
    if len(train) == 0 or len(tuning) == 0 or len(test) == 0:
        raise SpecError(
            "spec.dataset",
            f"the dataset is too small for three splits: train {len(train)}, tuning "
            f"{len(tuning)}, test {len(test)} images",
        )
    return SplitPlan(np.sort(train), np.sort(tuning), np.sort(test), shared=n_test is None)


def _limit(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= len(idx):
        return idx
    return np.sort(rng.choice(idx, size=limit, replace=False))
