"""The policy: schedules planned in FLOPs, nearest rounding, cuts placed where
the least importance is lost per FLOP, and bounds on how far a layer strays."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from kubeslim.api.spec import ModelSpec, PruningSpec
from kubeslim.models.compact import CompactResNet
from kubeslim.models.zoo import build_model
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import PruningGraph, build_graph
from kubeslim.pruning.masks import SoftMasks
from kubeslim.pruning.policy import counts_for, keep_count, rate_flops, schedule
from kubeslim.pruning.pruner import Pruner, _normalise


def _steps(
    model: nn.Module, x: torch.Tensor, body: dict[str, object]
) -> tuple[PruningGraph, list[tuple[float, dict[int, int]]]]:
    """Mask step by step as the Pruner does (no training): (planned, counts) per step."""
    spec = PruningSpec.model_validate({"criterion": "geometric_median", **body})
    pruner = Pruner(spec, Reporter("none"))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    graph = build_graph(model, x, head)
    masks = SoftMasks(graph)
    rate = spec.target.filter_rate
    final = spec.target.flops_reduction or rate_flops(graph, rate or 0.0, spec.round_to)
    plan = schedule(spec.schedule.kind, final, spec.schedule.steps)
    out = []
    for k, fraction in enumerate(plan, 1):
        counts = pruner._mask_step(graph, masks, fraction, last=k == len(plan))
        out.append((fraction, counts))
    return graph, out


def test_keep_count_rounds_to_the_nearest_multiple() -> None:
    assert keep_count(32, 0.2, 8) == 24  # 25.6 -> 24, not up to 32
    assert keep_count(32, 0.3, 16) == 16  # 22.4 -> 16
    assert keep_count(32, 0.2, 16) == 32  # 25.6 -> 32
    assert keep_count(64, 0.99, 8) == 8  # never below MAX_LAYER_RATE's floor


@pytest.mark.parametrize("round_to", [8, 16])
def test_each_step_of_a_filter_rate_cuts_the_flops_it_plans(round_to: int) -> None:
    """0.5 of the filters is 74.6% of the compact CNN's FLOPs: three exponential
    steps plan 37/60/75%, and each lands there (not 17/46/75 as rounding up did)."""
    torch.manual_seed(0)
    graph, steps = _steps(
        CompactResNet(10, 1).eval(),
        torch.randn(1, 1, 28, 28),
        {"target": {"filterRate": 0.5}, "schedule": {"steps": 3}, "roundTo": round_to},
    )
    reached = [graph.reduction(counts) for _, counts in steps]
    assert reached == sorted(reached)
    assert reached[0] > 0.3
    for (planned, _), got in zip(steps, reached, strict=True):
        assert planned - 0.01 <= got <= planned + 0.03, (planned, got)
    assert reached[-1] == pytest.approx(0.746, abs=0.005)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_a_flops_target_is_met_within_two_points_at_round_to_16(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(architecture=arch, num_classes=10, input_shape=[3, 32, 32], stem="small")
    ).eval()
    graph, steps = _steps(
        model,
        torch.randn(1, 3, 32, 32),
        {"target": {"flopsReduction": 0.5}, "schedule": {"steps": 2}, "roundTo": 16},
    )
    for planned, counts in steps:
        assert planned <= graph.reduction(counts) <= planned + 0.02
    for g in graph.groups:  # every width a multiple of 16 (or the layer untouched)
        kept = g.channels - steps[-1][1][g.index]
        assert kept == g.channels or kept % 16 == 0


def test_the_stem_does_not_collapse_in_one_step() -> None:
    """Closing the gap to a FLOPs target used to take a cheap stem from 24 to 8."""
    torch.manual_seed(0)
    model = CompactResNet(10, 1).eval()
    graph, steps = _steps(
        model,
        torch.randn(1, 1, 28, 28),
        {"target": {"flopsReduction": 0.7}, "schedule": {"steps": 3}, "roundTo": 8},
    )
    stem = next(g for g in graph.groups if g.root_name == "stem.0")
    kept = [stem.channels] + [stem.channels - counts[stem.index] for _, counts in steps]
    assert all(a - b <= 8 for a, b in itertools.pairwise(kept)), kept
    assert kept[-1] >= 8  # one block past the uniform width at most


def test_global_ranking_cuts_layers_that_matter_less_more() -> None:
    """Two layers alike in size and cost; one has many near-duplicate filters."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    ).eval()
    with torch.no_grad():  # layer 2: half its filters are copies of one filter
        model[2].weight[16:] = model[2].weight[0] + 1e-3 * torch.randn(16, 32, 3, 3)
    x = torch.randn(1, 3, 8, 8)
    gap = {}
    for ranking in (False, True):
        twin = copy.deepcopy(model)  # masking zeroes filters in place
        graph, steps = _steps(
            twin,
            x,
            {
                "target": {"flopsReduction": 0.4},
                "schedule": {"steps": 1},
                "roundTo": 8,
                "globalRanking": ranking,
            },
        )
        counts = steps[-1][1]
        by_root = {g.root: counts[g.index] for g in graph.groups}
        gap[ranking] = by_root[twin[2]] - by_root[twin[4]]
    assert gap[True] >= 8 and gap[True] > gap[False], gap


def test_global_ranking_normalises_over_live_channels_only() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 0.5])
    masked = torch.tensor([False, False, False, True])
    assert torch.allclose(_normalise(scores, masked), torch.tensor([0.5, 1.0, 1.5, 0.0]))


def test_counts_never_undo_a_hard_mask() -> None:
    model = CompactResNet(10, 1).eval()
    graph = build_graph(model, torch.randn(1, 1, 28, 28), [model.fc])
    spec = PruningSpec.model_validate({"target": {"flopsReduction": 0.3}, "roundTo": 8})
    floor = {g.index: 8 for g in graph.groups if g.channels > 16}
    counts = counts_for(graph, spec, {}, 0.3, floor)
    assert all(counts[i] >= n for i, n in floor.items())
