"""Filter importance criteria: group in, one score per channel out, no mutation.

Every criterion scores the filters of each *producing* layer of the group (a
conv or linear layer whose outputs are the group's channels: the root, the
other side of a residual add, a depthwise conv that follows), divides by that
layer's mean over its live filters, and sums over the producing layers, so
layers of different size and scale count alike and scores of different groups
can be ranked together (globalRanking). A filter whose weights are all zero is
masked: it is left out of the other filters' scores and scores 0 itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp

from kubeslim.api.spec import Criterion
from kubeslim.pruning.graph import PRUNABLE

Importance = Callable[[tp.Group], torch.Tensor | None]
LayerScore = Callable[[torch.Tensor], torch.Tensor]


def geometric_median(filters: torch.Tensor) -> torch.Tensor:
    """FPGM (He et al., CVPR 2019): a filter's summed Euclidean distance to the
    layer's other filters. The filters nearest the geometric median are the ones
    the rest can stand in for, so they score lowest. Signed weights: a filter and
    its negative are far apart."""
    return torch.cdist(filters, filters).sum(dim=1)


def l1_norm(filters: torch.Tensor) -> torch.Tensor:
    """The classic per-filter L1 norm (Li et al., ICLR 2017)."""
    return filters.abs().sum(dim=1)


def l2_norm(filters: torch.Tensor) -> torch.Tensor:
    """The per-filter L2 norm."""
    return filters.norm(dim=1)


class FilterImportance:
    """One criterion over the producing layers of a group."""

    def __init__(self, layer_score: LayerScore) -> None:
        self.layer_score = layer_score

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        scores = torch.zeros(len(group[0].idxs), dtype=torch.float64)
        found = False
        for item in group:
            module = item.dep.target.module
            if item.dep.handler.__name__ != "prune_out_channels" or not isinstance(
                module, PRUNABLE
            ):
                continue
            found = True
            idxs = [int(getattr(i, "idx", i)) for i in item.idxs]
            roots = torch.tensor([int(getattr(i, "root_idx", i)) for i in item.idxs])
            scores.index_add_(0, roots, self.layer(module.weight.detach()[idxs]))
        return scores.float() if found else None

    def layer(self, weight: torch.Tensor) -> torch.Tensor:
        """Scores of one layer's filters, mean 1 over the live ones, 0 for masked ones."""
        filters = weight.flatten(1).double()
        live = filters.abs().sum(dim=1) > 0
        out = torch.zeros(len(filters), dtype=torch.float64)
        if live.any():
            raw = self.layer_score(filters[live])
            mean = raw.mean()
            out[live] = raw / mean if mean > 0 else raw
        return out


def importance_for(criterion: Criterion) -> Importance:
    """kubeslim's implementation of the criterion (see the module docstring);
    group_geometric_median is torch-pruning's own FPGMImportance."""
    if criterion is Criterion.group_geometric_median:
        return tp.importance.FPGMImportance(p=2)
    score = {
        Criterion.geometric_median: geometric_median,
        Criterion.l1: l1_norm,
        Criterion.l2: l2_norm,
    }[criterion]
    return FilterImportance(score)
