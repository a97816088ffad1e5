"""Local paths and file:// URIs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from kubeslim.errors import MissingArtifact, StoreError
from kubeslim.store.base import ArtifactStore


class LocalStore(ArtifactStore):
    """A directory on a local or mounted file system."""

    def __init__(self, root: str) -> None:
        path = root.removeprefix("file://")
        self.base = Path(path).expanduser().resolve()
        super().__init__(f"file://{self.base}")

    def path(self, key: str) -> Path:
        """The local path of a key (refusing keys that climb out of the root)."""
        p = (self.base / key).resolve()
        if p != self.base and self.base not in p.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.base}")
        return p

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise MissingArtifact(f"{self.uri(key)}: no such artifact") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        with _atomic_target(target) as tmp:
            tmp.write_bytes(data)

    def upload(self, local: Path, key: str) -> None:
        target = self.path(key)
        if target == Path(local).resolve():
            return
        with _atomic_target(target) as tmp:
            shutil.copyfile(local, tmp)

    def download(self, key: str, local: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise MissingArtifact(f"{self.uri(key)}: no such artifact")
        with _atomic_target(Path(local)) as tmp:
            shutil.copyfile(source, tmp)

    def list_keys(self, prefix: str = "") -> list[str]:
        start = self.path(prefix) if prefix else self.base
        if not start.is_dir():
            return []
        return sorted(
            p.relative_to(self.base).as_posix()
            for p in start.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Folders emptied by deletion go too (as on S3, where a prefix with no keys is
        # no folder): retention would otherwise leave a trail of empty ones.
        for parent in path.parents:
            if parent == self.base or self.base not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or gone): its ancestors are not empty either
                break


class _atomic_target:
    """A temporary sibling that replaces the target on success, vanishes on error."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)
