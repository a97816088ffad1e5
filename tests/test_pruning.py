"""The pruning engine on real architectures: soft masks equal physical removal,
coupled channels go together, FLOPs and params drop as reported."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kubeslim.api.spec import Criterion, ModelSpec, PruningSpec, ScheduleKind
from kubeslim.models.compact import CompactResNet
from kubeslim.models.zoo import build_model
from kubeslim.progress import Reporter
from kubeslim.pruning import masks as masks_module
from kubeslim.pruning.graph import build_graph, count
from kubeslim.pruning.history import load_pruned, save_pruned
from kubeslim.pruning.policy import counts_for, epochs_per_step, schedule
from kubeslim.pruning.pruner import FineTuneData, Pruner


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a channel that is not really zero would show."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)


def _prune(
    model: nn.Module,
    x: torch.Tensor,
    target: dict[str, float],
    train_steps: int = 0,
    **extra: object,
) -> tuple[nn.Module, object, torch.Tensor]:
    """Run the Pruner, capturing the soft-masked output just before removal."""
    spec = PruningSpec.model_validate(
        {
            "target": target,
            "schedule": extra.pop("schedule", {"steps": 2}),
            "fineTune": {
                "epochs": 3 if train_steps else 0,
                "maxStepsPerEpoch": train_steps or None,
                "learningRate": 0.01,
            },
            **extra,
        }
    )
    images = (torch.rand(16, *x.shape[1:]) * 255).to(torch.uint8)
    data = DataLoader(TensorDataset(images, torch.randint(0, 10, (16,))), batch_size=8)
    soft: dict[str, torch.Tensor] = {}
    original_remove = masks_module.SoftMasks.remove

    def capture(self: masks_module.SoftMasks) -> None:
        with torch.no_grad():
            soft["y"] = self.graph.model.eval()(x)
        original_remove(self)

    masks_module.SoftMasks.remove = capture  # type: ignore[method-assign]
    try:
        pruned, report = Pruner(spec, Reporter("none")).run(
            model, x, 10, FineTuneData(data, lambda t: t.float() / 255, torch.device("cpu"))
        )
    finally:
        masks_module.SoftMasks.remove = original_remove  # type: ignore[method-assign]
    return pruned, report, soft["y"]


@pytest.mark.parametrize(
    "arch", ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "densenet121"]
)
def test_soft_and_hard_pruning_agree_and_flops_drop(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture=arch, num_classes=10, input_shape=[3, 48, 48]))
    _randomize_bn(model)
    x = torch.randn(2, 3, 48, 48)
    before_flops, before_params = count(model, x)
    pruned, report, soft = _prune(model, x, {"flopsReduction": 0.4})
    with torch.no_grad():
        hard = pruned.eval()(x)
    assert torch.allclose(hard, soft, atol=1e-4, rtol=1e-4), float((hard - soft).abs().max())
    flops, params = count(pruned, x)
    assert (report.flops_before, report.params_before) == (before_flops, before_params)
    assert (report.flops_after, report.params_after) == (flops, params)
    assert 0.3 <= 1 - flops / before_flops <= 0.6
    assert params < before_params


def test_fine_tuning_keeps_masked_filters_at_zero_and_removal_matches() -> None:
    torch.manual_seed(0)
    model = CompactResNet(10, 1)
    x = torch.randn(2, 1, 28, 28)
    pruned, _, soft = _prune(model, x, {"filterRate": 0.5}, train_steps=3)
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x), soft, atol=1e-5)


def test_coupled_channels_are_pruned_together() -> None:
    """Residual adds, depthwise convs and concatenation stay consistent."""
    model = CompactResNet(10, 1).eval()
    x = torch.randn(1, 1, 28, 28)
    pruned, _, _ = _prune(model, x, {"filterRate": 0.5})
    m = pruned
    # residual add in layer1: the block's output width equals its input (the stem's)
    assert m.layer1.conv2[0].out_channels == m.stem[0].out_channels < 32
    # projected residual: main path and shortcut agree
    assert m.layer3.conv2[0].out_channels == m.layer3.shortcut[0].out_channels < 128
    # depthwise conv keeps one filter per input channel
    dw = m.mixer.depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels == m.layer3.conv2[0].out_channels
    # concat: the classifier sees both branches, whatever each kept
    concat = m.mixer.pointwise[0].out_channels + m.mixer.side[0].out_channels
    assert m.fc.in_features == concat < 128
    assert m.fc.out_features == 10  # the classifier's outputs are never pruned
    m(x)  # and the network still runs


def test_masks_zero_every_coupled_slice() -> None:
    model = CompactResNet(10, 1).eval()
    _randomize_bn(model)
    graph = build_graph(model, torch.randn(1, 1, 28, 28), [model.fc])
    stem = next(g for g in graph.groups if g.root_name == "stem.0")
    masks = masks_module.SoftMasks(graph)
    masks.update({stem.index: [0, 3]})
    # the stem's filters, the residual branch's producer and its BN, the next conv's inputs
    for conv in (model.stem[0], model.layer1.conv2[0]):
        assert conv.weight[[0, 3]].abs().sum() == 0
    assert model.layer1.conv2[1].weight[[0, 3]].abs().sum() == 0
    assert model.layer1.conv1[0].weight[:, [0, 3]].abs().sum() == 0
    assert model.stem[0].weight[1].abs().sum() > 0


def test_l1_criterion_masks_the_smallest_filters() -> None:
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    with torch.no_grad():
        for i in range(16):
            model[0].weight[i].fill_(float(i + 1))
    x = torch.randn(1, 1, 8, 8)
    spec = PruningSpec.model_validate(
        {
            "criterion": "l1",
            "target": {"filterRate": 0.5},
            "schedule": {"steps": 1},
            "fineTune": {"epochs": 0},
            "roundTo": 1,
        }
    )
    pruner = Pruner(spec, Reporter("none"))
    graph = build_graph(model, x, pruner.ignored_layers(model, 4))
    masks = masks_module.SoftMasks(graph)
    pruner._mask_step(graph, masks, 0.5)
    (only,) = [g for g in graph.groups if masks.masked.get(g.index)]
    assert masks.masked[only.index] == list(range(8))


def test_global_ranking_cuts_unevenly_but_reaches_the_target() -> None:
    model = build_model(ModelSpec(architecture="resnet18", num_classes=10, input_shape=[3, 32, 32]))
    x = torch.randn(1, 3, 32, 32)
    _pruned, report, _ = _prune(model, x, {"flopsReduction": 0.5}, globalRanking=True)
    kept = {row["kept"] / row["total"] for row in report.layers}  # type: ignore[attr-defined]
    assert len(kept) > 2  # not one uniform rate
    assert 1 - report.flops_after / report.flops_before >= 0.49  # type: ignore[attr-defined]


def test_schedules_and_epoch_split() -> None:
    lin = schedule(ScheduleKind.linear, 0.6, 3)
    exp = schedule(ScheduleKind.exponential, 0.6, 3)
    assert lin == pytest.approx([0.2, 0.4, 0.6])
    assert exp[-1] == pytest.approx(0.6) and exp == sorted(exp)
    assert exp[0] > lin[0]  # exponential removes more early
    assert epochs_per_step(5, 3) == [1, 2, 2]
    assert sum(epochs_per_step(2, 4)) == 2


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_flops_target_is_met_without_large_overshoot(target: float) -> None:
    model = CompactResNet(10, 1).eval()
    graph = build_graph(model, torch.randn(1, 1, 28, 28), [model.fc])
    spec = PruningSpec.model_validate({"target": {"flopsReduction": target}})
    counts = counts_for(graph, spec, {}, target)
    reached = 1 - graph.estimate_macs(counts) / graph.total_macs
    assert target <= reached <= target + 0.08


def test_pruned_model_reloads_from_weights_and_history(tmp_path: object) -> None:
    spec = ModelSpec(architecture="mobilenet_v2", num_classes=10, input_shape=[3, 32, 32])
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, report, _ = _prune(copy.deepcopy(model), x, {"filterRate": 0.3})
    path = tmp_path / "pruned.pt"  # type: ignore[operator]
    save_pruned(pruned, report.history, path)  # type: ignore[attr-defined]
    again = load_pruned(spec, path)
    with torch.no_grad():
        assert torch.equal(again(x), pruned.eval()(x))


def test_criteria_rank_differently() -> None:
    from kubeslim.pruning.importance import importance_for

    torch.manual_seed(0)
    model = CompactResNet(10, 1).eval()
    graph = build_graph(model, torch.randn(1, 1, 28, 28), [model.fc])
    group = graph.groups[0]
    ranks = {
        tuple(torch.argsort(importance_for(c)(group.group(list(range(group.channels))))).tolist())  # type: ignore[arg-type]
        for c in Criterion
    }
    assert len(ranks) == len(Criterion)


@pytest.mark.parametrize("arch", ["regnet_y_400mf", "efficientnet_b0"])
def test_more_architectures_grouped_convs_and_squeeze_excitation(arch: str) -> None:
    """Grouped convs (RegNet: left at their width) and squeeze-excitation blocks."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture=arch, num_classes=10, input_shape=[3, 32, 32]))
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    pruned, report, soft = _prune(model, x, {"flopsReduction": 0.3})
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x), soft, atol=1e-4, rtol=1e-4)
    assert report.flops_after < 0.8 * report.flops_before  # type: ignore[attr-defined]
    for m in pruned.modules():  # grouped convs still divide their channels evenly
        if isinstance(m, nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


def test_convnext_prunes_and_runs() -> None:
    """Its LayerNorm normalizes across channels, so a zeroed channel still shifts the
    statistics: soft and hard differ a little here, which is why accuracy is always
    measured after removal."""
    model = build_model(ModelSpec(architecture="convnext_tiny", num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    pruned, report, _ = _prune(model, x, {"flopsReduction": 0.3})
    assert pruned(x).shape == (1, 10)
    assert report.flops_after < 0.8 * report.flops_before  # type: ignore[attr-defined]


def test_shufflenet_prunes_its_provably_independent_groups(tmp_path: object) -> None:
    """torch-pruning cannot trace the channel shuffle: the blocks' inner channels
    (conv -> depthwise -> conv, inside one branch) are pruned, the rest kept."""
    torch.manual_seed(0)
    spec = ModelSpec(architecture="shufflenet_v2_x0_5", num_classes=10, input_shape=[3, 64, 64])
    model = build_model(spec)
    _randomize_bn(model)
    x = torch.randn(2, 3, 64, 64)
    graph = build_graph(model, x, [model.fc])
    assert graph.partial and graph.groups
    assert all(".branch2." in g.root_name for g in graph.groups)  # inner widths only
    pruned, report, soft = _prune(model, x, {"filterRate": 0.5}, train_steps=2)
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x), soft, atol=1e-4, rtol=1e-4)
    cut = [row for row in report.layers if row["kept"] < row["total"]]  # type: ignore[attr-defined]
    assert len(cut) >= 10
    assert report.flops_after < 0.9 * report.flops_before  # type: ignore[attr-defined]
    path = tmp_path / "pruned.pt"  # type: ignore[operator]
    save_pruned(pruned, report.history, path)  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(load_pruned(spec, path)(x), pruned.eval()(x))


def test_soft_filter_pruning_lets_a_masked_filter_come_back() -> None:
    """SFP: a filter zeroed at one selection keeps training and can win its place
    back; BN is left alone and the momentum of zeroed filters is cleared."""
    torch.manual_seed(0)
    model = CompactResNet(10, 1).eval()
    x = torch.randn(1, 1, 28, 28)
    spec = PruningSpec.model_validate(
        {"target": {"filterRate": 0.5}, "masking": "soft", "criterion": "geometric_median"}
    )
    pruner = Pruner(spec, Reporter("none"))
    graph = build_graph(model, x, [model.fc])
    masks = masks_module.SoftMasks(graph)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()  # momentum buffers exist
    stem = next(g for g in graph.groups if g.root_name == "stem.0")
    pruner._mask_step(graph, masks, 0.4, hard=False, optimizer=opt)
    first = masks.masked[stem.index]
    assert first
    conv, bn = model.stem[0], model.stem[1]
    assert conv.weight[first].abs().sum() == 0  # the filters are zeroed
    assert opt.state[conv.weight]["momentum_buffer"][first].abs().sum() == 0
    assert bn.weight[first].abs().min() > 0  # BN is not: the filter can come back
    masks.apply()  # soft masks are not re-applied after optimizer steps
    with torch.no_grad():  # as if training had made the zeroed filters matter most
        for layer in (conv, model.layer1.conv2[0]):  # both layers writing the stem's channels
            layer.weight[first] = torch.randn_like(layer.weight[first]) * 10
    pruner._mask_step(graph, masks, 0.4, hard=False, optimizer=opt)
    assert not set(first) & set(masks.masked[stem.index])


def test_soft_masking_ends_with_a_model_equal_to_its_removal() -> None:
    torch.manual_seed(0)
    model = CompactResNet(10, 1)
    _randomize_bn(model)
    x = torch.randn(2, 1, 28, 28)
    pruned, report, soft = _prune(
        model, x, {"filterRate": 0.5}, train_steps=2, masking="soft", schedule={"steps": 3}
    )
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x), soft, atol=1e-5)
    assert report.flops_after < 0.3 * report.flops_before  # type: ignore[attr-defined]


def _batch_statistics(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple]:
    """Each BatchNorm input's per-channel mean and unbiased variance, averaged over the
    batches, from train-mode forward passes of a copy (what re-estimation must give)."""
    probe = copy.deepcopy(model).train()
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def record(name: str) -> object:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            seen.setdefault(name, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

        return hook

    for name, m in probe.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(record(name))  # type: ignore[arg-type]
    with torch.no_grad():
        for x in batches:
            probe(x)
    return {
        name: (torch.stack([m for m, _ in s]).mean(0), torch.stack([v for _, v in s]).mean(0))
        for name, s in seen.items()
    }


@pytest.mark.parametrize("recalibration", [40, 0])
def test_batch_norm_statistics_are_re_estimated_on_the_final_weights(recalibration: int) -> None:
    """Issue 11 (RESULTS.md 5b): after fine-tuning, every BatchNorm's running statistics
    are the average of its batch statistics under the final, pruned weights (here over
    the loader's 2 batches, fewer than the 40 asked); with 0 they stay the running
    averages fine-tuning left."""
    torch.manual_seed(0)
    model = CompactResNet(10, 1)
    _randomize_bn(model)
    spec = PruningSpec.model_validate(
        {
            "target": {"filterRate": 0.5},
            "schedule": {"steps": 2},
            "fineTune": {"epochs": 2, "batchNormRecalibration": recalibration},
        }
    )
    images = (torch.rand(16, 1, 28, 28) * 255).to(torch.uint8)
    data = DataLoader(TensorDataset(images, torch.randint(0, 10, (16,))), batch_size=8)
    preprocess = lambda t: t.float() / 255  # noqa: E731
    pruned, report = Pruner(spec, Reporter("none")).run(
        model, torch.randn(2, 1, 28, 28), 10, FineTuneData(data, preprocess, torch.device("cpu"))
    )
    assert report.batch_norm_recalibration == (2 if recalibration else 0)
    expected = _batch_statistics(pruned, [preprocess(x) for x, _ in data])
    norms = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms.keys() == expected.keys()
    matches = [
        torch.allclose(norms[n].running_mean, mean, atol=1e-4)
        and torch.allclose(norms[n].running_var, var, rtol=1e-3, atol=1e-4)
        for n, (mean, var) in expected.items()
    ]
    assert all(matches) if recalibration else not any(matches), matches
    assert all(m.momentum == 0.1 for m in norms.values())  # training settings restored
