"""The `compare` phase of benchmarks/nncf_legacy.py (project venv: NNCF 3.x, OpenVINO)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import nncf
import openvino as ov
import torch
import yaml
from torch import nn

from benchmarks.common import Variant, add_ratios, header, ir_size, save, time_variants
from benchmarks.nncf_legacy import (
    BUDGET,
    KUBESLIM_CONFIGS,
    MODEL,
    TARGET,
    WORK,
    dataset_spec,
    model_spec,
)
from benchmarks.quality_fashion_mnist import BUDGETS, CONFIGS, kubeslim, spec, stage_result
from kubeslim.data.datasets import Preprocess, load_splits, loader
from kubeslim.models.training import evaluate
from kubeslim.models.zoo import load_model
from kubeslim.pruning.graph import build_graph, count
from kubeslim.stages.convert import export_onnx
from kubeslim.stages.measure import ov_accuracy

CALIBRATION = 300


def remove_zeroed(model: nn.Module, example: torch.Tensor) -> int:
    """Physically remove every channel group whose root filters NNCF zeroed."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    graph = build_graph(model, example, head)  # type: ignore[arg-type]
    removed = 0
    for g in graph.groups:
        root = g.root
        if not isinstance(root, nn.Conv2d):
            continue
        norms = root.weight.detach().abs().flatten(1).sum(dim=1)
        idxs = torch.nonzero(norms == 0).flatten().tolist()
        if idxs and len(idxs) < root.out_channels:
            g.group(idxs).prune()
            removed += len(idxs)
    return removed


def nncf_int8(seed: int, out: Path) -> dict[str, Any]:
    """The NNCF 2.19 result of one seed: removal, FP16 IR, INT8 IR, accuracies."""
    work = WORK / BUDGET / MODEL
    data = dataset_spec(seed)
    mspec = model_spec(work / "baseline.pt")
    model = load_model(mspec)
    original_flops, original_params = count(model, torch.zeros(1, 1, 28, 28))
    model.load_state_dict(torch.load(out / "stripped.pt", weights_only=True))
    splits = load_splits(data, size=(28, 28))
    pre = Preprocess(data, mspec)
    val = loader(splits.test, 256)
    example = pre(splits.test[0][0].unsqueeze(0))
    acc_zeroed = evaluate(model, val, pre, torch.device("cpu"))
    channels = remove_zeroed(model.eval(), example)
    acc_removed = evaluate(model, val, pre, torch.device("cpu"))
    flops, params = count(model, example)
    onnx_path, ir = out / "pruned.onnx", out / "pruned.xml"
    export_onnx(model, example, onnx_path)
    ov.save_model(ov.convert_model(onnx_path), ir, compress_to_fp16=True)
    # Calibration exactly as kubeslim's quantize stage picks it.
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(splits.train), generator=gen)[:CALIBRATION].tolist()  # type: ignore[arg-type]
    calib = [pre(splits.train[i][0].unsqueeze(0)).numpy() for i in idx]
    int8 = nncf.quantize(
        ov.Core().read_model(ir),
        nncf.Dataset(calib),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=CALIBRATION,
    )
    int8_path = out / "pruned_int8.xml"
    ov.save_model(int8, int8_path, compress_to_fp16=False)
    compiled = ov.Core().compile_model(int8_path, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    batches = ((pre(x).numpy(), y.numpy()) for x, y in loader(splits.test, 64))
    import json

    trained = json.loads((out / "train.json").read_text())
    return {
        **trained,
        "accuracyZeroedTorch": round(acc_zeroed, 5),
        "accuracyRemovedTorch": round(acc_removed, 5),
        "channelsRemoved": channels,
        "flopsReduction": round(1 - flops / original_flops, 4),
        "paramsReduction": round(1 - params / original_params, 4),
        "accuracyInt8": round(ov_accuracy(compiled, batches), 5),
        "int8Ir": str(int8_path),
        "int8IrBytes": ir_size(int8_path),
    }


def kubeslim_run(config: str, seed: int) -> dict[str, Any]:
    """kubeslim at one configuration and seed (seed 0 is the quality run itself)."""
    b = BUDGETS[BUDGET][MODEL]
    work = WORK / BUDGET / MODEL
    arts = work / (config if seed == 0 else f"{config}-seed{seed}")
    if not (arts / "benchmark" / "result.json").exists():
        body = spec(MODEL, b, work, CONFIGS[config])
        body["spec"]["dataset"]["seed"] = seed
        body["spec"]["artifacts"]["uri"] = str(arts)
        manifest = arts.with_suffix(".yaml")
        manifest.write_text(yaml.safe_dump(body))
        kubeslim(["run", str(manifest), "--quiet"])
    prune = stage_result(arts, "prune")
    bench = stage_result(arts, "benchmark")["metrics"]
    conv = stage_result(arts, "convert")["metrics"]
    int8 = stage_result(arts, "quantize")["outputs"]["int8_ir"].removeprefix("file://")
    return {
        "config": config,
        "seed": seed,
        "accuracyBaseline": bench["baseline"]["accuracy"],
        "accuracyInt8": bench["optimized"]["accuracy"],
        "flopsReduction": round(1 - conv["flops"] / conv["baselineFlops"], 4),
        "paramsReduction": round(1 - conv["params"] / conv["baselineParams"], 4),
        "pruneStageSeconds": prune["duration_seconds"],
        "int8Ir": int8,
        "int8IrBytes": ir_size(Path(int8)),
        "baselineIr": stage_result(arts, "convert")["outputs"]["baseline_ir"].removeprefix(
            "file://"
        ),
    }


def compare(seeds: list[int], seconds: float, rounds: int, output: str, configs: list[str]) -> int:
    result: dict[str, Any] = {**header(), "model": MODEL, "target": TARGET, "budget": BUDGET}
    nncf_rows = []
    for seed in seeds:
        out = WORK / "nncf219" / f"seed{seed}"
        if not (out / "stripped.pt").exists():
            print(f"no NNCF run for seed {seed}: run the train phase first", file=sys.stderr)
            continue
        nncf_rows.append(nncf_int8(seed, out))
    ks_rows = [kubeslim_run(c, s) for c in configs for s in seeds]
    result["nncf"] = nncf_rows
    result["kubeslim"] = ks_rows
    variants = [Variant("original-fp32", Path(ks_rows[0]["baselineIr"]), "default")]
    variants += [
        Variant(f"kubeslim:{r['config']}:int8", Path(r["int8Ir"]), "default")
        for r in ks_rows
        if r["seed"] == seeds[0]
    ]
    variants += [
        Variant(f"nncf219:int8:seed{r['seed']}", Path(r["int8Ir"]), "default")
        for r in nncf_rows[:1]
    ]
    result["timing"] = time_variants(variants, [1, 1, 28, 28], seconds, rounds)
    add_ratios(result["timing"], "original-fp32")
    result["summary"] = summarize(nncf_rows, ks_rows)
    save(output, result)
    for k, v in result["summary"].items():
        print(k, v)
    return 0


def summarize(nncf_rows: list[dict[str, Any]], ks_rows: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": round(statistics.mean(values), 5),
            "min": round(min(values), 5),
            "max": round(max(values), 5),
            "n": len(values),
        }

    out: dict[str, Any] = {}
    if nncf_rows:
        out["nncf219"] = {
            "accuracyInt8": stats([r["accuracyInt8"] for r in nncf_rows]),
            "flopsReduction": stats([r["flopsReduction"] for r in nncf_rows]),
            "seconds": stats([r["pruneAndFineTuneSeconds"] for r in nncf_rows]),
        }
    for config in KUBESLIM_CONFIGS:
        rows = [r for r in ks_rows if r["config"] == config]
        if rows:
            out[f"kubeslim:{config}"] = {
                "accuracyInt8": stats([r["accuracyInt8"] for r in rows]),
                "flopsReduction": stats([r["flopsReduction"] for r in rows]),
                "seconds": stats([r["pruneStageSeconds"] for r in rows]),
            }
    return out
