"""What is coupled: torch-pruning's dependency graph, grouped by root layer,
plus per-layer MACs so a removal can be costed without pruning a copy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from kubeslim.errors import SpecError

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class ChannelGroup:
    """Channels of one root layer and every layer that must lose the same ones."""

    index: int
    root: nn.Module
    root_name: str
    handler: object
    channels: int
    # (module, "out" | "in", channels of the module that one root channel maps to)
    items: list[tuple[nn.Module, str, float]] = field(default_factory=list)

    def group(self, graph: tp.DependencyGraph, idxs: list[int]) -> tp.Group:
        """torch-pruning's group for removing these root channels."""
        return graph.get_pruning_group(self.root, self.handler, idxs)


@dataclass
class PruningGraph:
    """The model's dependency graph and its prunable groups."""

    model: nn.Module
    graph: tp.DependencyGraph
    groups: list[ChannelGroup]
    macs: dict[nn.Module, int]

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def estimate_macs(self, removed: dict[int, int]) -> float:
        """MACs left after removing removed[group index] channels from each group."""
        frac_out: dict[nn.Module, float] = {}
        frac_in: dict[nn.Module, float] = {}
        for g in self.groups:
            n = removed.get(g.index, 0)
            if n == 0:
                continue
            for module, side, per_root in g.items:
                dims = _dims(module)
                if dims is None:
                    continue
                target = frac_out if side == "out" else frac_in
                dim = dims[0] if side == "out" else dims[1]
                target[module] = min(1.0, target.get(module, 0.0) + n * per_root / dim)
        total = 0.0
        for module, macs in self.macs.items():
            fo, fi = frac_out.get(module, 0.0), frac_in.get(module, 0.0)
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                total += macs * (1 - max(fo, fi))  # depthwise: in and out go together
            else:
                total += macs * (1 - fo) * (1 - fi)
        return total


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


def build_graph(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> PruningGraph:
    """Trace the model once; list every group whose root is a conv or linear layer."""
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except (RuntimeError, ValueError, ZeroDivisionError, IndexError, KeyError) as err:
        raise SpecError(
            "spec.model",
            "cannot be pruned: torch-pruning could not trace its channel dependencies "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "set spec.pruning.enabled: false to convert and quantize it unpruned",
        ) from None
    names = {m: n for n, m in model.named_modules()}
    groups = []
    all_groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE))
    for i, group in enumerate(all_groups):
        if any(_is_grouped(item.dep.target.module) for item in group):
            # Grouped (not depthwise) convolutions need channels removed evenly
            # per group, which arbitrary filter ranking cannot promise: leave
            # their channels alone (ResNeXt, RegNet keep their grouped widths).
            continue
        root_dep = group[0].dep
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
                index=i,
                root=root_dep.target.module,
                root_name=names.get(root_dep.target.module, "?"),
                handler=root_dep.handler,
                channels=channels,
                items=items,
            )
        )
    return PruningGraph(model, graph, groups, layer_macs(model, example))


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
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return macs


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, params) of the model as it is, FLOPs being 2 x MACs."""
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(2 * macs), int(params)
