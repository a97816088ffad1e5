"""The spec models: defaults, validation messages, examples that must stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision

from kubeslim.api.manifest import load_manifest, parse_manifest, parse_spec
from kubeslim.api.spec import Architecture
from kubeslim.errors import SpecError
from kubeslim.stages.pipeline import enabled_stages, spec_fingerprints
from tests.pipeline_helpers import ROOT, manifest


def test_every_architecture_exists_in_torchvision() -> None:
    known = set(torchvision.models.list_models(module=torchvision.models))
    assert {a.value for a in Architecture} <= known


def test_examples_are_valid() -> None:
    for path in [
        ROOT / "examples" / "quickstart.yaml",
        *ROOT.glob("examples/**/modeloptimization*.yaml"),
    ]:
        assert load_manifest(path).metadata.name


def test_defaults_fill_an_almost_empty_spec() -> None:
    spec = parse_spec({"model": {"architecture": "resnet18"}, "dataset": {"name": "digits"}})
    assert spec.pruning.criterion.value == "group_geometric_median"  # the default since 73fc8ab
    assert spec.pruning.target.filter_rate == 0.3
    assert spec.pruning.fine_tune.nesterov is True
    assert enabled_stages(spec) == ["prune", "convert", "quantize", "benchmark"]


@pytest.mark.parametrize(
    ("patch", "field", "text"),
    [
        (
            {"model": {"architecture": "resnet18", "entryPoint": "a.b:c"}},
            "spec.model",
            "exactly one of architecture and entryPoint",
        ),
        ({"model": {"entryPoint": "not an entry point"}}, "spec.model", "package.module:function"),
        (
            {"dataset": {"name": "digits", "uri": "/data"}},
            "spec.dataset",
            "exactly one of name and uri",
        ),
        ({"pruning": {"target": {}}}, "spec.pruning.target", "exactly one of filterRate"),
        ({"pruning": {"criterion": "l3"}}, "spec.pruning.criterion", "expected one of"),
        (
            {"quantization": {"maxAccuracyDrop": 2}},
            "spec.quantization.maxAccuracyDrop",
            "less than or equal to 1",
        ),
        ({"benchmark": {"batchSizes": []}}, "spec.benchmark.batchSizes", "at least 1"),
    ],
)
def test_invalid_specs_name_the_field(patch: dict[str, object], field: str, text: str) -> None:
    base: dict[str, object] = {"model": {"architecture": "resnet18"}, "dataset": {"name": "digits"}}
    base.update(patch)
    with pytest.raises(SpecError) as err:
        parse_spec(base)
    assert str(err.value).startswith(field), str(err.value)
    assert text in str(err.value), str(err.value)


def test_manifest_header_is_checked(tmp_path: Path) -> None:
    doc = manifest()
    doc["apiVersion"] = "kubeslim.dev/v2"
    with pytest.raises(SpecError, match=r"apiVersion: expected 'kubeslim\.dev/v1alpha1'"):
        parse_manifest(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_manifest(bad)


def test_fingerprints_change_from_the_first_edited_stage_on() -> None:
    base = parse_manifest(manifest()).spec
    fps = spec_fingerprints(base)
    edited = base.model_copy(deep=True)
    edited.quantization.subset_size = 50
    after = spec_fingerprints(edited)
    assert after["prune"] == fps["prune"] and after["convert"] == fps["convert"]
    assert after["quantize"] != fps["quantize"] and after["benchmark"] != fps["benchmark"]
    moved = base.model_copy(deep=True)
    moved.artifacts.uri = "s3://elsewhere/run"  # where results go never changes them
    assert spec_fingerprints(moved) == fps
