"""How much to prune and where: schedules, per-group counts, FLOPs targets."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kubeslim.api.spec import PruningSpec, ScheduleKind
from kubeslim.errors import SpecError
from kubeslim.pruning.graph import PruningGraph

# No layer is cut below this fraction of its filters: a layer with no filters
# left disconnects the network, and one with very few wrecks accuracy.
MAX_LAYER_RATE = 0.9


def schedule(kind: ScheduleKind, target: float, steps: int) -> list[float]:
    """The cumulative fraction (of filters or FLOPs) to reach after each step."""
    if kind is ScheduleKind.linear:
        return [target * k / steps for k in range(1, steps + 1)]
    # Exponential: the kept fraction shrinks geometrically, so early steps, when
    # the network has the most slack, remove the most.
    return [1 - (1 - target) ** (k / steps) for k in range(1, steps + 1)]


def epochs_per_step(epochs: int, steps: int) -> list[int]:
    """Spread fine-tuning epochs over the steps; later steps get the remainder."""
    base, extra = divmod(epochs, steps)
    return [base + (1 if k >= steps - extra else 0) for k in range(steps)]


def keep_count(channels: int, rate: float, round_to: int) -> int:
    """Channels kept at a rate, a multiple of round_to where the layer allows it."""
    if channels <= round_to:
        return channels
    keep = max(channels * (1 - rate), channels * (1 - MAX_LAYER_RATE))
    keep = math.ceil(keep / round_to) * round_to
    return min(channels, max(round_to, keep))


def uniform_counts(graph: PruningGraph, rate: float, round_to: int) -> dict[int, int]:
    """The same rate in every group."""
    return {g.index: g.channels - keep_count(g.channels, rate, round_to) for g in graph.groups}


def global_counts(
    graph: PruningGraph, scores: dict[int, torch.Tensor], rate: float, round_to: int
) -> dict[int, int]:
    """Rank every channel of every group together and cut the lowest `rate` of them."""
    if rate <= 0:
        return {g.index: 0 for g in graph.groups}
    pooled = torch.cat([scores[g.index] for g in graph.groups])
    threshold = torch.quantile(pooled.float(), min(rate, 1.0))
    counts = {}
    for g in graph.groups:
        below = int((scores[g.index] < threshold).sum())
        keep = max(g.channels - below, keep_count(g.channels, MAX_LAYER_RATE, round_to))
        keep = min(g.channels, math.ceil(keep / round_to) * round_to)
        counts[g.index] = g.channels - keep
    return counts


def counts_for(
    graph: PruningGraph,
    spec: PruningSpec,
    scores: dict[int, torch.Tensor],
    fraction: float,
) -> dict[int, int]:
    """Per-group removal counts reaching `fraction` of the target's measure."""

    def at(rate: float) -> dict[int, int]:
        if spec.global_ranking:
            return global_counts(graph, scores, rate, spec.round_to)
        return uniform_counts(graph, rate, spec.round_to)

    if spec.target.filter_rate is not None:
        return at(fraction)
    below, reaching = _search_flops(graph, at, fraction)
    if spec.global_ranking:
        # A global threshold is already fine-grained: take the first that reaches.
        return reaching
    return _refine(graph, below, fraction, spec.round_to)


def _search_flops(
    graph: PruningGraph, counts_at: Callable[[float], dict[int, int]], reduction: float
) -> tuple[dict[int, int], dict[int, int]]:
    """Counts at the largest rate short of `reduction` and the smallest reaching it."""
    total = graph.total_macs

    def reduction_at(rate: float) -> float:
        return 1 - graph.estimate_macs(counts_at(rate)) / total

    if reduction_at(MAX_LAYER_RATE) < reduction:
        raise SpecError(
            "spec.pruning.target.flopsReduction",
            f"{reduction:.2f} is out of reach: pruning every layer to "
            f"{1 - MAX_LAYER_RATE:.0%} of its filters removes only "
            f"{reduction_at(MAX_LAYER_RATE):.2f} of the FLOPs",
        )
    lo, hi = 0.0, MAX_LAYER_RATE
    for _ in range(30):
        mid = (lo + hi) / 2
        if reduction_at(mid) >= reduction:
            hi = mid
        else:
            lo = mid
    # The last rate below the target too: _refine closes the gap from there in
    # round_to steps instead of overshooting by a whole rounding step everywhere.
    return counts_at(lo), counts_at(hi)


def _refine(
    graph: PruningGraph, counts: dict[int, int], reduction: float, round_to: int
) -> dict[int, int]:
    """Remove round_to more channels at a time until the FLOPs target is met.

    With a uniform rate, layers round together and the reduction jumps (e.g.
    56% -> 75% as every 32-filter layer goes from 24 to 16 filters). Here the
    step that lands closest above the target wins; until one lands, the group
    least cut so far gives up round_to filters, which keeps the cut even.
    """
    counts = dict(counts)
    total = graph.total_macs

    def reduction_of(c: dict[int, int]) -> float:
        return 1 - graph.estimate_macs(c) / total

    while reduction_of(counts) < reduction:
        options = []
        for g in graph.groups:
            floor = keep_count(g.channels, MAX_LAYER_RATE, round_to)
            if g.channels - counts[g.index] - round_to >= floor:
                trial = {**counts, g.index: counts[g.index] + round_to}
                options.append((reduction_of(trial), counts[g.index] / g.channels, g.index))
        if not options:
            break
        reaching = [o for o in options if o[0] >= reduction]
        best = min(reaching) if reaching else min(options, key=lambda o: o[1])
        counts[best[2]] += round_to
    return counts
