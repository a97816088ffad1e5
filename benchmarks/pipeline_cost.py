"""Pipeline cost: soft-mask fine-tuning overhead, convert time, quantize time.

Soft masks: the same batches go through kubeslim's training loop
(`kubeslim.models.training.train_epoch`) with and without `SoftMasks.apply`
after every optimizer step, in alternating blocks (one process, interleaved),
on the model as the prune stage sees it (half of every group's channels
masked). The overhead is also measured directly: the time of one
`SoftMasks.apply()` call against the plain step.

Convert: ONNX export + check + OpenVINO IR (the convert stage's functions);
quantize: nncf.quantize with 300 calibration samples (the stage's default).

    .venv/bin/python -m benchmarks.pipeline_cost [--blocks 5 --steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import openvino as ov
import torch

from benchmarks.common import Stopwatch, header, save
from kubeslim.api.spec import FineTune, ModelSpec
from kubeslim.models.training import make_optimizer, train_epoch
from kubeslim.models.zoo import build_model
from kubeslim.progress import Reporter
from kubeslim.pruning.graph import build_graph
from kubeslim.pruning.masks import SoftMasks
from kubeslim.pruning.policy import uniform_counts
from kubeslim.stages.convert import check_onnx, export_onnx

MODELS: dict[str, dict[str, Any]] = {
    "compact@28": {
        "entryPoint": "kubeslim.models.compact:compact_resnet",
        "numClasses": 10,
        "inputShape": [1, 28, 28],
    },
    "resnet18-small-stem@28": {
        "architecture": "resnet18",
        "stem": "small",
        "numClasses": 10,
        "inputShape": [1, 28, 28],
    },
    "resnet18@224": {"architecture": "resnet18", "numClasses": 1000, "inputShape": [3, 224, 224]},
}
BATCH = {"compact@28": 128, "resnet18-small-stem@28": 32, "resnet18@224": 8}


def soft_mask_overhead(name: str, blocks: int, steps: int) -> dict[str, Any]:
    spec = ModelSpec.model_validate(MODELS[name])
    torch.manual_seed(0)
    model = build_model(spec)
    example = torch.randn(1, *spec.input_shape)
    head: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = head[-1:]
    graph = build_graph(model, example, head)
    masks = SoftMasks(graph)
    counts = uniform_counts(graph, 0.5, 8)
    masks.update({g.index: list(range(counts[g.index])) for g in graph.groups})
    batch = BATCH[name]
    data = [
        (torch.randn(batch, *spec.input_shape), torch.randint(0, spec.num_classes, (batch,)))
        for _ in range(steps)
    ]
    opt, _ = make_optimizer(model, FineTune())
    reporter = Reporter("none")

    def block(after: Any) -> float:
        start = time.perf_counter()
        train_epoch(
            model,
            data,  # type: ignore[arg-type]  # a list of batches is all it iterates
            lambda x: x,
            opt,
            torch.device("cpu"),
            reporter,
            after_step=after,
        )
        return (time.perf_counter() - start) / steps

    block(masks.apply)  # warm-up
    plain, masked = [], []
    for _ in range(blocks):
        plain.append(block(None))
        masked.append(block(masks.apply))
    applies = []
    for _ in range(50):
        t0 = time.perf_counter()
        masks.apply()
        applies.append(time.perf_counter() - t0)
    p, m, a = statistics.median(plain), statistics.median(masked), statistics.median(applies)
    return {
        "model": name,
        "batchSize": batch,
        "stepsPerBlock": steps,
        "blocks": blocks,
        "maskedSlices": len(masks._slices),
        "plainStepMs": round(p * 1000, 2),
        "maskedStepMs": round(m * 1000, 2),
        "overheadPercentBlocks": round((m / p - 1) * 100, 2),
        "applyMs": round(a * 1000, 3),
        "overheadPercentApply": round(a / p * 100, 2),
        "plainStepMsRounds": [round(x * 1000, 2) for x in plain],
        "maskedStepMsRounds": [round(x * 1000, 2) for x in masked],
    }


def convert_and_quantize(name: str, samples: int) -> dict[str, Any]:
    spec = ModelSpec.model_validate(MODELS[name])
    torch.manual_seed(0)
    model = build_model(spec).eval()
    example = torch.randn(1, *spec.input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, ir = Path(tmp) / "m.onnx", Path(tmp) / "m.xml"
        with Stopwatch() as t_export:
            export_onnx(model, example, onnx_path)
            check_onnx(model, onnx_path, example)
        with Stopwatch() as t_ir:
            ov_model = ov.convert_model(onnx_path)
            ov.save_model(ov_model, ir, compress_to_fp16=True)
        rng = np.random.default_rng(0)
        data = [
            rng.standard_normal((1, *spec.input_shape), dtype=np.float32) for _ in range(samples)
        ]
        with Stopwatch() as t_q:
            nncf.quantize(ov.Core().read_model(ir), nncf.Dataset(data), subset_size=samples)
    return {
        "model": name,
        "exportAndCheckOnnxSeconds": t_export.seconds,
        "onnxToIrSeconds": t_ir.seconds,
        "convertSeconds": round(t_export.seconds + t_ir.seconds, 3),
        "quantizeSeconds": t_q.seconds,
        "calibrationSamples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default="pipeline_cost")
    args = parser.parse_args()
    result: dict[str, Any] = {**header(), "softMasks": [], "convertQuantize": []}
    for name in args.models:
        print(f"soft masks: {name}", file=sys.stderr, flush=True)
        result["softMasks"].append(soft_mask_overhead(name, args.blocks, args.steps))
        save(args.output, result)
    for name in args.models:
        print(f"convert/quantize: {name}", file=sys.stderr, flush=True)
        result["convertQuantize"].append(convert_and_quantize(name, args.samples))
        save(args.output, result)
    for row in result["softMasks"] + result["convertQuantize"]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
