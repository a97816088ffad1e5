"""The quantize stage: INT8 post-training quantization with NNCF's OpenVINO backend.

No torch here: the stage runs in the runtime image, which has none."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nncf
import numpy as np
import openvino as ov

from kubeslim.api.spec import Preset
from kubeslim.data.arrays import batches
from kubeslim.stages.context import StageContext, StageOutput
from kubeslim.stages.measure import ov_accuracy


def quantize(ctx: StageContext) -> StageOutput:
    """Quantize the FP16 IR to INT8 (accuracy-controlled when maxAccuracyDrop is set)."""
    q = ctx.spec.quantization
    model = ov.Core().read_model(ctx.fetch_output("convert", "ir"))
    calibration = nncf.Dataset(_calibration_images(ctx), lambda x: x)
    preset = (
        nncf.QuantizationPreset.MIXED
        if q.preset is Preset.mixed
        else nncf.QuantizationPreset.PERFORMANCE
    )
    scope = nncf.IgnoredScope(
        names=q.ignored_scope.names,
        patterns=q.ignored_scope.patterns,
        types=q.ignored_scope.types,
        validate=False,
    )
    subset = min(q.subset_size, ctx.spec.dataset.calibration_size)
    metrics: dict[str, Any] = {"subsetSize": subset, "preset": q.preset.value}
    if q.max_accuracy_drop is None:
        ctx.reporter.phase("quantize")
        int8 = nncf.quantize(
            model, calibration, preset=preset, subset_size=subset, ignored_scope=scope
        )
    else:
        ctx.reporter.phase("quantize-with-accuracy-control")
        validation_items = _validation_batches(ctx)
        validation = nncf.Dataset(validation_items)
        int8 = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            validation,
            validation_fn=_validate,
            max_drop=q.max_accuracy_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=subset,
            ignored_scope=scope,
        )
        metrics["maxAccuracyDrop"] = q.max_accuracy_drop
        metrics["validationSplit"] = "tuning"
        metrics["validationSize"] = len(validation_items)
    path = ctx.scratch / "model_int8.xml"
    ov.save_model(int8, path, compress_to_fp16=False)
    return StageOutput(
        files={"int8_ir": path}, companions=[path.with_suffix(".bin")], metrics=metrics
    )


def _calibration_images(ctx: StageContext) -> list[np.ndarray]:
    """calibrationSize images of the train split, preprocessed, one per item."""
    train = ctx.arrays.train
    n = min(ctx.spec.dataset.calibration_size, len(train))
    idx = np.random.default_rng(ctx.spec.dataset.seed).permutation(len(train))[:n]
    # One image per item: NNCF's subset_size counts samples only at batch 1.
    return [ctx.array_preprocess(train[int(i)][0][None]) for i in idx]


def _validation_batches(ctx: StageContext) -> list[tuple[np.ndarray, np.ndarray]]:
    """The tuning split, one image per item: accuracy control decides on it, never
    on the test split whose accuracy the benchmark reports."""
    return [
        (ctx.array_preprocess(images), labels) for images, labels in batches(ctx.arrays.tuning, 1)
    ]


def _validate(compiled: ov.CompiledModel, items: Iterable[Any]) -> float:
    return ov_accuracy(compiled, items)
