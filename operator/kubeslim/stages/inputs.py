"""Every path and URI in the spec, checked before a stage does any work.

A missing checkpoint or dataset is bad input: one line naming the field and
exit code 2, the same in `kubeslim run` and in a Job (which then fails at once
instead of retrying). A store that does not answer is not the spec's fault and
stays a transient error (exit 75, retried).
"""

from __future__ import annotations

from pathlib import Path

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import MissingArtifact, SpecError, StoreError, StoreUnavailable
from kubeslim.store import open_store
from kubeslim.store.base import split_uri


def check_inputs(spec: ModelOptimizationSpec) -> None:
    """Raise SpecError naming the first field whose path or URI points at nothing."""
    if spec.model.checkpoint:
        check_object("spec.model.checkpoint", spec.model.checkpoint)
    if spec.dataset.uri:
        check_dataset("spec.dataset.uri", spec.dataset.uri)
    if spec.dataset.test_uri:
        check_dataset("spec.dataset.testUri", spec.dataset.test_uri)


def is_local(uri: str) -> bool:
    """A plain path or a file:// URI."""
    return "://" not in uri or uri.startswith("file://")


def check_object(field: str, uri: str) -> None:
    """One file (local path, file:// or s3://) must exist."""
    if is_local(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if path.is_dir():
            raise SpecError(field, f"{uri} is a directory, expected a file")
        if not path.is_file():
            raise SpecError(field, f"no such file: {uri}")
        return
    try:
        store, key = split_uri(uri)
        found = store.exists(key)
    except StoreUnavailable:
        raise
    except StoreError as err:
        raise SpecError(field, str(err)) from None
    if not found:
        raise SpecError(field, f"no such object: {uri}")


def check_dataset(field: str, uri: str) -> None:
    """A folder (an ImageFolder tree or tar shards), or the tar shards a pattern names:
    the first and last must exist (reading the index names any other that is missing)."""
    from kubeslim.data.shards import is_sharded, shard_names

    if not is_sharded(uri):
        check_tree(field, uri)
        return
    root, names = shard_names(uri, field)
    for name in sorted({names[0], names[-1]}) if names else []:
        check_object(field, f"{root}/{name}")


def check_tree(field: str, uri: str) -> None:
    """A folder (local or an S3 prefix) must exist and hold something."""
    if is_local(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise SpecError(field, f"no such directory: {uri}")
        if not any(path.iterdir()):
            raise SpecError(field, f"the directory is empty: {uri}")
        return
    try:
        keys = open_store(uri).list_keys()
    except (StoreUnavailable, MissingArtifact):
        raise
    except StoreError as err:
        raise SpecError(field, str(err)) from None
    if not keys:
        raise SpecError(field, f"no objects under {uri}")
