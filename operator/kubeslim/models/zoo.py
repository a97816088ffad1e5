"""Building the spec's model and loading its checkpoint safely."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubeslim.api.spec import ModelSpec, Stem
from kubeslim.errors import SpecError


def build_model(spec: ModelSpec) -> nn.Module:
    """The architecture with random weights, adapted to the input shape and stem."""
    if spec.entry_point is not None:
        model = _from_entry_point(spec.entry_point, spec.num_classes)
    else:
        model = _torchvision(str(spec.architecture), spec.num_classes)
    if spec.stem is Stem.small:
        _small_stem(model)
    _adapt_input_channels(model, spec.input_shape[0])
    return model


def _torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name == "googlenet":
        # The auxiliary heads only exist for training from scratch; they would
        # be pruned and exported for nothing.
        kwargs.update(aux_logits=False, init_weights=True)
    try:
        return torchvision.models.get_model(name, **kwargs)
    except ValueError as err:
        raise SpecError("spec.model.architecture", str(err)) from None


def _from_entry_point(entry_point: str, num_classes: int) -> nn.Module:
    module_name, _, func_name = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError("spec.model.entryPoint", f"cannot import {module_name!r}: {err}") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise SpecError("spec.model.entryPoint", f"{module_name} has no callable {func_name!r}")
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise SpecError("spec.model.entryPoint", f"expected {entry_point} to return an nn.Module")
    return model


def _small_stem(model: nn.Module) -> None:
    """CIFAR-style stem: keep resolution in the first layers for small images."""
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and hasattr(model, "maxpool"):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return
    first = _first_conv(model)
    if first is not None:
        first.stride = (1, 1)
        return
    raise SpecError("spec.model.stem", "'small' is supported for resnet-like and mobilenet models")


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _adapt_input_channels(model: nn.Module, channels: int) -> None:
    first = _first_conv(model)
    if first is None or first.in_channels == channels:
        return
    if first.groups != 1:
        raise SpecError("spec.model.inputShape", "the first convolution is grouped")
    new = nn.Conv2d(
        channels,
        first.out_channels,
        first.kernel_size,  # type: ignore[arg-type]
        first.stride,  # type: ignore[arg-type]
        first.padding,  # type: ignore[arg-type]
        first.dilation,  # type: ignore[arg-type]
        bias=first.bias is not None,
    )
    _replace(model, first, new)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for _, module in model.named_modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise AssertionError("module to replace not found")


def read_checkpoint(path: Path, field: str = "spec.model.checkpoint") -> dict[str, Any]:
    """A state_dict from a file, refusing pickles that would run code."""
    if not path.is_file():
        raise SpecError(field, f"no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise SpecError(
                field,
                "refused: the file is a pickle that would run code when loaded; "
                "save a state_dict instead (torch.save(model.state_dict(), path))",
            ) from None
        raise SpecError(field, f"not a torch checkpoint (corrupt?): {_first_line(err)}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise SpecError(field, f"not a torch checkpoint (corrupt?): {_first_line(err)}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpecError(field, "expected a state_dict (a mapping of names to tensors)")
    return obj


def load_weights(model: nn.Module, state: dict[str, Any], arch: str) -> None:
    """load_state_dict with a one-line explanation of a mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (first {k}: checkpoint "
                f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]})")
        raise SpecError("spec.model.checkpoint", f"does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(spec: ModelSpec) -> nn.Module:
    """The spec's model with its checkpoint loaded (random weights without one)."""
    model = build_model(spec)
    if spec.checkpoint:
        from kubeslim.store.cache import fetch

        state = read_checkpoint(fetch(spec.checkpoint))
        load_weights(model, state, str(spec.architecture or spec.entry_point))
    return model.eval()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
