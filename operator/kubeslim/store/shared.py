"""Stage outputs shared by content hash, and how many versions of them stay.

A cache entry lives at `<cache>/<kind>/<hash>/`: its files, then `result.json`
written last (its presence commits the entry). The hash is a digest of the
entry's inputs, never a resource's name, so every run with the same inputs
finds the same entry. A run copies an entry into its own artifacts root rather
than pointing at it: a run root stays self-contained, and deleting one never
breaks another (see /work/coord/contract-artifacts.md for the layout).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from kubeslim.errors import MissingArtifact
from kubeslim.store.base import ArtifactStore, open_store

CACHE_DIR = "cache"
RESULT = "result.json"
# The order in which a prefix's versions were written (newest last): S3 keeps no
# usable modification order for us, so retention keeps its own.
HISTORY = "history.json"
RUN_VERSION = re.compile(r"^[0-9a-f]{16}$")  # <stage>/<fingerprint[:16]>/ in a run root
CACHE_VERSION = re.compile(r"^[0-9a-f]{64}$")  # <kind>/<sha256>/ in the cache


def cache_store(spec_uri: str, run: ArtifactStore) -> ArtifactStore:
    """The shared cache for a run: `<spec uri>/cache` when the run's root lies at or
    below the spec's artifacts URI (a cluster writes under <uri>/<ns>/<name>, so
    resources with the same URI share it), else `<run root>/cache`."""
    # Compared as text: opening an s3:// root would ask for credentials that a local
    # run with --artifacts elsewhere does not need.
    remote = "://" in spec_uri and not spec_uri.startswith("file://")
    shared = spec_uri.rstrip("/") if remote else open_store(spec_uri).root
    below = run.root == shared or run.root.startswith(shared + "/")
    return open_store(f"{shared if below else run.root}/{CACHE_DIR}")


class SharedCache:
    """Content-addressed entries in a store (the cache root)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def lookup(self, kind: str, digest: str) -> dict[str, Any] | None:
        """The entry's result (outputs relative to the cache root), if it is whole."""
        key = f"{kind}/{digest}/{RESULT}"
        try:
            body = self.store.read_json(key)
        except (MissingArtifact, json.JSONDecodeError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
            return None
        if not all(self.store.exists(k) for k in body["outputs"].values()):
            return None
        return body

    def commit(self, kind: str, digest: str, body: dict[str, Any]) -> None:
        """Write the entry's result.json (after its files): the entry now exists."""
        self.store.write_json(f"{kind}/{digest}/{RESULT}", body)
        retain_order(self.store, kind, digest)

    def copy_into(self, kind: str, digest: str, target: ArtifactStore, prefix: str) -> None:
        """Copy every file of an entry (result.json aside) to `<prefix>/` in target."""
        source = f"{kind}/{digest}"
        with tempfile.TemporaryDirectory(prefix="kubeslim-share-") as tmp:
            for key in self.store.list_keys(source):
                name = key[len(source) + 1 :]
                if name == RESULT:
                    continue
                local = Path(tmp) / name
                self.store.download(key, local)
                target.upload(local, f"{prefix}/{name}")

    def prune(self, kind: str, keep: int) -> list[str]:
        """Keep the newest `keep` entries of a kind (0: all); returns the deleted ones."""
        return prune_versions(self.store, kind, keep, CACHE_VERSION)


def retain_order(store: ArtifactStore, prefix: str, version: str) -> None:
    """Record `version` as the newest under prefix."""
    order = [v for v in _order(store, prefix) if v != version]
    store.write_json(f"{prefix}/{HISTORY}", [*order, version])


def prune_versions(
    store: ArtifactStore, prefix: str, keep: int, pattern: re.Pattern[str] = RUN_VERSION
) -> list[str]:
    """Delete the folders `<prefix>/<version>/` beyond the newest `keep` (0: none).

    Versions are ordered by the history retain_order wrote; folders it never
    recorded (written before retention existed, or lost in a race) count as the
    oldest. Other folders and files under prefix (result.json, select/measure/)
    are never touched.
    """
    if keep <= 0:
        return []
    keys = store.list_keys(prefix)
    found: dict[str, list[str]] = {}
    for key in keys:
        parts = key[len(prefix) + 1 :].split("/")
        if len(parts) > 1 and pattern.match(parts[0]):
            found.setdefault(parts[0], []).append(key)
    order = [v for v in _order(store, prefix) if v in found]
    newest_last = sorted(v for v in found if v not in order) + order
    doomed = newest_last[: max(0, len(newest_last) - keep)]
    for version in doomed:
        for key in found[version]:
            store.delete(key)
    if doomed:
        store.write_json(f"{prefix}/{HISTORY}", [v for v in order if v not in doomed])
    return doomed


def delete_tree(store: ArtifactStore, prefix: str = "") -> int:
    """Delete every key under prefix (the whole root when empty); returns how many."""
    keys = store.list_keys(prefix)
    for key in keys:
        store.delete(key)
    return len(keys)


def _order(store: ArtifactStore, prefix: str) -> list[str]:
    try:
        value = store.read_json(f"{prefix}/{HISTORY}")
    except (MissingArtifact, json.JSONDecodeError):
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
