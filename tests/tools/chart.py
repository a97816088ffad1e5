"""Render the Helm chart with the real `helm` binary, for the chart and RBAC tests.

helm and kustomize are built from source by tests/tools/install-helm.sh and
install-kustomize.sh into ${KUBESLIM_TOOLS:-~/.cache/kubeslim/bin}. Without them the tests
skip on a developer's machine and fail in CI (CI=true), where .ci/run builds them first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeslim"
INSTALL_SCRIPT = ROOT / "tests" / "tools" / "install-helm.sh"


def tools_dir() -> Path:
    """Where install-helm.sh puts binaries."""
    default = Path.home() / ".cache" / "kubeslim" / "bin"
    return Path(os.environ.get("KUBESLIM_TOOLS", default))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool_binary(name: str, script: Path) -> str:
    """A tool built by `script` (or on PATH); skips the calling test, or fails it in CI."""
    cached = tools_dir() / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found:
        return found
    reason = f"{name} not found in {tools_dir()} or on PATH; build it with {script}"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def helm_binary() -> str:
    """The helm binary (tests/tools/install-helm.sh)."""
    return tool_binary("helm", INSTALL_SCRIPT)


def kustomize_binary() -> str:
    """The kustomize binary (tests/tools/install-kustomize.sh)."""
    return tool_binary("kustomize", INSTALL_SCRIPT.with_name("install-kustomize.sh"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its own cache directory; output captured."""
    proc = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM_CACHE_HOME": str(tools_dir() / "helm-home")},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def set_args(values: Mapping[str, Any]) -> list[str]:
    """--set-json flags, one per dotted key, so that lists and numbers keep their types."""
    import json

    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "kubeslim",
    namespace: str = "kubeslim-system",
    include_crds: bool = True,
) -> list[dict[str, Any]]:
    """`helm template` the chart and return its documents, CRDs first."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    proc = helm(*args, *set_args(values or {}))
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


Doc = dict[str, Any]


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> list[Doc]:
    """Documents of one kind (and name)."""
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    """The single document of a kind (and name)."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
