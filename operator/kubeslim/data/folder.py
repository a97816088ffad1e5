"""ImageFolder trees (one folder per class) on disk, on a volume or below an s3:// prefix.

numpy and Pillow only: the runtime image reads folders with no torch installed.
An s3:// tree is listed once; each image is fetched when a loader asks for it
(kubeslim.data.files), so training starts at once and local disk stays within
spec.dataset.cacheBudget.
"""

from __future__ import annotations

import io

import numpy as np

from kubeslim.data.arrays import Parts
from kubeslim.data.files import Files, Names, open_files
from kubeslim.errors import SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


class FolderImages:
    """Decodes lazily to uint8 [3, H, W]: large trees never sit in memory."""

    def __init__(self, files: Files, names: Names, labels: np.ndarray, size: tuple[int, int]):
        self.files = files
        self.names = names
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return decode(self.files.read(self.names[i]), self.size), int(self.labels[i])


def decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """An encoded image as uint8 [3, H, W] of the given (height, width)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_image_folder(uri: str, size: tuple[int, int], cache_budget: str | None = None) -> Parts:
    """train/ and val/ sub-folders (val/ is the test part) when present, else one part."""
    files = open_files(uri, cache_budget)
    return image_folder(files, files.names(), size)


def image_folder(files: Files, listed: list[str], size: tuple[int, int]) -> Parts:
    """The parts of a listed folder tree (load_image_folder's rule)."""
    names = [n for n in listed if _is_image(n)]
    tops = {n.partition("/")[0] for n in names if n.count("/") >= 2}
    if {"train", "val"} <= tops:
        classes = _classes([n.removeprefix("train/") for n in names if n.startswith("train/")])
        train = _images(files, names, "train/", classes, size)
        return Parts(train, _images(files, names, "val/", classes, size), len(classes))
    classes = _classes(names)
    return Parts(_images(files, names, "", classes, size), None, len(classes))


def _is_image(name: str) -> bool:
    return "." in name and "." + name.rpartition(".")[2].lower() in IMAGE_SUFFIXES


def _classes(names: list[str]) -> list[str]:
    classes = sorted({n.partition("/")[0] for n in names if "/" in n})
    if not classes:
        raise SpecError("spec.dataset.uri", "no class folders with images: the dataset is empty")
    return classes


def _images(
    files: Files, names: list[str], prefix: str, classes: list[str], size: tuple[int, int]
) -> FolderImages:
    label_of = {c: i for i, c in enumerate(classes)}
    picked = [
        (n, label_of[c])
        for n in names
        if n.startswith(prefix)
        and "/" in n[len(prefix) :]
        and (c := n[len(prefix) :].partition("/")[0]) in label_of
    ]
    labels = np.array([label for _, label in picked], dtype=np.int64)
    return FolderImages(files, Names([n for n, _ in picked]), labels, size)
