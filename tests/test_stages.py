"""Stage building blocks on real models: export numerics, FP16 IR, safe loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from kubeslim.api.spec import ModelSpec
from kubeslim.errors import SpecError
from kubeslim.models.zoo import build_model, load_weights, read_checkpoint
from kubeslim.pruning.graph import build_graph
from kubeslim.pruning.masks import SoftMasks
from kubeslim.stages.convert import check_onnx, export_onnx


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_pruned_model_exports_to_onnx_and_ir_with_matching_numerics(
    tmp_path: Path, arch: str
) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture=arch, num_classes=10, input_shape=[3, 32, 32]))
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    graph = build_graph(model, x, [model.fc if arch == "resnet18" else model.classifier[1]])
    masks = SoftMasks(graph)
    masks.update({g.index: list(range(g.channels // 2)) for g in graph.groups})
    masks.remove()
    path = tmp_path / "m.onnx"
    export_onnx(model, x, path)  # runs onnx.checker
    assert check_onnx(model, path, x) < 1e-4
    ir = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(path), ir, compress_to_fp16=True)
    compiled = ov.Core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(batch).numpy()
    got = compiled(batch.numpy())[0]  # dynamic batch axis
    assert got.shape == (4, 10)
    assert np.abs(got - expected).max() < 5e-2 * max(1.0, np.abs(expected).max())
    # the pruned filters are physically gone: fewer weights on disk
    assert ir.with_suffix(".bin").stat().st_size < 0.5 * 2 * sum(
        p.numel() for p in build_model(ModelSpec(architecture=arch, num_classes=10)).parameters()
    )


def test_checkpoint_wrapped_in_state_dict_key_loads(tmp_path: Path) -> None:
    spec = ModelSpec(architecture="resnet18", num_classes=10, input_shape=[1, 28, 28])
    model = build_model(spec)
    path = tmp_path / "ck.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    other = build_model(spec)
    load_weights(other, read_checkpoint(path), "resnet18")
    assert torch.equal(other.conv1.weight, model.conv1.weight)
    assert other.conv1.in_channels == 1  # inputShape's channel count


def test_non_state_dict_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(SpecError, match="expected a state_dict"):
        read_checkpoint(path)
