"""The generated CRD: committed file in sync, structural, and agreeing with the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeslim.api.crd import crd, render_crd
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "crds" / "modeloptimizations.kubeslim.dev.yaml"

# Keys a structural schema may not carry inside anyOf/allOf/oneOf/not.
FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == render_crd(), (
        "crds/ is stale: run `kubeslim crd > crds/modeloptimizations.kubeslim.dev.yaml`"
    )


def test_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == render_crd()


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        where = path or "<root>"
        assert "$ref" not in node and "$defs" not in node, where
        assert "title" not in node, where
        if "properties" in node:
            assert "additionalProperties" not in node, where
        assert node.get("additionalProperties") is not False, where
        assert node.get("x-kubernetes-preserve-unknown-fields", True) is True, where
        typed = "type" in node
        marked = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert typed or marked, f"{where} has no type"
        for junctor in ("anyOf", "allOf", "oneOf"):
            for branch in node.get(junctor, []):
                assert not FORBIDDEN_IN_JUNCTORS & set(branch), f"{where}.{junctor}"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{where}: {bound} must be a boolean"


def test_every_spec_and_status_field_is_described() -> None:
    schema = _schema()
    for part in ("spec", "status"):
        for path, node in _nodes(schema["properties"][part], part):
            if path.endswith(("[]", "{}")):
                continue
            assert node.get("description"), f"{path} has no description"


def test_cross_field_rules_are_cel() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    rules = {
        "model": spec["model"],
        "dataset": spec["dataset"],
        "pruning.target": spec["pruning"]["properties"]["target"],
    }
    (immutable,) = spec["artifacts"]["x-kubernetes-validations"]
    assert immutable["rule"] == "self.uri == oldSelf.uri"
    assert immutable["message"].startswith("artifacts.uri is immutable")
    for where, node in rules.items():
        validations = node.get("x-kubernetes-validations", [])
        assert len(validations) == 1, where
        assert validations[0]["rule"].count("has(") == 2, where
        assert validations[0]["message"].startswith("exactly one of"), where
    assert "metadata.name" in _schema()["x-kubernetes-validations"][0]["rule"]


def test_enums_bounds_and_free_form_maps() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert "digits" in spec["dataset"]["properties"]["name"]["enum"]
    target = spec["pruning"]["properties"]["target"]["properties"]["filterRate"]
    assert (target["minimum"], target["exclusiveMinimum"]) == (0.0, True)
    assert (target["maximum"], target["exclusiveMaximum"]) == (1.0, True)
    execution = spec["execution"]["properties"]
    assert execution["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert execution["tolerations"]["items"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }
    assert execution["nodeSelector"]["additionalProperties"] == {"type": "string"}
    assert spec["model"]["properties"]["entryPoint"]["pattern"].startswith("^")
    assert spec["model"]["properties"]["checkpoint"]["nullable"] is True
    assert "Defaults to 1000." in spec["model"]["properties"]["numClasses"]["description"]


def test_names_columns_and_subresource() -> None:
    body = crd()
    names = body["spec"]["names"]
    assert names["shortNames"] == ["mopt"] and names["categories"]
    version = body["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:6] == ["State", "Stage", "Speedup", "Size", "AccDrop", "Age"]
    status = _schema()["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        field = column["jsonPath"].split(".")
        if field[1] == "status":
            assert field[2] in status, column
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_the_api_server_persists_every_spec_default() -> None:
    """The stored spec is the effective spec: another operator version reads the
    values the resource was created with, not its own defaults."""
    spec = _schema()["properties"]["spec"]
    props = spec["properties"]
    assert props["pruning"]["default"] == ModelOptimizationSpec.model_validate(
        {"model": {"architecture": "resnet18"}, "dataset": {"name": "digits"}}
    ).pruning.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert props["pruning"]["properties"]["target"]["default"] == {"filterRate": 0.3}
    assert props["model"]["properties"]["numClasses"]["default"] == 1000
    assert props["execution"]["properties"]["ttlSecondsAfterFinished"]["default"] == 86400
    assert props["artifacts"]["default"] == {
        "uri": "./artifacts",
        "retention": {"keepFingerprints": 2, "keepShared": 16, "deleteOnResourceDeletion": False},
    }
    assert "default" not in props["model"]["properties"]["checkpoint"]  # None: no default
    for path, node in _nodes(_schema()["properties"]["status"], "status"):
        assert "default" not in node, f"{path}: status has no defaults"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    body = yaml.safe_load(render_crd())
    kubernetes_validate.validate(body, "1.33", strict=True)
