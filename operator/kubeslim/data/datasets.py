"""torch views of the datasets (kubeslim.data.arrays reads them) plus a batch-level preprocessor.

Images stay uint8 and small in memory; resizing, channel changes and
normalization happen per batch (one vectorised call instead of one per image),
identically for torch fine-tuning, NNCF calibration and OpenVINO accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from kubeslim import errors
from kubeslim.api.spec import DatasetSpec, ModelSpec
from kubeslim.data.arrays import ImageArrays, ImageSource, load_array_splits, per_channel
from kubeslim.data.augment import Augment, choose, sample_generator
from kubeslim.data.sampler import ShareSampler
from kubeslim.data.splits import Splits
from kubeslim.errors import KubeslimError, SpecError


class ImageTensorDataset(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images [N, C, H, W] and integer labels, all in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class SourceDataset(Dataset[tuple[torch.Tensor, int]]):
    """A lazily decoded numpy source (an image folder) as a torch dataset."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[i]
        return torch.from_numpy(image), label


class Preprocess:
    """uint8 [B, C, H, W] -> normalized float [B, C', H', W'] as the model expects."""

    def __init__(self, dataset: DatasetSpec, model: ModelSpec) -> None:
        channels, height, width = model.input_shape
        self.size = (height, width)
        self.resize = dataset.resize
        self.channels = channels
        self.mean = torch.tensor(per_channel(dataset.mean, channels)).view(1, -1, 1, 1)
        self.std = torch.tensor(per_channel(dataset.std, channels)).view(1, -1, 1, 1)

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


def load_splits(spec: DatasetSpec, size: tuple[int, int] = (224, 224)) -> Splits[Any]:
    """The train, tuning and test splits the spec describes, as torch datasets over
    kubeslim.data.arrays' readers (the same images the torch-free stages see).

    size is what image folders decode to (built-in datasets keep their own).
    """
    splits = load_array_splits(spec, size)
    return Splits(
        train=as_dataset(splits.train),
        tuning=as_dataset(splits.tuning),
        test=as_dataset(splits.test),
        num_classes=splits.num_classes,
    )


def as_dataset(source: ImageSource) -> Dataset[tuple[torch.Tensor, int]]:
    """In-memory arrays shared with torch (no copy); anything else decoded per item."""
    if isinstance(source, ImageArrays):
        return ImageTensorDataset(
            torch.from_numpy(source.images), torch.from_numpy(source.labels.astype(np.int64))
        )
    return SourceDataset(source)


class Augmented(Dataset[tuple[torch.Tensor, int]]):
    """A dataset read by (index, epoch) keys, each image augmented with its own seeded
    generator: the same images in any loader process (see kubeslim.data.sampler)."""

    def __init__(self, ds: Dataset[tuple[torch.Tensor, int]], augment: Augment, seed: int) -> None:
        self.ds = ds
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        image, label = self.ds[index]
        gen = sample_generator(self.seed, epoch, index)
        if get_worker_info() is not None:
            return self.augment(image, gen), label  # loader processes run one thread
        # In the training process: on per-image ops torch's intra-op threads cost far
        # more than they give (27 ms against 0.3 ms for a 224 px crop on a busy 2-core
        # machine), so crop with one thread and hand the others back to the model.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.augment(image, gen), label
        finally:
            torch.set_num_threads(threads)


def train_augment(spec: DatasetSpec, ds: Dataset[tuple[torch.Tensor, int]]) -> Augment | None:
    """spec.dataset.augmentation for this training split (the rule in kubeslim.data.augment)."""
    image, _ = ds[0]
    return choose(spec.augmentation, tuple(image.shape), spec.resize)


class Loader(DataLoader[tuple[torch.Tensor, int]]):
    """A DataLoader whose loader processes' kubeslim errors (a missing S3 object, an
    unreachable server) reach the stage as the same one-line errors and exit codes as
    in-process; torch re-raises them as RuntimeErrors carrying the whole traceback."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # any iterator does
        return _KubeslimErrors(super().__iter__())


class _KubeslimErrors:
    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> _KubeslimErrors:
        return self

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            return next(self.batches)
        except StopIteration:
            raise
        except Exception as err:
            raise _from_worker(err) or err from None


def _from_worker(err: Exception) -> KubeslimError | None:
    """The kubeslim error at the end of a worker's traceback, rebuilt; None if other."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    name, _, message = (lines[-1] if lines else "").partition(": ")
    kind = getattr(errors, name.removeprefix("kubeslim.errors."), None)
    if not name.startswith("kubeslim.errors.") or not isinstance(kind, type):
        return None
    if issubclass(kind, SpecError):
        field, _, text = message.partition(": ")
        return kind(field, text)
    if issubclass(kind, KubeslimError):
        return kind(message)
    return None


def loader(
    ds: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    augment: Augment | None = None,
) -> Loader:
    """A DataLoader of uint8 batches (preprocess them with Preprocess): rank's share of ds
    (kubeslim.data.sampler; `.sampler.set_epoch(e)` picks an epoch's order), read and
    augmented by `workers` processes."""
    sampler = ShareSampler(
        len(ds),  # type: ignore[arg-type]
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        keyed=augment is not None,
    )
    if augment is not None:
        ds = Augmented(ds, augment, seed)
    elif isinstance(ds, ImageTensorDataset):
        # Tensors already in memory: a worker would only add copies between processes.
        workers = 0
    return Loader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        # Pinned pages only help copies to a GPU.
        pin_memory=workers > 0 and torch.cuda.is_available(),
        # Enough decoded batches in flight to hide a slow read (one S3 GET per image).
        prefetch_factor=4 if workers > 0 else None,
    )
