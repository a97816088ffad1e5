"""How `kubeslim stage` fails and what it leaves: the contract a Job relies on.

Exit 2 only for bad input (the Job fails at once), 75 for a service that did
not answer and 1 for the rest (both retried with the Job's back-off); one line
naming the field; a termination message under the kubelet's limit whatever the
artifacts root; results that any reader resolves against its own root; and a
prompt exit on SIGTERM even as PID 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeslim.api.manifest import parse_spec
from kubeslim.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, SpecError
from kubeslim.progress import Reporter
from kubeslim.stages import runner
from kubeslim.stages.context import StageContext, StageOutput
from kubeslim.stages.result import StageResult
from kubeslim.store import open_store

SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
}


def _manifest(tmp_path: Path, **edits: Any) -> Path:
    path = tmp_path / "m.yaml"
    body = {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "m"},
        "spec": {**SPEC, **edits},
    }
    path.write_text(yaml.safe_dump(body))
    return path


def _stage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeslim", "stage", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("edits", "line"),
    [
        (
            {"model": {**SPEC["model"], "checkpoint": "/nonexistent/model.pt"}},
            "error: spec.model.checkpoint: no such file: /nonexistent/model.pt",
        ),
        ({"dataset": {"uri": "/nonexistent/images"}}, "error: spec.dataset.uri: no such directory"),
    ],
)
def test_a_path_that_does_not_exist_is_bad_input(
    tmp_path: Path, edits: dict[str, Any], line: str
) -> None:
    result_file = tmp_path / "termination-log"
    done = _stage(
        "prune",
        "--manifest",
        str(_manifest(tmp_path, **edits)),
        "--artifacts",
        str(tmp_path / "a"),
        "--result-file",
        str(result_file),
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[0]]
    assert done.stderr.startswith(line) and "Traceback" not in done.stderr
    message = json.loads(result_file.read_text())
    assert message["exitCode"] == EXIT_BAD_INPUT and message["field"] in line
    assert not (tmp_path / "a" / "prune" / "result.json").exists()


def test_kubeslim_run_says_the_same_in_one_line(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, model={**SPEC["model"], "checkpoint": str(tmp_path / "no.pt")})
    done = subprocess.run(
        [sys.executable, "-m", "kubeslim", "run", str(manifest), "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == EXIT_BAD_INPUT
    assert f"error: spec.model.checkpoint: no such file: {tmp_path / 'no.pt'}" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_store_is_transient_not_bad_input(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_MAX_ATTEMPTS": "1",
    }
    done = _stage(
        "prune",
        "--manifest",
        str(_manifest(tmp_path)),
        "--artifacts",
        "s3://bucket/runs",
        env=env,
    )
    assert done.returncode == EXIT_TRANSIENT, done.stderr
    assert "cannot reach the S3 endpoint" in done.stderr


def _fake_stage(ctx: StageContext) -> StageOutput:
    out = ctx.scratch / "model.xml"
    out.write_text("<net/>")
    (ctx.scratch / "model.bin").write_bytes(b"\0" * 8)
    metrics = {f"m{i}": float(i) for i in range(50)}
    return StageOutput(files={"ir": out}, metrics=metrics, companions=[ctx.scratch / "model.bin"])


def test_results_are_relative_and_read_from_any_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "stage_function", lambda name: _fake_stage)
    deep = tmp_path / "/".join(["a-rather-long-folder-name-for-artifacts"] * 60)
    spec = parse_spec({**SPEC, "pruning": {"enabled": False}})
    result = runner.run_stage("convert", spec, open_store(str(deep)), Reporter("none"))
    assert all(not v.startswith(("/", "file:")) for v in result.outputs.values())
    assert result.result_uri == "convert/result.json"
    # The root is 2.4 kB long, yet the termination message stays far below 4096 bytes.
    assert len(str(deep)) > 2400 and len(result.compact().encode()) < 1000
    # Moved to another mount point, the run reads as before.
    moved = tmp_path / "elsewhere"
    shutil.copytree(deep, moved)
    ctx = StageContext(spec, open_store(str(moved)), Reporter("none"), tmp_path / "scratch")
    assert ctx.fetch_output("convert", "ir").read_text() == "<net/>"
    again = runner.run_stage("convert", spec, open_store(str(moved)), Reporter("none"))
    assert again.reused


def test_the_compact_result_always_fits_the_termination_message() -> None:
    huge = StageResult(
        stage="benchmark",
        fingerprint="f" * 64,
        outputs={f"o{i}": "x" * 200 for i in range(40)},
        metrics={f"m{i}": "y" * 100 for i in range(100)},
    )
    assert len(huge.compact().encode()) <= 3500


def test_an_older_stage_ignores_spec_fields_a_newer_operator_sent() -> None:
    raw = {**SPEC, "futureField": {"x": 1}, "pruning": {"futureKnob": 3}}
    spec, ignored = runner.parse_newer_spec(raw)
    assert spec.pruning.enabled
    assert sorted(ignored) == ["spec.futureField", "spec.pruning.futureKnob"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_sigterm_ends_the_stage_at_once_even_as_pid_1() -> None:
    # In a container the stage is PID 1: the kernel drops signals it has no handler for.
    code = (
        "from kubeslim.stages.runner import stop_on_sigterm\n"
        "import time\nstop_on_sigterm()\nprint('ready', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None, "SIGTERM was ignored"
        assert "error: terminated (SIGTERM)" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_checkpoint_bytes_replaced_mid_run_are_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "stage_function", lambda name: _fake_stage)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")
    spec = parse_spec({**SPEC, "model": {**SPEC["model"], "checkpoint": str(checkpoint)}})
    store = open_store(str(tmp_path / "a"))
    pruned = runner.run_stage("prune", spec, store, Reporter("none"))
    assert pruned.checkpoint_digest is not None
    checkpoint.write_bytes(b"weights v2")  # same URI, other bytes
    with pytest.raises(SpecError, match="its content changed since stage prune ran"):
        runner.run_stage("convert", spec, store, Reporter("none"))
