"""What a stage function sees: the spec, the store, upstream results, data, progress."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import KubeslimError
from kubeslim.progress import Reporter
from kubeslim.stages.result import StageResult
from kubeslim.store.base import ArtifactStore, key_of

if TYPE_CHECKING:
    import torch

    from kubeslim.data.arrays import ArrayPreprocess, ImageSource
    from kubeslim.data.datasets import Preprocess, Splits


@dataclass
class StageOutput:
    """A stage function's return: local files to publish and the figures it measured."""

    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Files that travel with an output (an IR's .bin beside its .xml).
    companions: list[Path] = field(default_factory=list)


@dataclass
class StageContext:
    """Everything one stage run needs; stages never touch Kubernetes."""

    spec: ModelOptimizationSpec
    store: ArtifactStore
    reporter: Reporter
    scratch: Path
    # --force: run afresh, ignoring what an interrupted run left (the prune checkpoint).
    force: bool = False

    def upstream(self, stage: str) -> StageResult:
        """The committed result of an earlier stage."""
        key = f"{stage}/result.json"
        if not self.store.exists(key):
            raise KubeslimError(
                f"stage {stage!r} has no result at {self.store.uri(key)}: run it first"
            )
        return StageResult.model_validate(self.store.read_json(key))

    def fetch_output(self, stage: str, name: str) -> Path:
        """A local copy of an upstream output (with an IR's .bin)."""
        key = output_key(self.store, self.upstream(stage).outputs[name])
        local = self.scratch / "inputs" / key
        self.store.download(key, local)
        if key.endswith(".xml"):
            bin_key = key[: -len(".xml")] + ".bin"
            self.store.download(bin_key, local.with_suffix(".bin"))
        return local

    @cached_property
    def splits(self) -> Splits:
        from kubeslim.data.datasets import load_splits

        _, h, w = self.spec.model.input_shape
        return load_splits(self.spec.dataset, size=(h, w))

    @cached_property
    def preprocess(self) -> Preprocess:
        from kubeslim.data.datasets import Preprocess

        return Preprocess(self.spec.dataset, self.spec.model)

    # The same splits and preprocessing as numpy, for the stages that run without torch
    # (quantize, benchmark: the runtime image has no torch).
    @cached_property
    def arrays(self) -> Splits[ImageSource]:
        from kubeslim.data.arrays import load_array_splits

        _, h, w = self.spec.model.input_shape
        return load_array_splits(self.spec.dataset, size=(h, w))

    @cached_property
    def array_preprocess(self) -> ArrayPreprocess:
        from kubeslim.data.arrays import ArrayPreprocess

        return ArrayPreprocess(self.spec.dataset, self.spec.model)

    def example_input(self) -> torch.Tensor:
        """One preprocessed training image: traces see real shapes and values."""
        image, _ = self.splits.train[0]
        return self.preprocess(image.unsqueeze(0))


def output_key(store: ArtifactStore, ref: str) -> str:
    """The key of an output a result names (relative; full URIs from older results)."""
    return key_of(store, ref)


def file_digest(path: Path) -> str:
    """sha256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
