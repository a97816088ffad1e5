"""The training loader: each rank's share, loader processes, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kubeslim.api.spec import Augmentation, DatasetSpec
from kubeslim.data.augment import PadCropFlip, choose, resized_crop_flip
from kubeslim.data.datasets import SourceDataset, load_splits, loader, train_augment
from kubeslim.data.folder import load_image_folder


def make_folder(root: Path, per_class: int = 12, side: int = 16) -> Path:
    """A two-class ImageFolder of small JPEGs whose pixels encode their index."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.jpg", quality=95)
    return root


def _labels_and_images(batches: object) -> list[tuple[int, bytes]]:
    out = []
    for images, labels in batches:  # type: ignore[attr-defined]
        out += [(int(y), x.numpy().tobytes()) for x, y in zip(images, labels, strict=True)]
    return out


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shares_are_disjoint_and_cover_the_split(world_size: int) -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(25), torch.zeros(25, dtype=torch.long))
    shares = [
        [int(i) for x, _ in loader(ds, 4, rank=r, world_size=world_size) for i in x]  # type: ignore[arg-type]
        for r in range(world_size)
    ]
    seen = [i for share in shares for i in share]
    assert sorted(seen) == list(range(25))  # disjoint and complete


def test_training_shares_are_disjoint_even_and_change_per_epoch() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(25), torch.zeros(25, dtype=torch.long))
    loaders = [loader(ds, 4, shuffle=True, seed=7, rank=r, world_size=2) for r in range(2)]  # type: ignore[arg-type]

    def epoch(e: int) -> list[list[int]]:
        for lo in loaders:
            lo.sampler.set_epoch(e)  # type: ignore[attr-defined]
        return [[int(i) for x, _ in lo for i in x] for lo in loaders]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert first == again  # deterministic per seed and epoch
    assert first != second
    assert len(first[0]) == len(first[1]) == 13  # same steps on every rank (DDP)
    # Disjoint but for DistributedSampler's padding: one item repeated to even the shares.
    assert set(first[0] + first[1]) == set(range(25))
    assert len(first[0]) + len(first[1]) - len(set(first[0]) | set(first[1])) == 1


def test_without_set_epoch_each_pass_is_a_new_order() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(50), torch.zeros(50, dtype=torch.long))
    lo = loader(ds, 10, shuffle=True, seed=1)  # type: ignore[arg-type]
    passes = [[int(i) for x, _ in lo for i in x] for _ in range(2)]
    assert passes[0] != passes[1] and sorted(passes[0]) == sorted(passes[1]) == list(range(50))


def test_loader_processes_yield_the_same_augmented_samples(tmp_path: Path) -> None:
    parts = load_image_folder(str(make_folder(tmp_path / "data")), (16, 16))
    ds = SourceDataset(parts.train)
    augment = PadCropFlip(2)
    runs = []
    for workers in (0, 2):
        lo = loader(ds, 5, shuffle=True, seed=3, workers=workers, augment=augment)
        lo.sampler.set_epoch(4)  # type: ignore[attr-defined]
        runs.append(_labels_and_images(lo))
    assert runs[0] == runs[1]
    plain = _labels_and_images(loader(ds, 5, shuffle=True, seed=3))
    assert sorted(y for y, _ in plain) == sorted(y for y, _ in runs[0])
    assert {x for _, x in plain} != {x for _, x in runs[0]}  # the crops did change pixels


def test_augmentation_rule_per_input() -> None:
    auto = Augmentation.auto
    assert choose(auto, (1, 28, 28), None) is None  # grayscale digits
    small = choose(auto, (3, 32, 32), None)
    assert isinstance(small, PadCropFlip) and small.pad == 4  # CIFAR style
    assert choose(auto, (3, 224, 224), None) is resized_crop_flip  # ImageNet style
    assert choose(auto, (3, 32, 32), 256) is resized_crop_flip  # resized ImageNet-style input
    assert choose(Augmentation.none, (3, 224, 224), None) is None
    assert isinstance(choose(Augmentation.crop_flip, (1, 28, 28), None), PadCropFlip)
    digits = load_splits(DatasetSpec.model_validate({"name": "digits"}))
    assert train_augment(DatasetSpec.model_validate({"name": "digits"}), digits.train) is None


def test_augmentations_keep_shape_and_dtype() -> None:
    image = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)
    for augment in (resized_crop_flip, PadCropFlip(4)):
        gen = torch.Generator().manual_seed(0)
        out = augment(image, gen)
        assert out.shape == image.shape and out.dtype == torch.uint8


class _Failing(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise self.error


@pytest.mark.parametrize("workers", [0, 1])
def test_errors_in_loader_processes_stay_one_line_kubeslim_errors(workers: int) -> None:
    from kubeslim.errors import SpecError, StoreUnavailable

    bad = SpecError("spec.dataset.uri", "s3://b/x/cat/1.jpg: no such artifact")
    with pytest.raises(SpecError) as err:
        list(loader(_Failing(bad), 2, workers=workers))
    assert (err.value.field, err.value.message) == (bad.field, bad.message)
    with pytest.raises(StoreUnavailable) as down:
        list(loader(_Failing(StoreUnavailable("cannot reach the S3 endpoint")), 2, workers=workers))
    assert str(down.value) == "cannot reach the S3 endpoint"
    with pytest.raises(ZeroDivisionError):  # not ours: left as torch raises it
        list(loader(_Failing(ZeroDivisionError("x")), 2, workers=workers))


def test_a_resumed_epoch_skips_done_items_without_reading_them() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(40), torch.zeros(40, dtype=torch.long))
    lo = loader(ds, 4, shuffle=True, seed=2, rank=1, world_size=2)  # type: ignore[arg-type]
    lo.sampler.set_epoch(3)  # type: ignore[attr-defined]
    whole = [int(i) for x, _ in lo for i in x]
    lo.sampler.set_epoch(3, start=8)  # type: ignore[attr-defined]
    assert len(lo) == 3
    assert [int(i) for x, _ in lo for i in x] == whole[8:]
    assert len(lo) == 5 and [int(i) for x, _ in lo for i in x] == whole  # one pass only
