"""One interface over local disks and S3, with atomic writes.

Every write is all-or-nothing: a local write goes to a temporary name in the
same directory and is renamed into place; an S3 object becomes visible only
when its (possibly multipart) upload completes. A stage writes its outputs
first and its result.json last, so result.json is the commit marker.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from kubeslim.errors import MissingArtifact, StoreError
from kubeslim.store.refs import is_absolute


class ArtifactStore(ABC):
    """Keys are '/'-separated paths below the store's root URI."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def uri(self, key: str) -> str:
        """The full URI of a key, as recorded in results and status."""
        return f"{self.root}/{key.lstrip('/')}"

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at key."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; StoreError if absent."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically."""

    @abstractmethod
    def upload(self, local: Path, key: str) -> None:
        """Copy a local file to key atomically."""

    @abstractmethod
    def download(self, key: str, local: Path) -> None:
        """Copy key to a local file (atomically on the local side)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key if present."""

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key below prefix (relative to the root), sorted."""
        raise NotImplementedError(f"{type(self).__name__} cannot list keys")

    def read_json(self, key: str) -> Any:
        """Parse a JSON object."""
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, value: Any) -> None:
        """Write a JSON object atomically."""
        self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def upload_tree(self, local_dir: Path, prefix: str) -> dict[str, str]:
        """Upload every file under local_dir; returns relative name -> URI."""
        uris = {}
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                self.upload(path, f"{prefix}/{rel}")
                uris[rel] = self.uri(f"{prefix}/{rel}")
        return uris


def key_of(store: ArtifactStore, ref: str) -> str:
    """The store key of a result's reference (relative key, or a full URI below the root)."""
    if not is_absolute(ref):
        return ref
    for root in (store.root, store.root.removeprefix("file://")):
        if ref.startswith(root + "/"):
            return ref[len(root) + 1 :]
    raise MissingArtifact(f"{ref}: outside the artifacts root {store.root}")


def open_store(uri: str) -> ArtifactStore:
    """The store for a URI: s3://bucket/prefix, file:///path or a plain path."""
    if uri.startswith("s3://"):
        from kubeslim.store.s3 import S3Store

        return S3Store(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"artifacts.uri: expected a path, file:// or s3:// URI, got {uri!r}")
    from kubeslim.store.local import LocalStore

    return LocalStore(uri)


def split_uri(uri: str) -> tuple[ArtifactStore, str]:
    """A store for the URI's parent and the key of its last part (for single objects)."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name:
        raise StoreError(f"expected a URI to an object, got {uri!r}")
    return open_store(parent or "."), name
