"""The Argo CD health check in examples/gitops, run by a real Lua on statuses the
planner makes (Argo CD runs the same Lua 5.x code with `obj` set)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeslim.api.manifest import parse_spec
from kubeslim.api.status import ModelOptimizationStatus, State
from kubeslim.planner import PlanInput, plan

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "examples" / "gitops" / "argocd-health.lua"
PATCH = ROOT / "examples" / "gitops" / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.kubeslim.dev_ModelOptimization"
SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "artifacts": {"uri": "s3://bucket/runs"},
}


def _lua_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"[{json.dumps(k)}]={_lua_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ",".join(_lua_value(v) for v in value) + "}"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.4") or shutil.which("lua")
    if lua is None:
        pytest.skip("needs a Lua interpreter (Debian: lua5.4)")
    program = (
        f"local function check(obj)\n{LUA.read_text()}\nend\n"
        f"local hs = check({_lua_value(obj)})\nio.write(hs.status, '\\t', hs.message)\n"
    )
    out = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, check=True)
    status, _, message = out.stdout.partition("\t")
    return status, message


def _object(spec: dict[str, Any], status: ModelOptimizationStatus | None, gen: int = 1) -> Any:
    body: dict[str, Any] = {"metadata": {"name": "m", "generation": gen}, "spec": spec}
    if status is not None:
        body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def _status(**edits: Any) -> ModelOptimizationStatus:
    spec = parse_spec({**SPEC, **edits})
    inp = PlanInput("m", "ns", 1, spec, ModelOptimizationStatus(), now="2026-11-30T00:00:00Z")
    return plan(inp).status


def test_the_cm_patch_carries_the_lua_file() -> None:
    data = yaml.safe_load(PATCH.read_text())["data"]
    assert data[KEY].strip() == LUA.read_text().strip()


def test_health_follows_the_state() -> None:
    assert health(_object(SPEC, None))[0] == "Progressing"
    running = _status()
    status, message = health(_object(SPEC, running))
    assert status == "Progressing" and message.startswith("running prune")
    assert health(_object(SPEC, running, gen=2)) == (
        "Progressing",
        "the operator has not planned the latest spec yet",
    )
    assert health(_object(SPEC, _status(suspend=True)))[0] == "Suspended"
    refused = _status(artifacts={"uri": "/local/path"})
    status, message = health(_object(SPEC, refused))
    assert status == "Degraded" and "spec.artifacts.uri" in message and "next: fix" in message
    done = running.model_copy(update={"state": State.succeeded, "summary": "succeeded: 3x"})
    assert health(_object(SPEC, done)) == ("Healthy", "succeeded: 3x")
