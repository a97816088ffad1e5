"""Resumable fine-tuning: a prune killed mid-epoch resumes from its checkpoint and ends
where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from kubeslim.models.checkpoint import Checkpointer
from kubeslim.store.local import LocalStore
from tests.pipeline_helpers import kubeslim, manifest, write

# 2 gloo processes x 32 images: about 23 steps per epoch on digits, a checkpoint every 4.
PRUNING = {
    "fineTune": {
        "epochs": 2,
        "batchSize": 32,
        "learningRate": 0.02,
        "checkpointEverySteps": 4,
    },
    "distributed": {"workers": 2, "backend": "gloo"},
}


def _doc(name: str) -> dict[str, Any]:
    return manifest(
        name, pruning=PRUNING, quantization={"enabled": False}, benchmark={"enabled": False}
    )


def _result(root: Path) -> dict[str, Any]:
    return json.loads((root / "prune" / "result.json").read_text())


def _kill_launcher_after_first_checkpoint(path: Path, artifacts: Path) -> int:
    """Run `kubeslim run`; once a checkpoint exists, SIGKILL its torchrun launcher.

    torchrun starts its workers in sessions of their own: they must die with it, not
    train on as orphans (which would write the result of a run reported failed).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeslim", "run", str(path), "--artifacts", str(artifacts)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not list(artifacts.glob("prune/*/checkpoint.pt")):
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        launchers = _processes_using(artifacts)
        (launcher,) = [p for p in launchers if b"kubeslim.stages.torchrun" in p[1]]
        os.kill(launcher[0], signal.SIGKILL)
        assert proc.wait(timeout=600) != 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the run
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not _processes_using(artifacts), "workers outlived their launcher"
    assert not (artifacts / "prune" / "result.json").exists()
    state = torch.load(next(artifacts.glob("prune/*/checkpoint.pt")), weights_only=True)
    return int(state["position"]["global_step"])


def _processes_using(artifacts: Path) -> list[tuple[int, bytes]]:
    """(pid, command line) of the processes whose command line names these artifacts."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        if str(artifacts).encode() in cmdline:
            found.append((int(proc.name), cmdline))
    return found


def test_killed_mid_epoch_resumes_and_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    path = write(tmp_path / "resume.yaml", _doc("resume"))
    reference = tmp_path / "reference"
    out = kubeslim("run", str(path), "--artifacts", str(reference))
    assert out.returncode == 0, out.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    step = _kill_launcher_after_first_checkpoint(path, interrupted)
    assert step >= 4
    out = kubeslim("run", str(path), "--artifacts", str(interrupted))
    assert out.returncode == 0, out.stderr[-3000:]

    resumed, ref = _result(interrupted), _result(reference)
    assert resumed["metrics"]["resumedFromStep"] == step
    assert ref["metrics"]["resumedFromStep"] is None
    # Same masks on every rank and as without the interruption; the accuracy within noise.
    assert resumed["details"]["ranks"][0]["masks"] == ref["details"]["ranks"][0]["masks"]
    # Exactly where it would have been: same parameters, bit for bit (seeded, gloo, CPU).
    assert resumed["details"]["ranks"] == ref["details"]["ranks"]
    assert resumed["metrics"]["masksIdenticalAcrossRanks"] is True
    assert resumed["details"]["layers"] == ref["details"]["layers"]
    assert abs(resumed["metrics"]["accuracyAfter"] - ref["metrics"]["accuracyAfter"]) <= 0.02
    # The outputs replace the checkpoint once the stage is committed.
    assert not list(interrupted.glob("prune/*/checkpoint.pt"))


def test_a_checkpoint_of_other_inputs_or_another_world_size_is_ignored(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    saved = Checkpointer(store, "prune/abc", "fp-1", None, main=True)
    saved.save({"position": {"action": 1, "batch": 0, "global_step": 9}}, {"rng": None})
    assert saved.load(world_size=1) is not None
    assert Checkpointer(store, "prune/abc", "fp-2", None, main=True).load(1) is None
    assert saved.load(world_size=2) is None
    assert Checkpointer(store, "prune/abc", "fp-1", None, main=True, resume=False).load(1) is None
    assert saved.due(5, epoch_end=True) and not saved.due(5, epoch_end=False)
    every3 = Checkpointer(store, "prune/abc", "fp-1", 3, main=True)
    assert every3.due(6, epoch_end=False) and not every3.due(7, epoch_end=False)
