"""Three disjoint splits: train (fine-tuning, calibration), tuning (accuracy control,
selection) and test (reported figures only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kubeslim.api.spec import DatasetSpec, ModelOptimizationSpec
from kubeslim.data.datasets import ImageTensorDataset, load_splits
from kubeslim.data.splits import plan_splits
from kubeslim.errors import SpecError
from kubeslim.progress import Reporter
from kubeslim.stages import prune as prune_stage
from kubeslim.stages import quantize as quantize_stage
from kubeslim.stages.context import StageContext
from kubeslim.store import open_store
from tests.pipeline_helpers import DIGITS_SPEC


def _digits(**dataset: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({**DIGITS_SPEC["dataset"], **dataset})


def test_plan_holds_tuning_out_of_train_and_test_out_of_both() -> None:
    spec = _digits(tuningFraction=0.1, validationFraction=0.2, seed=3)
    plan = plan_splits(1000, None, spec)  # no test part: the test split is held out too
    train, tuning, test = (set(a.tolist()) for a in (plan.train, plan.tuning, plan.test))
    assert not train & tuning and not train & test and not tuning & test
    assert train | tuning | test == set(range(1000))
    assert (len(test), len(tuning), len(train)) == (200, 80, 720)
    again = plan_splits(1000, None, spec)
    for name in ("train", "tuning", "test"):
        assert np.array_equal(getattr(again, name), getattr(plan, name))
    other = plan_splits(1000, None, _digits(tuningFraction=0.1, seed=4))
    assert not np.array_equal(other.tuning, plan.tuning)


def test_plan_keeps_the_datasets_own_test_split_and_limits_before_holding_out() -> None:
    spec = _digits(trainLimit=500, validationLimit=300, tuningFraction=0.2)
    plan = plan_splits(6000, 1000, spec)
    assert not plan.shared
    assert not set(plan.train.tolist()) & set(plan.tuning.tolist())
    assert (len(plan.train), len(plan.tuning), len(plan.test)) == (400, 100, 300)
    assert plan.test.max() < 1000  # indices into the test part


def test_plan_refuses_data_too_small_for_three_splits() -> None:
    with pytest.raises(SpecError, match="too small for three splits"):
        plan_splits(1, 5, _digits())


def test_loaded_splits_are_disjoint_images_of_the_right_parts() -> None:
    splits = load_splits(_digits(tuningFraction=0.1))
    sizes = [len(s) for s in (splits.train, splits.tuning, splits.test)]  # type: ignore[arg-type]
    assert sizes == [1294, 144, 359]  # 1,797 digits: 20% test, then 10% of the rest
    seen: dict[bytes, str] = {}
    clashes = 0
    for name, split in (("train", splits.train), ("tuning", splits.tuning), ("test", splits.test)):
        assert isinstance(split, ImageTensorDataset)
        for image in split.images:
            key = image.numpy().tobytes()
            clashes += key in seen and seen[key] != name
            seen.setdefault(key, name)
    # digits holds a few identical images; distinct draws never coincide beyond those
    assert clashes <= 3


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> StageContext:
    tmp = tmp_path_factory.mktemp("splits")
    spec = ModelOptimizationSpec.model_validate(DIGITS_SPEC)
    return StageContext(spec, open_store(str(tmp / "artifacts")), Reporter("none"), tmp)


def _rows(batches: list[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(b[0] if isinstance(b, tuple) else b) for b in batches])


def _preprocessed(ctx: StageContext, split: Any) -> np.ndarray:
    return ctx.preprocess(split.images).numpy()


def test_accuracy_control_validates_on_the_tuning_split_not_the_test_split(
    ctx: StageContext,
) -> None:
    items = quantize_stage._validation_batches(ctx)
    got = _rows(items)
    labels = np.concatenate([y for _, y in items])
    np.testing.assert_allclose(got, _preprocessed(ctx, ctx.splits.tuning), atol=1e-5)
    np.testing.assert_array_equal(labels, ctx.splits.tuning.labels.numpy())  # type: ignore[attr-defined]
    assert len(got) != len(ctx.splits.test)  # type: ignore[arg-type]


def test_calibration_draws_from_the_train_split(ctx: StageContext) -> None:
    calib = _rows(quantize_stage._calibration_images(ctx))
    train = _preprocessed(ctx, ctx.splits.train).reshape(len(ctx.splits.train), -1)  # type: ignore[arg-type]
    assert len(calib) == ctx.spec.dataset.calibration_size
    nearest = [np.abs(train - row.reshape(1, -1)).max(axis=1).min() for row in calib]
    assert max(nearest) < 1e-5


def test_fine_tuning_sees_only_the_train_split(
    ctx: StageContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    class Stop(Exception):
        pass

    def capture(
        self: Any, model: Any, example: Any, num_classes: int, data: Any, *rest: Any
    ) -> Any:
        seen.append(data.train.dataset)
        raise Stop

    monkeypatch.setattr(prune_stage.Pruner, "run", capture)
    with pytest.raises(Stop):
        prune_stage.prune(ctx)
    assert seen == [ctx.splits.train]


def test_benchmark_reports_accuracy_on_the_test_split(ctx: StageContext) -> None:
    from kubeslim.stages.benchmark import _split_arrays

    paths = _split_arrays(ctx, ctx.splits.test, "test")
    np.testing.assert_allclose(np.load(paths["x"]), _preprocessed(ctx, ctx.splits.test), atol=1e-5)
