"""Local copies of remote inputs (checkpoints, dataset trees) for the stages."""

from __future__ import annotations

import hashlib
import os
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
