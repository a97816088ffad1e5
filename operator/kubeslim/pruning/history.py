"""Saving a pruned model as weights plus its pruning history, loadable with
weights_only=True: the architecture is rebuilt and the history replayed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubeslim.api.spec import ModelSpec
from kubeslim.errors import SpecError
from kubeslim.models.zoo import build_model
from kubeslim.pruning.graph import replay


def save_pruned(model: nn.Module, history: list[Any], path: Path) -> None:
    """Plain tensors and lists only: no pickled classes."""
    torch.save({"state_dict": model.state_dict(), "pruning_history": history}, path)


def load_pruned(spec: ModelSpec, path: Path) -> nn.Module:
    """The spec's architecture with the saved pruning replayed and weights loaded."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "pruning_history" not in saved:
        raise SpecError("prune output", f"{path} is not a kubeslim pruned model")
    model = build_model(spec).eval()
    replay(model, torch.zeros(1, *spec.input_shape), saved["pruning_history"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()
