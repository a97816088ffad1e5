"""The convert stage: ONNX export (pruned filters physically gone), checked
against torch, then OpenVINO IR with FP16 weights; plus the original model as an
FP32 IR, the baseline every benchmark compares with, exported once per content
hash and shared by a search's candidates (stages/baseline.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import torch
from torch import nn

from kubeslim.errors import KubeslimError
from kubeslim.models.zoo import load_model
from kubeslim.pruning.graph import count
from kubeslim.pruning.history import load_pruned
from kubeslim.stages.baseline import (
    Baseline,
    baseline_hash,
    ensure_baseline,
    fetch_cached,
    place_copy,
    search_root,
    shared_cache,
)
from kubeslim.stages.context import StageContext, StageOutput

OPSET = 17
# ONNX and torch differ only by float reassociation; anything larger is a bug.
MAX_ABS_DIFF = 1e-3


def convert(ctx: StageContext) -> StageOutput:
    """Export the (pruned) model to ONNX and IR, and the original to an FP32 IR."""
    spec = ctx.spec
    original = load_model(spec.model)
    if spec.pruning.enabled:
        model = load_pruned(spec.model, ctx.fetch_output("prune", "model"))
    else:
        model = original
    example = ctx.example_input()
    ctx.reporter.phase("export-onnx")
    onnx_path = ctx.scratch / "model.onnx"
    export_onnx(model, example, onnx_path)
    diff = check_onnx(model, onnx_path, example)
    ctx.reporter.phase("convert-ir")
    ir_path = ctx.scratch / "model.xml"
    ov.save_model(ov.convert_model(onnx_path), ir_path, compress_to_fp16=True)
    base = _baseline(ctx, original, example)
    flops, params = count(model, example)
    cache = shared_cache(ctx.spec.artifacts.uri, ctx.store)
    files = {"onnx": onnx_path, "ir": ir_path}
    companions = [ir_path.with_suffix(".bin")]
    root = search_root(ctx.store)
    if root.root == ctx.store.root:
        # Without a search the convert output names the baseline, as always.
        files["baseline_ir"] = fetch_cached(cache, base.hash, ctx.scratch / "baseline")
        companions.append(files["baseline_ir"].with_suffix(".bin"))
    else:
        # A search's candidates share one copy in the search root (metrics: baselineHash).
        place_copy(cache, base.hash, root)
    return StageOutput(
        files=files,
        companions=companions,
        metrics={
            "flops": flops,
            "params": params,
            "baselineFlops": base.flops,
            "baselineParams": base.params,
            "baselineHash": base.hash,
            "baselineReused": base.reused,
            "onnxMaxAbsDiff": diff,
            "opset": OPSET,
        },
    )


def _baseline(ctx: StageContext, original: nn.Module, example: torch.Tensor) -> Baseline:
    """The original as an FP32 IR in the shared cache: found by content hash, or
    exported now."""
    from kubeslim.stages.runner import checkpoint_digest

    def export() -> tuple[Path, int, int]:
        ctx.reporter.phase("convert-baseline")
        onnx_file = ctx.scratch / "baseline.onnx"
        export_onnx(original, example, onnx_file)
        xml = ctx.scratch / "baseline.xml"
        ov.save_model(ov.convert_model(onnx_file), xml, compress_to_fp16=False)
        return (xml, *count(original, example))

    key = baseline_hash(ctx.spec.model, checkpoint_digest("convert", ctx.spec), OPSET)
    return ensure_baseline(shared_cache(ctx.spec.artifacts.uri, ctx.store), key, export)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript-based export with a dynamic batch axis."""
    try:
        _export(model, example, path)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise KubeslimError(f"ONNX export of the model failed: {first}") from None
    onnx.checker.check_model(str(path), full_check=True)


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )


def check_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> float:
    """Max |torch - ONNX| on a small batch, run by OpenVINO in full f32 precision."""
    batch = torch.cat([example, example.flip(-1), example * 0.5], dim=0)
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(batch.numpy(), share_inputs=False)[0]
    diff = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if diff > MAX_ABS_DIFF * scale:
        raise KubeslimError(f"ONNX export does not match torch: max abs diff {diff:.3g}")
    return diff
