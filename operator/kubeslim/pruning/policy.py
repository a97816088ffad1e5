"""How much to prune and where: schedules in FLOPs, per-group counts, rounding.

Every step of a schedule is a FLOPs target. A uniform policy takes the largest
uniform filter rate whose widths (rounded to the nearest multiple of roundTo)
stay short of it, then closes the gap; global ranking starts from nothing. Both
then add roundTo-blocks of filters greedily, each time the block that loses the
least importance per FLOP it saves, until the target is met. A layer may not be
cut more than a bound past the uniform rate (one block for the uniform policy,
MAX_STRAY for global ranking), so no cheap layer collapses in one step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kubeslim.api.spec import PruningSpec, ScheduleKind
from kubeslim.errors import SpecError
from kubeslim.pruning.graph import ChannelGroup, PruningGraph

# No layer is cut below this fraction of its filters: a layer with no filters
# left disconnects the network, and one with very few wrecks accuracy.
MAX_LAYER_RATE = 0.9
# Global ranking may cut a layer at most this much (as a fraction of its
# filters) beyond the uniform rate that would reach the same FLOPs target.
MAX_STRAY = 0.25
# A final block that lands within this of the target is chosen by importance
# per FLOP; otherwise the block that lands closest above the target wins.
LANDING = 0.01


def schedule(kind: ScheduleKind, target: float, steps: int) -> list[float]:
    """The cumulative fraction (of FLOPs) to reach after each step."""
    if kind is ScheduleKind.linear:
        return [target * k / steps for k in range(1, steps + 1)]
    # Exponential: the kept fraction shrinks geometrically, so early steps, when
    # the network has the most slack, remove the most.
    return [1 - (1 - target) ** (k / steps) for k in range(1, steps + 1)]


def epochs_per_step(epochs: int, steps: int) -> list[int]:
    """Spread fine-tuning epochs over the steps; later steps get the remainder."""
    base, extra = divmod(epochs, steps)
    return [base + (1 if k >= steps - extra else 0) for k in range(steps)]


def min_keep(channels: int, round_to: int) -> int:
    """The fewest channels a layer keeps (MAX_LAYER_RATE, rounded up)."""
    if channels <= round_to:
        return channels
    return min(
        channels, max(round_to, math.ceil(channels * (1 - MAX_LAYER_RATE) / round_to) * round_to)
    )


def keep_count(channels: int, rate: float, round_to: int) -> int:
    """Channels kept at a rate: the nearest multiple of round_to, within bounds."""
    if channels <= round_to:
        return channels
    keep = math.floor(channels * (1 - rate) / round_to + 0.5) * round_to
    return min(channels, max(min_keep(channels, round_to), keep))


def uniform_counts(graph: PruningGraph, rate: float, round_to: int) -> dict[int, int]:
    """The same rate in every group."""
    return {g.index: g.channels - keep_count(g.channels, rate, round_to) for g in graph.groups}


def rate_flops(graph: PruningGraph, rate: float, round_to: int) -> float:
    """The FLOPs reduction of a uniform filter rate at these roundings."""
    return graph.reduction(uniform_counts(graph, rate, round_to))


def counts_for(
    graph: PruningGraph,
    spec: PruningSpec,
    scores: dict[int, torch.Tensor],
    flops_target: float,
    floor: dict[int, int] | None = None,
    last: bool = False,
) -> dict[int, int]:
    """Per-group removal counts reaching a FLOPs reduction.

    scores: one per channel, comparable across groups (masked channels 0); empty
    groups score alike. floor: counts already masked that must stay. exact_rate:
    last: the last step,
    where a uniform filterRate target takes its widths exactly (the steps before
    never cut a layer below them).
    """
    floor = floor or {}
    rt = spec.round_to
    rate = spec.target.filter_rate
    widths = None
    if rate is not None and not spec.global_ranking:
        widths = uniform_counts(graph, rate, rt)
        if last:
            return _at_least(widths, floor)
    if flops_target <= 0:
        return _at_least({g.index: 0 for g in graph.groups}, floor)
    reachable = rate_flops(graph, MAX_LAYER_RATE, rt)
    if reachable < flops_target:
        raise SpecError(
            "spec.pruning.target",
            f"a FLOPs reduction of {flops_target:.2f} is out of reach: pruning every layer "
            f"to {1 - MAX_LAYER_RATE:.0%} of its filters removes only {reachable:.2f}",
        )
    if spec.global_ranking:
        rate = _continuous_rate(graph, flops_target)
        caps = {
            g.index: g.channels - keep_count(g.channels, min(MAX_LAYER_RATE, rate + MAX_STRAY), rt)
            for g in graph.groups
        }
        start = _at_least({g.index: 0 for g in graph.groups}, floor)
        return _greedy(graph, scores, start, _at_least(caps, start), flops_target, rt)
    # Uniform: from each of the few uniform levels just short of the target, one
    # block more per layer at most; the result landing closest (within LANDING)
    # with the least importance lost wins. Coarse roundings (16 filters of 32)
    # need the choice of level to land near the target.
    results = []
    for level in _uniform_levels_below(graph, flops_target, rt):
        start = _at_least(level, floor)
        caps = {g.index: _next(g, start[g.index], rt) for g in graph.groups}
        if widths is not None:
            caps = {i: min(c, widths[i]) for i, c in caps.items()}
        caps = _at_least(caps, start)
        counts = _greedy(graph, scores, start, caps, flops_target, rt)
        over = graph.reduction(counts) - flops_target
        results.append((over if over >= 0 else float("inf"), _lost(graph, scores, counts), counts))
    closest = min(r[0] for r in results)
    near = [r for r in results if r[0] <= closest + LANDING]
    return min(near, key=lambda r: r[1])[2]


def _uniform_levels_below(
    graph: PruningGraph, target: float, round_to: int, levels: int = 3
) -> list[dict[int, int]]:
    """The distinct rounded uniform widths with the largest cuts short of the target."""
    found: list[dict[int, int]] = []
    for rate in np.linspace(0.0, MAX_LAYER_RATE, 181):
        counts = uniform_counts(graph, float(rate), round_to)
        if graph.reduction(counts) >= target:
            break
        if not found or counts != found[-1]:
            found.append(counts)
    return found[-levels:] or [{g.index: 0 for g in graph.groups}]


def _lost(graph: PruningGraph, scores: dict[int, torch.Tensor], counts: dict[int, int]) -> float:
    """Importance removed: the lowest scores of each group, as many as it loses."""
    total = 0.0
    for g in graph.groups:
        if g.index in scores and counts.get(g.index):
            total += float(torch.sort(scores[g.index].double()).values[: counts[g.index]].sum())
    return total


def _at_least(counts: dict[int, int], floor: dict[int, int]) -> dict[int, int]:
    return {i: max(n, floor.get(i, 0)) for i, n in counts.items()}


def _continuous_rate(graph: PruningGraph, target: float) -> float:
    """The uniform rate that reaches the target with no rounding at all."""
    cost = graph.cost
    channels = np.array([g.channels for g in graph.groups], dtype=np.float64)
    lo, hi = 0.0, MAX_LAYER_RATE
    for _ in range(30):
        mid = (lo + hi) / 2
        if 1 - cost.left(channels * mid) / cost.total >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _next(group: ChannelGroup, removed: int, round_to: int) -> int:
    """The removal count one block further: the next lower multiple of round_to kept."""
    kept = group.channels - removed
    lower = (kept - 1) // round_to * round_to
    if lower < min_keep(group.channels, round_to):
        return removed
    return group.channels - lower


def _greedy(
    graph: PruningGraph,
    scores: dict[int, torch.Tensor],
    counts: dict[int, int],
    caps: dict[int, int],
    target: float,
    round_to: int,
) -> dict[int, int]:
    """Add the block losing the least importance per FLOP saved until the target is met.

    When every layer is at its cap short of the target, every cap grows by a
    block (the bound relaxes evenly) and the search goes on.
    """
    cost = graph.cost
    counts, caps = dict(counts), dict(caps)
    ranked = {
        g.index: np.sort(scores[g.index].double().numpy())
        if g.index in scores
        else np.ones(g.channels)
        for g in graph.groups
    }
    while True:
        v = cost.vector(counts)
        left = float(cost.left(v))
        if 1 - left / cost.total >= target:
            return counts
        options = []
        for g in graph.groups:
            n = _next(g, counts[g.index], round_to)
            if n > counts[g.index] and n <= caps[g.index]:
                options.append((g, n))
        if not options:
            grown = {g.index: _next(g, caps[g.index], round_to) for g in graph.groups}
            if grown == caps:
                return counts  # every layer at MAX_LAYER_RATE
            caps = grown
            continue
        trials = np.stack([v] * len(options))
        for row, (g, n) in enumerate(options):
            trials[row, cost.row[g.index]] = n
        after = cost.left(trials)
        saved = np.maximum(left - after, 1e-9)
        lost = np.array(
            [ranked[g.index][counts[g.index] : n].sum() for g, n in options], dtype=np.float64
        )
        per_flop = lost / saved
        reached = 1 - after / cost.total
        landing = (reached >= target) & (reached <= target + LANDING)
        if landing.any():
            best = int(np.argmin(np.where(landing, per_flop, np.inf)))
        elif (reached >= target).any():
            best = int(np.argmin(np.where(reached >= target, reached, np.inf)))
        else:
            best = int(np.argmin(per_flop))
        g, n = options[best]
        counts[g.index] = n
