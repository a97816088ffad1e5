"""Where a dataset's bytes come from: a local folder, or an s3:// prefix read on demand.

An s3:// dataset is listed once and then read object by object (or byte range by byte
range inside a tar shard) by whichever process needs it, loader workers included:
nothing is mirrored before training starts. Whole objects go through a cache bounded
by spec.dataset.cacheBudget, so a dataset smaller than the budget is downloaded once
and a larger one never takes more disk than the budget.
numpy only: the runtime image reads datasets without torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np

from kubeslim.errors import SpecError, StoreError, StoreUnavailable
from kubeslim.store.cache import BoundedCache, byte_quantity, dataset_cache

if TYPE_CHECKING:
    from kubeslim.store.s3 import S3Store


class Files(Protocol):
    """The files of one dataset root, named by '/'-separated relative paths."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...

    def read_range(self, name: str, start: int, length: int) -> bytes: ...

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> BinaryIO: ...

    def version(self, name: str) -> str:
        """A string that changes whenever the file does (keys derived data)."""
        ...

    @property
    def where(self) -> str:
        """The root, as a URI or an absolute path."""
        ...


class LocalFiles:
    """A folder on a local disk or a mounted volume."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            rel = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else f"{rel}/"
            found += [prefix + f for f in sorted(files) if not f.startswith(".")]
        return found

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with open(self.root / name, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def version(self, name: str) -> str:
        st = (self.root / name).stat()
        return f"{st.st_size}-{st.st_mtime_ns}"

    @property
    def where(self) -> str:
        return str(self.root.resolve())


class S3Files:
    """An s3:// prefix: listed once, objects fetched on demand through a bounded cache.

    Each process opens its own S3 client (an s3fs client does not survive a fork into
    a loader worker in a usable state). Store errors name the spec field, not
    artifacts.uri; unreachable servers stay transient (the Job retries).
    """

    def __init__(self, uri: str, budget: int, field: str = "spec.dataset.uri") -> None:
        self.uri = uri.rstrip("/")
        self.field = field
        self.cache: BoundedCache = dataset_cache(self.uri, budget)
        self._store: S3Store | None = None
        self._pid = -1

    @property
    def store(self) -> S3Store:
        from kubeslim.store.s3 import S3Store

        if self._store is None or self._pid != os.getpid():
            with self._errors():
                self._store, self._pid = S3Store(self.uri), os.getpid()
        return self._store

    def names(self) -> list[str]:
        with self._errors():
            return self.store.list_keys()

    def read(self, name: str) -> bytes:
        with self._errors():
            return self.cache.read(name, lambda: self.store.read_bytes(name))

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with self._errors():
            return self.store.read_range(name, start, length)

    def size(self, name: str) -> int:
        with self._errors():
            return self.store.size(name)

    def open(self, name: str) -> BinaryIO:
        with self._errors():
            fh: BinaryIO = self.store.open_read(name)
        return fh

    def version(self, name: str) -> str:
        with self._errors():
            return self.store.version(name)

    @property
    def where(self) -> str:
        return self.uri

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as err:
            raise StoreUnavailable(_renamed(err, self.field)) from None
        except StoreError as err:
            raise SpecError(self.field, _renamed(err, self.field)) from None


def _renamed(err: StoreError, field: str) -> str:
    """The store's one-line message without its artifacts.uri prefix."""
    text = str(err)
    return text.removeprefix("artifacts.uri ").replace(f"{field}: ", "", 1)


def open_files(uri: str, cache_budget: str | None, field: str = "spec.dataset.uri") -> Files:
    """The files below uri: s3://bucket/prefix, file:///path or a path to a folder."""
    if uri.startswith("s3://"):
        return S3Files(uri, byte_quantity(cache_budget), field)
    root = Path(uri.removeprefix("file://")).expanduser()
    if not root.is_dir():
        raise SpecError(field, f"expected a directory, got {uri!r}")
    return LocalFiles(root)


class Names:
    """Many strings packed in two numpy arrays.

    1.28M file names as Python strings take ~150 MB per process, and forked loader
    workers copy those pages as reference counts change; packed they stay ~60 MB,
    shared.
    """

    def __init__(self, names: list[str]) -> None:
        encoded = [n.encode() for n in names]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()
