"""Local copies of remote inputs for the stages: checkpoints whole, datasets within a budget."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubeslim.store.base import ArtifactStore, split_uri


def cache_dir() -> Path:
    """KUBESLIM_CACHE, else ~/.cache/kubeslim (a Job points it at its scratch volume)."""
    root = os.environ.get("KUBESLIM_CACHE") or Path.home() / ".cache" / "kubeslim"
    path = Path(root) / "inputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(uri: str) -> Path:
    """A local path holding the object at uri (local paths are used in place)."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).expanduser()
    store, key = split_uri(uri)
    local = cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16] / key
    store.download(key, local)
    return local


def mirror_prefix(store: ArtifactStore) -> Path:
    """A local copy of every object under the store's root."""
    local = cache_dir() / hashlib.sha256(store.root.encode()).hexdigest()[:16]
    for key in store.list_keys():
        target = local / key
        if not target.exists():
            store.download(key, target)
    return local


DEFAULT_BUDGET = 2**30  # spec.dataset.cacheBudget left empty
_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_SUFFIXES |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
LOW_WATER = 0.8  # eviction frees down to this share of the budget, so it runs rarely


def byte_quantity(text: str | None) -> int:
    """A Kubernetes byte quantity ('2Gi', '500M', '1000') as bytes; None: DEFAULT_BUDGET."""
    if text is None:
        return DEFAULT_BUDGET
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _SUFFIXES[suffix])
    return int(float(text))


class BoundedCache:
    """Local copies of remote objects within a byte budget, least recently used evicted.

    Shared by every process on the node that reads the same dataset (loader workers,
    ranks): a lock file serialises the accounting, files appear by atomic rename, and
    readers take bytes, never paths, so an eviction by another process cannot pull a
    file away mid-read (a file gone between lookup and read is a miss).
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        root.mkdir(parents=True, exist_ok=True)
        self._lock = root / ".lock"
        self._total = root / ".total"

    def read(self, name: str, fetch: Callable[[], bytes]) -> bytes:
        """The object called name: from the cache, else fetched and (if it fits) kept."""
        path = self._path(name)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: evicted last
            return data
        except FileNotFoundError:
            pass
        data = fetch()
        if len(data) <= self.budget * LOW_WATER:
            self._keep(path, data)
        return data

    def used(self) -> int:
        """Bytes held now (a scan; for checks and benchmarks)."""
        return sum(size for _, size, _ in self._entries())

    def _path(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def _keep(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._locked():
            total = self._read_total() + len(data)
            if total > self.budget:
                total = self._evict()
            self._total.write_text(str(total))

    def _evict(self) -> int:
        """Delete the least recently used files down to LOW_WATER of the budget."""
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.budget * LOW_WATER:
                break
            path.unlink(missing_ok=True)
            total -= size
        return total

    def _entries(self) -> list[tuple[Path, int, float]]:
        found = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.startswith("."):
                    continue  # a write in flight
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                found.append((Path(entry.path), st.st_size, st.st_mtime))
        return found

    def _read_total(self) -> int:
        try:
            return int(self._total.read_text() or 0)
        except FileNotFoundError:
            return 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def dataset_cache(uri: str, budget: int) -> BoundedCache:
    """The bounded cache of one remote dataset, below cache_dir()."""
    return BoundedCache(
        cache_dir() / "datasets" / hashlib.sha256(uri.encode()).hexdigest()[:16], budget
    )
