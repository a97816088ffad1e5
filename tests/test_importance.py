"""Filter criteria as their papers define them: FPGM on signed weights with masked
filters left out, classic per-filter norms, normalised per producing layer."""

from __future__ import annotations

import torch
from torch import nn

from kubeslim.api.spec import Criterion
from kubeslim.pruning.graph import build_graph
from kubeslim.pruning.importance import importance_for


def _scores(weight: torch.Tensor, criterion: Criterion, bn: bool = False) -> torch.Tensor:
    """Scores of the first conv of conv(-> BN) -> ReLU -> conv, for these filters."""
    out, cin = weight.shape[:2]
    layers: list[nn.Module] = [nn.Conv2d(cin, out, 1, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(out))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(out, 3, 1))
    with torch.no_grad():
        model[0].weight.copy_(weight.reshape(out, cin, 1, 1))
        if bn:  # BN scales that would reverse a group norm's ranking
            model[1].weight.copy_(torch.linspace(10.0, 0.1, out))
    x = torch.randn(1, cin, 4, 4)
    graph = build_graph(model, x, [model[-1]])
    (group,) = [g for g in graph.groups if g.root is model[0]]
    before = model[0].weight.clone()
    scores = importance_for(criterion)(group.group(list(range(group.channels))))
    assert torch.equal(model[0].weight, before)  # importance only reads
    assert scores is not None
    return scores


def test_fpgm_scores_the_geometric_median_lowest() -> None:
    center = torch.tensor([1.0, 1.0])
    points = [center] + [center + d for d in torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1]])]
    scores = _scores(torch.stack(points), Criterion.geometric_median)
    assert int(scores.argmin()) == 0
    assert scores[0] < 0.8 * scores[1:].min()


def test_fpgm_tells_a_filter_from_its_negative() -> None:
    """a and -a are far apart; two copies of b coincide: the copies are redundant."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    scores = _scores(torch.stack([a, -a, b, b]), Criterion.geometric_median)
    assert scores[2] == scores[3]
    assert scores[0] == scores[1]
    assert scores[0] > 1.5 * scores[2]  # squared magnitudes would make all four equal


def test_masked_filters_do_not_change_the_others() -> None:
    torch.manual_seed(0)
    live = torch.randn(5, 4)
    with_masked = torch.cat([live[:2], torch.zeros(2, 4), live[2:]])
    for criterion in (Criterion.geometric_median, Criterion.l1, Criterion.l2):
        alone = _scores(live, criterion)
        mixed = _scores(with_masked, criterion)
        assert torch.allclose(mixed[[0, 1, 4, 5, 6]], alone, atol=1e-6), criterion
        assert (mixed[[2, 3]] == 0).all()  # masked filters score lowest and stay masked
        assert abs(float(alone.mean()) - 1) < 1e-5  # normalised per layer


def test_group_geometric_median_is_torch_pruning_s_own() -> None:
    """Kept under its own name: it measured ahead (benchmarks/RESULTS.md section 5)."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    scores = _scores(torch.stack([a, -a, b, b]), Criterion.group_geometric_median)
    assert scores.shape == (4,)
    assert not scores[0] > 1.5 * scores[2]  # squared weights: a and -a look alike


def test_norm_criteria_are_the_per_filter_norms_of_the_producing_layer() -> None:
    """Li et al.'s L1/L2: the filter's own weights, not the BN or next layer's."""
    weight = torch.stack([torch.full((3,), float(i + 1)) for i in range(6)])
    weight[0] = torch.tensor([2.5, 2.5, 0.0])  # L1 5 < 6 but L2 3.54 > 3.46: ranks differ
    l1 = _scores(weight, Criterion.l1, bn=True)
    l2 = _scores(weight, Criterion.l2, bn=True)
    expected_l1 = weight.abs().sum(1)
    expected_l2 = weight.norm(dim=1)
    assert torch.allclose(l1, expected_l1 / expected_l1.mean(), atol=1e-6)
    assert torch.allclose(l2, expected_l2 / expected_l2.mean(), atol=1e-6)
    assert int(l1.argmin()) == 0 and int(l2.argmin()) == 1


def test_coupled_producers_are_normalised_and_summed() -> None:
    """A residual group: both convs that write the channels count, each with mean 1."""
    conv_a, conv_b = nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(2, 4, 1, bias=False)

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = conv_a, conv_b, nn.Conv2d(4, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.a(x) + self.b(x))

    model = Residual()
    with torch.no_grad():
        conv_a.weight.copy_(torch.tensor([1.0, 2, 3, 4]).reshape(4, 1, 1, 1).expand(4, 2, 1, 1))
        conv_b.weight.copy_(
            100 * torch.tensor([4.0, 3, 2, 1]).reshape(4, 1, 1, 1).expand(4, 2, 1, 1)
        )
    graph = build_graph(model, torch.randn(1, 2, 3, 3), [model.head])
    (group,) = graph.groups
    scores = importance_for(Criterion.l1)(group.group(list(range(4))))
    assert scores is not None
    # per layer mean 1: a gives [.4 .8 1.2 1.6], b (100x larger) [1.6 1.2 .8 .4]
    assert torch.allclose(scores, torch.full((4,), 2.0), atol=1e-5)
