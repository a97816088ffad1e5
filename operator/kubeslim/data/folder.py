"""ImageFolder trees (one folder per class) on disk or in an artifact store.

numpy and Pillow only: the runtime image reads folders with no torch installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kubeslim.data.arrays import Parts
from kubeslim.errors import SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


class FolderImages:
    """Decodes lazily to uint8 [3, H, W]: large trees never sit in memory."""

    def __init__(self, items: list[tuple[Path, int]], size: tuple[int, int]) -> None:
        self.items = items
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()
        return arr, label


def load_image_folder(uri: str, size: tuple[int, int]) -> Parts:
    """train/ and val/ sub-folders (val/ is the test part) when present, else one part."""
    root = _local_root(uri)
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = _classes(root / "train")
        train = FolderImages(_items(root / "train", classes), size)
        test = FolderImages(_items(root / "val", classes), size)
        return Parts(train, test, len(classes))
    classes = _classes(root)
    return Parts(FolderImages(_items(root, classes), size), None, len(classes))


def _local_root(uri: str) -> Path:
    if uri.startswith("s3://"):
        from kubeslim.store import open_store
        from kubeslim.store.cache import mirror_prefix

        return mirror_prefix(open_store(uri))
    root = Path(uri.removeprefix("file://")).expanduser()
    if not root.is_dir():
        raise SpecError("spec.dataset.uri", f"expected a directory of class folders, got {uri!r}")
    return root


def _classes(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SpecError("spec.dataset.uri", f"{root} has no class folders: the dataset is empty")
    return classes


def _items(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    return [
        (p, i)
        for i, c in enumerate(classes)
        for p in sorted((root / c).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
