"""Masks: filters chosen for removal are zeroed while the network fine-tunes
around them; at the end they are removed physically.

Hard masks zero every coupled slice (producer conv and BN, consumer inputs)
and re-zero them after every optimizer step, so the channel is identically
zero and the masked and the physically pruned model compute the same function.

Soft masks (Soft Filter Pruning, He et al., IJCAI 2018) zero only the chosen
filters' weights, once per selection: BN and the next layers stay as they are,
so gradients still reach the zeroed filters, they keep training, and the next
selection may bring them back. Either way the optimizer's momentum for a zeroed
slice is cleared, so stale momentum does not push it straight back.
"""

from __future__ import annotations

import torch
from torch import nn

from kubeslim.pruning.graph import ChannelGroup, PruningGraph

Slice = tuple[torch.Tensor, int, torch.Tensor]  # (parameter or buffer, dim, indices)


class SoftMasks:
    """The masked channels of every group; hard ones are re-applied after each step."""

    def __init__(self, graph: PruningGraph) -> None:
        self.graph = graph
        self.masked: dict[int, list[int]] = {}
        self.hard = True
        self._slices: list[Slice] = []

    def update(
        self,
        masked: dict[int, list[int]],
        hard: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Mask these root channels per group index (replacing previous masks).

        hard=False zeroes only the filters that produce the channels, once.
        """
        self.masked.update({i: sorted(idxs) for i, idxs in masked.items()})
        self.hard = hard
        self._rebuild(filters_only=not hard)
        self._zero()
        if optimizer is not None:
            self._clear_momentum(optimizer)

    def restore(self, masked: dict[int, list[int]], hard: bool) -> None:
        """Take masks back from a checkpoint whose weights are already masked."""
        self.masked = {int(i): sorted(idxs) for i, idxs in masked.items()}
        self.hard = hard
        self._rebuild(filters_only=not hard)

    def is_masked(self, group: ChannelGroup) -> torch.Tensor:
        """A boolean per root channel."""
        mask = torch.zeros(group.channels, dtype=torch.bool)
        mask[self.masked.get(group.index, [])] = True
        return mask

    def apply(self) -> None:
        """Re-zero every hard-masked slice (call after each optimizer step)."""
        if self.hard:
            self._zero()

    @torch.no_grad()
    def _zero(self) -> None:
        for tensor, dim, idxs in self._slices:
            tensor.data.index_fill_(dim, idxs, 0.0)

    @torch.no_grad()
    def _clear_momentum(self, optimizer: torch.optim.Optimizer) -> None:
        for tensor, dim, idxs in self._slices:
            state = optimizer.state.get(tensor, {})
            buf = state.get("momentum_buffer") if isinstance(state, dict) else None
            if isinstance(buf, torch.Tensor) and buf.shape == tensor.shape:
                buf.index_fill_(dim, idxs, 0.0)

    def _rebuild(self, filters_only: bool) -> None:
        self._slices = []
        by_index = {g.index: g for g in self.graph.groups}
        for index, idxs in self.masked.items():
            if not idxs:
                continue
            for item in by_index[index].group(idxs):
                side = "out" if item.dep.handler.__name__ == "prune_out_channels" else "in"
                module = item.dep.target.module
                if filters_only and (
                    side != "out" or not isinstance(module, nn.Conv2d | nn.Linear)
                ):
                    continue
                self._slices.extend(
                    _slices(module, side, [int(getattr(i, "idx", i)) for i in item.idxs])
                )

    def remove(self) -> None:
        """Prune the masked channels physically; the masks are spent afterwards."""
        by_index = {g.index: g for g in self.graph.groups}
        for index, idxs in self.masked.items():
            if idxs:
                by_index[index].group(idxs).prune()
        self.masked = {}
        self._slices = []


def _slices(module: nn.Module, side: str, idxs: list[int]) -> list[Slice]:
    index = torch.tensor(idxs, dtype=torch.long)
    if isinstance(module, nn.Parameter):
        # A bare per-channel parameter (ConvNeXt's layer scale): zero its slice.
        return [(module, 0, index)] if side == "out" else []
    params = dict(module.named_parameters(recurse=False))
    if isinstance(module, nn.Conv2d | nn.Linear):
        weight = params["weight"]
        if side == "out":
            out: list[Slice] = [(weight, 0, index)]
            if "bias" in params:
                out.append((params["bias"], 0, index))
            return out
        # A grouped conv's input channels are coupled with its outputs (handled
        # on the "out" side); only dense layers have their own input weights.
        groups = module.groups if isinstance(module, nn.Conv2d) else 1
        return [(weight, 1, index)] if groups == 1 else []
    if side == "out":
        # BatchNorm, LayerNorm, GroupNorm...: a zero scale and shift give zero output.
        return [(p, 0, index) for p in params.values() if p.dim() >= 1 and p.shape[0] > max(idxs)]
    return []
