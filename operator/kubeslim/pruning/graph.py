"""What is coupled: torch-pruning's dependency graph, grouped by root layer,
plus per-layer MACs so a removal can be costed without pruning a copy.

A model torch-pruning cannot trace in full (ShuffleNet's channel shuffle) is
traced piece by piece instead: every sub-module that does trace contributes the
groups that are provably its own, i.e. removing one of their channels leaves the
sub-module's input and output shapes as they were. Everything else keeps its
width.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from kubeslim.errors import SpecError

PRUNABLE = (nn.Conv2d, nn.Linear)
# What a failed trace raises inside torch-pruning (its index mapping of reshapes
# divides by zero on a channel shuffle, for one).
TRACE_ERRORS = (RuntimeError, ValueError, ZeroDivisionError, IndexError, KeyError, TypeError)
# Ops whose channel mapping torch-pruning guesses rather than knows: a group that
# passes through one is not provably independent.
_GUESSED_OPS = (tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND)


@dataclass
class Trace:
    """One torch-pruning dependency graph over `prefix` (the whole model when empty)."""

    prefix: str
    graph: tp.DependencyGraph

    def history(self) -> list[list[Any]]:
        """torch-pruning's history with module names relative to the whole model."""
        return [
            [_join(self.prefix, name), bool(out), [int(getattr(i, "idx", i)) for i in idxs]]
            for name, out, idxs in self.graph.pruning_history()
        ]


@dataclass
class ChannelGroup:
    """Channels of one root layer and every layer that must lose the same ones."""

    index: int
    root: nn.Module
    root_name: str
    handler: object
    channels: int
    graph: tp.DependencyGraph
    # (module, "out" | "in", channels of the module that one root channel maps to)
    items: list[tuple[nn.Module, str, float]] = field(default_factory=list)

    def group(self, idxs: list[int]) -> tp.Group:
        """torch-pruning's group for removing these root channels."""
        return self.graph.get_pruning_group(self.root, self.handler, idxs)


class CostModel:
    """MACs left after a removal, as matrix products (cheap enough for greedy search).

    A module loses a fraction of its outputs and of its inputs; a dense layer's
    MACs scale with both, a depthwise one's with the larger (in and out go
    together).
    """

    def __init__(self, groups: list[ChannelGroup], macs: dict[nn.Module, int]) -> None:
        modules = list(macs)
        col = {m: j for j, m in enumerate(modules)}
        self.row = {g.index: i for i, g in enumerate(groups)}
        self.macs = np.array([macs[m] for m in modules], dtype=np.float64)
        self.depthwise = np.array(
            [isinstance(m, nn.Conv2d) and m.groups > 1 for m in modules], dtype=bool
        )
        self.out = np.zeros((len(groups), len(modules)))
        self.inp = np.zeros((len(groups), len(modules)))
        for i, g in enumerate(groups):
            for module, side, per_root in g.items:
                dims = _dims(module)
                if dims is None or module not in col:
                    continue
                target, dim = (self.out, dims[0]) if side == "out" else (self.inp, dims[1])
                target[i, col[module]] += per_root / dim
        self.total = float(self.macs.sum())

    def vector(self, removed: dict[int, int]) -> np.ndarray:
        v = np.zeros(len(self.row))
        for index, n in removed.items():
            if index in self.row:
                v[self.row[index]] = n
        return v

    def left(self, removed: np.ndarray) -> np.ndarray:
        """MACs left for one count vector (shape G) or a batch of them (shape B x G)."""
        fo = np.minimum(1.0, removed @ self.out)
        fi = np.minimum(1.0, removed @ self.inp)
        keep = np.where(self.depthwise, 1 - np.maximum(fo, fi), (1 - fo) * (1 - fi))
        return keep @ self.macs


@dataclass
class PruningGraph:
    """The model's dependency graph(s) and its prunable groups."""

    model: nn.Module
    traces: list[Trace]
    groups: list[ChannelGroup]
    macs: dict[nn.Module, int]
    partial: bool = False
    _cost: CostModel | None = None

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def cost(self) -> CostModel:
        if self._cost is None:
            self._cost = CostModel(self.groups, self.macs)
        return self._cost

    def estimate_macs(self, removed: dict[int, int]) -> float:
        """MACs left after removing removed[group index] channels from each group."""
        return float(self.cost.left(self.cost.vector(removed)))

    def reduction(self, removed: dict[int, int]) -> float:
        """Fraction of the MACs (and FLOPs) a removal saves."""
        return 1 - self.estimate_macs(removed) / self.total_macs

    def history(self) -> list[list[Any]]:
        """The pruning history of every trace, names relative to the model."""
        return [entry for t in self.traces for entry in t.history()]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _is_grouped(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups != module.in_channels
    )


def _dims(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return None


def _trace(module: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with torch.enable_grad():  # torch-pruning traces through autograd
        return tp.DependencyGraph().build_dependency(module, example_inputs=example, verbose=False)


def trace(model: nn.Module, example: torch.Tensor) -> tuple[list[Trace], bool]:
    """The whole model's graph, or else the graphs of the pieces that trace.

    Returns the traces and whether they are partial.
    """
    try:
        return [Trace("", _trace(model, example))], False
    except TRACE_ERRORS as err:
        first_error = err
    inputs = _module_inputs(model, example)
    traces: list[Trace] = []
    for name, child in model.named_children():
        traces.extend(_trace_pieces(child, name, inputs))
    if not traces:
        raise SpecError(
            "spec.model",
            "cannot be pruned: torch-pruning could not trace its channel dependencies "
            f"({type(first_error).__name__}: {str(first_error).splitlines()[0][:120]}) "
            "and no part of it traces on its own; "
            "set spec.pruning.enabled: false to convert and quantize it unpruned",
        ) from None
    return traces, True


def _module_inputs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The first tensor input each sub-module sees in one forward pass."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if module not in seen and len(args) == 1 and isinstance(args[0], torch.Tensor):
            seen[module] = args[0].detach().clone()

    _run_hooked(model, example, [m.register_forward_pre_hook(hook) for m in model.modules()])
    return seen


def _run_hooked(model: nn.Module, example: torch.Tensor, handles: list[Any]) -> None:
    """One eval forward pass of one image, then the hooks are removed."""
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()


def _trace_pieces(
    module: nn.Module, prefix: str, inputs: dict[nn.Module, torch.Tensor]
) -> list[Trace]:
    """Trace `module` alone if it has prunable layers; descend where it fails."""
    if not any(isinstance(m, PRUNABLE) for m in module.modules()):
        return []
    if module in inputs:
        try:
            return [Trace(prefix, _trace(module, inputs[module]))]
        except TRACE_ERRORS:
            pass
    return [
        t
        for name, child in module.named_children()
        for t in _trace_pieces(child, _join(prefix, name), inputs)
    ]


def _independent(piece: nn.Module, root_name: str, handler: object, example: torch.Tensor) -> bool:
    """Whether removing one root channel leaves the piece's outer shapes unchanged.

    Checked on a copy: the piece is traced afresh, one channel removed, and the
    copy must still take the same input and give an output of the same shape.
    """
    with torch.no_grad():
        expected = piece.eval()(example).shape
    twin = copy.deepcopy(piece).eval()
    try:
        graph = _trace(twin, example)
        root = twin.get_submodule(root_name)
        fn = getattr(graph.get_pruner_of_module(root), handler.__name__)  # type: ignore[attr-defined]
        graph.get_pruning_group(root, fn, [0]).prune(record_history=False)
        with torch.no_grad():
            return bool(twin(example).shape == expected)
    except TRACE_ERRORS:
        return False


def build_graph(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> PruningGraph:
    """Trace the model once; list every group whose root is a conv or linear layer."""
    traces, partial = trace(model, example)
    inputs = _module_inputs(model, example) if partial else {}
    names = {m: n for n, m in model.named_modules()}
    groups: list[ChannelGroup] = []
    for t in traces:
        piece = model.get_submodule(t.prefix) if t.prefix else model
        local = {m: n for n, m in piece.named_modules()}
        for group in t.graph.get_all_groups(
            ignored_layers=ignored, root_module_types=list(PRUNABLE)
        ):
            if any(_is_grouped(item.dep.target.module) for item in group):
                # Grouped (not depthwise) convolutions need channels removed evenly
                # per group, which arbitrary filter ranking cannot promise: leave
                # their channels alone (ResNeXt, RegNet keep their grouped widths).
                continue
            root_dep = group[0].dep
            if partial and (
                any(item.dep.target.type in _GUESSED_OPS for item in group)
                or not _independent(
                    piece, local[root_dep.target.module], root_dep.handler, inputs[piece]
                )
            ):
                continue
            channels = len(group[0].idxs)
            items = [
                (
                    item.dep.target.module,
                    "out" if item.dep.handler.__name__ == "prune_out_channels" else "in",
                    len(item.idxs) / channels,
                )
                for item in group
            ]
            groups.append(
                ChannelGroup(
                    index=len(groups),
                    root=root_dep.target.module,
                    root_name=names.get(root_dep.target.module, "?"),
                    handler=root_dep.handler,
                    channels=channels,
                    graph=t.graph,
                    items=items,
                )
            )
    if partial and not groups:
        raise SpecError(
            "spec.model",
            "cannot be pruned: torch-pruning could not trace its channel dependencies in "
            "full and no group of channels is provably independent of the untraced parts; "
            "set spec.pruning.enabled: false to convert and quantize it unpruned",
        )
    return PruningGraph(model, traces, groups, layer_macs(model, example), partial)


def replay(model: nn.Module, example: torch.Tensor, history: list[Any]) -> None:
    """Redo a saved pruning history on a fresh model of the same architecture."""
    traces, _ = trace(model, example)
    by_prefix = sorted(traces, key=lambda t: len(t.prefix), reverse=True)
    entries: dict[int, list[Any]] = {}
    for name, out, idxs in history:
        t = next(
            t
            for t in by_prefix
            if not t.prefix or name == t.prefix or name.startswith(t.prefix + ".")
        )
        local = name[len(t.prefix) + 1 :] if t.prefix else name
        entries.setdefault(id(t), []).append([local, out, idxs])
    for t in traces:
        if id(t) in entries:
            t.graph.load_pruning_history(entries[id(t)])


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """MACs of every conv and linear layer at the example's size (one image)."""
    macs: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = kh * kw * module.in_channels // module.groups
            macs[module] = int(out[0].numel() * per_out)
        elif isinstance(module, nn.Linear):
            macs[module] = module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE)]
    _run_hooked(model, example, handles)
    return macs


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, params) of the model as it is, FLOPs being 2 x MACs."""
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(2 * macs), int(params)
