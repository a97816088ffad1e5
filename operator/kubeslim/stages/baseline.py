"""The original model as an FP32 IR, the baseline every measurement compares with:
work shared by all candidates of a search, exported once per content hash of its
inputs and found by that hash.

The hash covers what the IR depends on: the model section (architecture or entry
point, classes, input shape, stem) with the checkpoint's bytes instead of its URI,
the ONNX opset and the exporting libraries' versions. The IR is an entry of the
shared cache (kubeslim.store.shared, kind `baseline-ir`), so every candidate of a
search and every later run or resource with the same artifacts URI finds it. A
search root keeps one copy of it at `baseline/<hash[:16]>/`, which the select stage
measures: the run root stays self-contained, and deleting it breaks no one else.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeslim.errors import KubeslimError
from kubeslim.stages.pipeline import digest
from kubeslim.store import ArtifactStore, open_store
from kubeslim.store.local import LocalStore
from kubeslim.store.shared import SharedCache, cache_store

if TYPE_CHECKING:
    from kubeslim.api.spec import ModelSpec

KIND = "baseline-ir"
COPY_PREFIX = "baseline"  # the search root's copy
FORMAT = 1  # bumped by hand when the baseline's files change meaning
EXPORTERS = ("torch", "onnx", "openvino")
# A candidate's store root ends in candidates/<name> (kubeslim.planner.search.candidate_prefix).
_CANDIDATE_ROOT = re.compile(r"/candidates/t\d{4}$")


@dataclass(frozen=True)
class Baseline:
    """The baseline IR: its content hash, the original's size, and whether this call
    found it (True) or exported it (False)."""

    hash: str
    flops: int
    params: int
    reused: bool


def search_root(store: ArtifactStore) -> ArtifactStore:
    """The search's root for a candidate's store; the store itself otherwise."""
    if _CANDIDATE_ROOT.search(store.root):
        return open_store(_CANDIDATE_ROOT.sub("", store.root))
    return store


def shared_cache(spec_uri: str, store: ArtifactStore) -> ArtifactStore:
    """The cache a stage's store shares: the one of the search root it belongs to."""
    return cache_store(spec_uri, search_root(store))


def baseline_hash(model: ModelSpec, checkpoint_digest: str | None, opset: int) -> str:
    """Content hash of the baseline IR's inputs."""
    section = model.model_dump(mode="json", exclude={"checkpoint"})
    versions = {name: _version(name) for name in EXPORTERS}
    inputs = {"format": FORMAT, "model": section, "checkpoint": checkpoint_digest or "",
              "opset": opset, "versions": versions}  # fmt: skip
    return digest(inputs)


def ensure_baseline(
    cache: ArtifactStore, key_hash: str, export: Callable[[], tuple[Path, int, int]]
) -> Baseline:
    """The cached baseline for key_hash, exported and cached first if no one did.

    export() writes the IR (its .bin beside the .xml) and returns (xml, flops,
    params). Candidates running at once on a local or mounted disk wait for the
    first one's export instead of repeating it; on S3 two may export at the same
    time, and both write the same content.
    """
    with _exclusive(cache, f"{KIND}/{key_hash}"):
        found = SharedCache(cache).lookup(KIND, key_hash)
        if found is not None:
            m = found.get("metrics") or {}
            return Baseline(key_hash, int(m["flops"]), int(m["params"]), reused=True)
        xml, flops, params = export()
        key = f"{KIND}/{key_hash}/{xml.name}"
        cache.upload(xml.with_suffix(".bin"), _bin(key))
        cache.upload(xml, key)
        body: dict[str, Any] = {
            "stage": KIND,
            "fingerprint": key_hash,
            "outputs": {"baseline_ir": key},
            "metrics": {"flops": flops, "params": params},
        }
        SharedCache(cache).commit(KIND, key_hash, body)
    return Baseline(key_hash, flops, params, reused=False)


def copy_key(key_hash: str) -> str:
    """The key of the search root's copy of the baseline IR."""
    return f"{COPY_PREFIX}/{key_hash[:16]}/baseline.xml"


def place_copy(cache: ArtifactStore, key_hash: str, target: ArtifactStore) -> str:
    """Copy the cached baseline IR to copy_key() in target unless it is there; its key."""
    key = copy_key(key_hash)
    if target.exists(key) and target.exists(_bin(key)):
        return key
    with tempfile.TemporaryDirectory(prefix="kubeslim-baseline-") as tmp:
        local = fetch_cached(cache, key_hash, Path(tmp))
        target.upload(local.with_suffix(".bin"), _bin(key))  # the .bin first: .xml commits
        target.upload(local, key)
    return key


def fetch_cached(cache: ArtifactStore, key_hash: str, into: Path) -> Path:
    """A local copy of the cached baseline IR (with its .bin)."""
    found = SharedCache(cache).lookup(KIND, key_hash)
    if found is None:
        raise KubeslimError(
            f"the baseline IR {key_hash[:16]} is not in the shared cache {cache.root}: "
            "run the candidates' convert stage again (--force)"
        )
    source = str(found["outputs"]["baseline_ir"])
    local = into / "baseline.xml"
    cache.download(source, local)
    cache.download(_bin(source), local.with_suffix(".bin"))
    return local


def fetch_copy(search: ArtifactStore, cache: ArtifactStore, key_hash: str, into: Path) -> Path:
    """A local copy of the search root's baseline IR, placed there from the cache first
    if missing (a convert result adopted from another run's cache has no copy here)."""
    key = place_copy(cache, key_hash, search)
    local = into / "baseline.xml"
    search.download(key, local)
    search.download(_bin(key), local.with_suffix(".bin"))
    return local


def _bin(xml_key: str) -> str:
    return xml_key[: -len(".xml")] + ".bin"


@contextlib.contextmanager
def _exclusive(store: ArtifactStore, name: str) -> Iterator[None]:
    """An exclusive lock beside a local store's entry (a no-op for S3)."""
    if not isinstance(store, LocalStore):
        yield
        return
    lock = store.path(f"{name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
