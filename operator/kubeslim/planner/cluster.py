"""What `kubeslim run` accepts but a cluster cannot do: refused before any Job runs.

Each stage runs in its own Pod, possibly on another node, with a read-only root
filesystem; a path only means something there when a volume mounted in every
stage Pod holds it. Found up front, the problem is one condition naming the
field, not a failure after an hour of fine-tuning.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import SpecError


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _path(uri: str) -> PurePosixPath:
    return PurePosixPath(uri.removeprefix("file://"))


def mounted_paths(spec: ModelOptimizationSpec) -> list[PurePosixPath]:
    """The folders every stage Pod mounts from a volume the spec names."""
    paths = []
    if spec.artifacts.volume is not None and _path(spec.artifacts.uri).is_absolute():
        paths.append(_path(spec.artifacts.uri))
    if spec.execution.dataset_volume is not None:
        paths.append(PurePosixPath(spec.execution.dataset_volume.mount_path))
    return paths


def cluster_refusal(spec: ModelOptimizationSpec) -> SpecError | None:
    """The first field that cannot work in stage Pods, or None."""
    uri = spec.artifacts.uri
    if _is_local(uri):
        if spec.artifacts.volume is None:
            return SpecError(
                "spec.artifacts.uri",
                f"{uri} is a local path, which stage Pods do not share: use an s3:// URI, "
                "or set spec.artifacts.volume to a PersistentVolumeClaim mounted there",
            )
        if not _path(uri).is_absolute():
            return SpecError(
                "spec.artifacts.uri",
                f"{uri} is a relative path; with spec.artifacts.volume it must be absolute "
                "(the mount point in the stage Pods)",
            )
    mounts = mounted_paths(spec)
    for field, value in (
        ("spec.model.checkpoint", spec.model.checkpoint),
        ("spec.dataset.uri", spec.dataset.uri),
    ):
        if value and _is_local(value) and not _under(_path(value), mounts):
            where = ", ".join(str(m) for m in mounts) or "none"
            return SpecError(
                field,
                f"{value} is a local path that no volume of the stage Pods holds (mounted: "
                f"{where}): use an s3:// URI, or a path under spec.execution.datasetVolume "
                "or spec.artifacts.volume",
            )
    return None


def _under(path: PurePosixPath, mounts: list[PurePosixPath]) -> bool:
    return path.is_absolute() and any(path == m or m in path.parents for m in mounts)
