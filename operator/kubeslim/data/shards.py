"""Sharded tar datasets in the WebDataset format, on a volume or below an s3:// prefix.

A shard is a plain tar; the files of one sample share a key (the path up to the first
dot of the file name) and differ by extension: one image (jpg, png, webp, ...) and its
class as decimal text in `.cls`, as webdataset's TarWriter/ShardWriter write them.

spec.dataset.uri names the training shards: a brace pattern
(s3://bucket/train-{000000..000099}.tar), one .tar, or a folder (prefix) whose .tar
files are the shards. spec.dataset.testUri names the test shards the same way; without
it, validationFraction of the samples is held out as the test split. The tuning split
is held out of the training samples (kubeslim.data.splits) as for any dataset.

Each shard's tar headers are read once (on S3: streamed in 8 MiB blocks, no local
copy) into a compact index (shard, offset, length, label per sample, 28 bytes each);
samples are then read one by one (a ranged GET on S3), so every split, rank share,
limit and shuffle works per sample as for image folders.
"""

from __future__ import annotations

import array
import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from kubeslim.data.arrays import Parts
from kubeslim.data.files import Files, open_files
from kubeslim.data.folder import IMAGE_SUFFIXES, decode
from kubeslim.errors import SpecError
from kubeslim.store.cache import cache_dir


def is_sharded(uri: str) -> bool:
    """A brace pattern or a .tar (a folder of shards is recognised once listed)."""
    return uri.endswith(".tar") or ("{" in uri and ".." in uri and "}" in uri)


@dataclass
class ShardIndex:
    """Where each sample of some shards lies."""

    shards: list[str]
    shard: np.ndarray  # int32 index into shards
    offset: np.ndarray  # int64 byte offset of the image in its shard
    length: np.ndarray  # int64 byte length of the image
    label: np.ndarray  # int64


class ShardImages:
    """Samples of tar shards, decoded lazily to uint8 [3, H, W]."""

    def __init__(self, files: Files, index: ShardIndex, size: tuple[int, int]) -> None:
        self.files = files
        self.index = index
        self.size = size

    def __len__(self) -> int:
        return len(self.index.label)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        ix = self.index
        name = ix.shards[int(ix.shard[i])]
        data = self.files.read_range(name, int(ix.offset[i]), int(ix.length[i]))
        return decode(data, self.size), int(ix.label[i])


def load_shards(
    uri: str, test_uri: str | None, size: tuple[int, int], cache_budget: str | None = None
) -> Parts:
    """The training shards and, with testUri, the test shards (module text)."""
    train = _open(uri, "spec.dataset.uri", size, cache_budget)
    test = None if test_uri is None else _open(test_uri, "spec.dataset.testUri", size, cache_budget)
    return parts(train, test)


def parts(train: ShardImages, test: ShardImages | None) -> Parts:
    """The parts of a sharded dataset; classes are 0 .. the largest label."""
    labels = [train.index.label] + ([] if test is None else [test.index.label])
    return Parts(train, test, max(int(x.max()) for x in labels) + 1)


def tar_names(names: list[str]) -> list[str]:
    """The shards among a folder's file names (those at its top level)."""
    return [n for n in names if n.endswith(".tar") and "/" not in n]


def shard_images(files: Files, names: list[str], field: str, size: tuple[int, int]) -> ShardImages:
    """The samples of the named shards below files (their headers read now)."""
    if not names:
        raise SpecError(field, "no .tar shards found")
    index = index_shards(files, names, field)
    if len(index.label) == 0:
        raise SpecError(field, "the shards hold no image samples")
    return ShardImages(files, index, size)


def _open(uri: str, field: str, size: tuple[int, int], budget: str | None) -> ShardImages:
    root, names = shard_names(uri, field)
    files = open_files(root, budget, field)
    return shard_images(files, tar_names(files.names()) if names is None else names, field, size)


def shard_names(uri: str, field: str) -> tuple[str, list[str] | None]:
    """The folder of the shards and their names (None: every .tar in the folder)."""
    if not is_sharded(uri):
        return uri, None
    from braceexpand import braceexpand

    expanded = list(braceexpand(uri))
    folders = {u.rpartition("/")[0] for u in expanded}
    if len(folders) != 1 or not all(u.endswith(".tar") for u in expanded):
        raise SpecError(field, f"expected .tar shards in one folder, got {uri!r}")
    return folders.pop() or ".", [u.rpartition("/")[2] for u in expanded]


def index_shards(files: Files, names: list[str], field: str) -> ShardIndex:
    """Read the tar headers of every shard (module text), or their cached index."""
    rows = []
    for name in names:
        try:
            rows.append(_shard_rows(files, name, field))
        except (tarfile.TarError, ValueError, OSError) as err:
            raise SpecError(field, f"shard {name}: {err}") from None
    table = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
    shard = np.repeat(np.arange(len(names), dtype=np.int32), [len(r) for r in rows])
    return ShardIndex(names, shard, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())


def _shard_rows(files: Files, name: str, field: str) -> np.ndarray:
    """(image offset, image length, label) per sample of one shard, int64 [k, 3].

    Kept in the local cache under the shard's version (size and mtime, or ETag), so
    the stages after the first, and later runs, skip the header scan: 1.28M samples
    take minutes to scan and 24 bytes each to keep.
    """
    version = files.version(name)
    key = hashlib.sha256(f"{files.where}/{name}@{version}".encode()).hexdigest()[:32]
    cached = cache_dir() / "shard-index" / f"{key}.npy"
    if cached.exists():
        loaded: np.ndarray = np.load(cached)
        return loaded
    table = array.array("q")
    for sample, (off, n, cls) in _samples(files, name).items():
        if off < 0 or cls is None:
            raise SpecError(field, f"shard {name}: sample {sample!r} needs an image and a .cls")
        table.extend((off, n, cls))
    rows = np.frombuffer(table, dtype=np.int64).reshape(-1, 3).copy()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.npy")
    np.save(tmp, rows)
    os.replace(tmp, cached)
    return rows


def _samples(files: Files, name: str) -> dict[str, tuple[int, int, int | None]]:
    """key -> (image offset, image length, label) of one shard; -1: no image yet."""
    found: dict[str, tuple[int, int, int | None]] = {}
    with files.open(name) as fh:
        for path, offset, size in tar_members(fh):
            folder, _, base = path.rpartition("/")
            if base.startswith("__"):
                continue  # webdataset's metadata files
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            off, n, cls = found.get(key, (-1, 0, None))
            ext = ext.lower()
            if "." + ext in IMAGE_SUFFIXES:
                off, n = offset, size
            elif ext == "cls":
                fh.seek(offset)
                cls = int(fh.read(size))
            found[key] = (off, n, cls)
    return found


def tar_members(fh: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(path, data offset, size) of each regular file in a tar (ustar, GNU or pax).

    tarfile does the same at about 4x the cost per member, which at 2.5M members (an
    ImageNet-sized dataset) is minutes; headers are read by seeking, so the images
    themselves are not read.
    """
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        fh.seek(pos)
        header = fh.read(BLOCK)
        if len(header) < BLOCK or header == EMPTY_BLOCK:
            return
        if pos == 0 and _checksum(header) != _octal(header[148:156]):
            # Checked once: a file that is not a tar fails here; checking every header
            # would double the cost of indexing, and a corrupt one fails to parse anyway.
            raise tarfile.ReadError("not a tar file (bad header checksum)")
        size = _octal(header[124:136])
        kind = header[156:157]
        data = pos + BLOCK
        if kind in (b"x", b"L"):
            fh.seek(data)
            body = fh.read(size)
            if kind == b"L":
                long_name = body.rstrip(b"\0").decode()
            else:
                pax = _pax_records(body)
        elif kind in (b"0", b"\0", b"7"):
            path = pax.get("path") or long_name or _ustar_name(header)
            size = int(pax.get("size", size))
            yield path, data, size
            long_name, pax = None, {}
        elif kind != b"g":
            long_name, pax = None, {}
        pos = data + -(-size // BLOCK) * BLOCK


BLOCK = 512
EMPTY_BLOCK = bytes(BLOCK)


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    return int(text, 8) if text else 0


def _checksum(header: bytes) -> int:
    """The header's byte sum with the checksum field read as spaces."""
    return sum(header) - sum(header[148:156]) + 8 * 32


def _ustar_name(header: bytes) -> str:
    name = header[:100].rstrip(b"\0").decode()
    if header[257:262] == b"ustar":
        prefix = header[345:500].rstrip(b"\0").decode()
        if prefix:
            return f"{prefix}/{name}"
    return name


def _pax_records(body: bytes) -> dict[str, str]:
    """'LEN key=value\\n' records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos : pos + 1] != b"\0":
        length = int(body[pos : body.index(b" ", pos)])
        key, _, value = body[body.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode()
        pos += length
    return records
