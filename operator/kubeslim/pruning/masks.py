"""Soft masks: filters chosen for removal are zeroed and kept at zero while the
network fine-tunes around them; at the end they are removed physically.

Zeroing every coupled slice (producer conv and BN, consumer inputs) makes the
channel identically zero, so the soft-masked and the physically pruned model
compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from kubeslim.pruning.graph import ChannelGroup, PruningGraph

Slice = tuple[torch.Tensor, int, torch.Tensor]  # (parameter or buffer, dim, indices)


class SoftMasks:
    """The masked channels of every group, re-applied after each optimizer step."""

    def __init__(self, graph: PruningGraph) -> None:
        self.graph = graph
        self.masked: dict[int, list[int]] = {}
        self._slices: list[Slice] = []

    def update(self, masked: dict[int, list[int]]) -> None:
        """Mask these root channels per group index (replacing previous masks)."""
        self.masked.update({i: sorted(idxs) for i, idxs in masked.items()})
        self._rebuild()
        self.apply()

    def is_masked(self, group: ChannelGroup) -> torch.Tensor:
        """A boolean per root channel."""
        mask = torch.zeros(group.channels, dtype=torch.bool)
        mask[self.masked.get(group.index, [])] = True
        return mask

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked slice (call after each optimizer step)."""
        for tensor, dim, idxs in self._slices:
            tensor.index_fill_(dim, idxs, 0.0)

    def _rebuild(self) -> None:
        self._slices = []
        by_index = {g.index: g for g in self.graph.groups}
        for index, idxs in self.masked.items():
            if not idxs:
                continue
            group = by_index[index].group(self.graph.graph, idxs)
            for item in group:
                side = "out" if item.dep.handler.__name__ == "prune_out_channels" else "in"
                self._slices.extend(_slices(item.dep.target.module, side, list(item.idxs)))

    def remove(self) -> None:
        """Prune the masked channels physically; the masks are spent afterwards."""
        by_index = {g.index: g for g in self.graph.groups}
        for index, idxs in self.masked.items():
            if idxs:
                by_index[index].group(self.graph.graph, idxs).prune()
        self.masked = {}
        self._slices = []


def _slices(module: nn.Module, side: str, idxs: list[int]) -> list[Slice]:
    index = torch.tensor(idxs, dtype=torch.long)
    if isinstance(module, nn.Parameter):
        # A bare per-channel parameter (ConvNeXt's layer scale): zero its slice.
        return [(module.data, 0, index)] if side == "out" else []
    params = dict(module.named_parameters(recurse=False))
    if isinstance(module, nn.Conv2d | nn.Linear):
        weight = params["weight"]
        if side == "out":
            out = [(weight.data, 0, index)]
            if "bias" in params:
                out.append((params["bias"].data, 0, index))
            return out
        # A grouped conv's input channels are coupled with its outputs (handled
        # on the "out" side); only dense layers have their own input weights.
        groups = module.groups if isinstance(module, nn.Conv2d) else 1
        return [(weight.data, 1, index)] if groups == 1 else []
    if side == "out":
        # BatchNorm, LayerNorm, GroupNorm...: a zero scale and shift give zero output.
        return [
            (p.data, 0, index) for p in params.values() if p.dim() >= 1 and p.shape[0] > max(idxs)
        ]
    return []
