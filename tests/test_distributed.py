"""Data-parallel fine-tuning: the torchrun command; a 2-process gloo prune via `kubeslim run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.stages.distributed import (
    current_rank,
    local_command,
    torchrun_command,
    world_size,
)
from tests.pipeline_helpers import kubeslim, manifest, write


def _spec(**pruning: object) -> ModelOptimizationSpec:
    return ModelOptimizationSpec.model_validate(manifest(pruning=pruning)["spec"])


def test_torchrun_command_for_an_indexed_job_node() -> None:
    spec = _spec(gpu=True, distributed={"workers": 2, "gpusPerWorker": 4})
    cmd = torchrun_command(
        spec, ["stage", "prune"], 2, "$(JOB_COMPLETION_INDEX)", "job-0.svc:29500", python="py"
    )
    assert cmd == [
        "py",
        "-m",
        "kubeslim.stages.torchrun",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=job-0.svc:29500",
        "--max-restarts=0",
        "-m",
        "kubeslim",
        "stage",
        "prune",
    ]
    assert world_size(spec) == 8


def test_on_the_cpu_each_worker_is_one_process() -> None:
    spec = _spec(distributed={"workers": 3, "gpusPerWorker": 4})
    assert world_size(spec) == 3
    assert "--nproc-per-node=1" in torchrun_command(spec, [], 3, "0", "h:1")


def test_static_rendezvous_needs_the_node_rank() -> None:
    with pytest.raises(ValueError, match="node_rank_expr"):
        torchrun_command(_spec(), [], 2, None, "10.0.0.1:29500", rdzv_backend="static")


def test_rank_from_torchrun_environment() -> None:
    rank = current_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (rank.rank, rank.world_size, rank.local_rank, rank.main) == (3, 4, 1, False)
    assert current_rank({}).main and not current_rank({}).distributed


# --- a 2-process gloo prune through `kubeslim run` (the torchrun path) -------------------

# Both runs see 64 images per optimizer step: 1 process x 64, or 2 processes x 32 with
# the per-process rate halved, so the linear scaling rule gives both the same rate.
SINGLE = {"fineTune": {"epochs": 4, "batchSize": 64, "learningRate": 0.04}}
DOUBLE = {
    "fineTune": {"epochs": 4, "batchSize": 32, "learningRate": 0.02},
    "distributed": {"workers": 2, "backend": "gloo"},
}
# Two data orders of the same 1,437 digits end within a few points of each other
# (the 360-image test split: one image is 0.28 points).
NOISE = 0.05


def _prune_run(tmp_path: Path, name: str, pruning: dict[str, Any]) -> dict[str, Any]:
    doc = manifest(
        name,
        pruning=pruning,
        quantization={"enabled": False},
        benchmark={"enabled": False},
    )
    path = write(tmp_path / f"{name}.yaml", doc)
    out = kubeslim("run", str(path), "--artifacts", str(tmp_path / name))
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads((tmp_path / name / "prune" / "result.json").read_text())
    result["stderr"] = out.stderr
    return result


def test_two_gloo_workers_prune_like_one_at_the_same_global_batch(tmp_path: Path) -> None:
    one = _prune_run(tmp_path, "one", SINGLE)
    two = _prune_run(tmp_path, "two", DOUBLE)
    m1, m2 = one["metrics"], two["metrics"]
    assert (m1["worldSize"], m2["worldSize"]) == (1, 2)
    # Every rank masked the same channels and ended with the same weights (DDP).
    ranks = two["details"]["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert m2["masksIdenticalAcrossRanks"] is True
    assert m2["flopsReduction"] == pytest.approx(m1["flopsReduction"], abs=0.02)
    assert abs(m2["accuracyAfter"] - m1["accuracyAfter"]) <= NOISE, (m1, m2)
    assert m2["accuracyAfter"] > 0.5  # it learnt: 10 classes, chance is 0.1
    # Rank 0 alone wrote the model and the result.
    assert two["outputs"] == {"model": f"prune/{two['fingerprint'][:16]}/pruned.pt"}
    for m in (m1, m2):
        assert m["imagesPerSecondPerWorker"] > 0
        assert 0.0 <= m["loaderWaitShare"] < 1.0
        assert m["resumedFromStep"] is None
    # The convert stage read what rank 0 published.
    assert (tmp_path / "two" / "convert" / "result.json").exists()


def test_progress_line_shows_throughput_and_resume() -> None:
    from rich.progress import Progress

    from kubeslim.executors.local import _show

    progress = Progress()
    task = progress.add_task("", detail="")
    state = {
        "phase": "fine-tune",
        "epoch": 2,
        "epochs": 4,
        "resumedFrom": 40,
        "imagesPerSecondPerWorker": 1234.5,
        "loaderWaitShare": 0.12,
    }
    _show(progress, task, state)
    detail = progress.tasks[0].fields["detail"]
    assert "fine-tune epoch 2/4" in detail
    assert "(resumed at step 40)" in detail
    assert "1,234 img/s/worker loader wait 12%" in detail


def test_cluster_status_carries_throughput_from_the_progress_line() -> None:
    from kubeslim.handlers.observe import latest_progress

    log = (
        'KUBESLIM_PROGRESS {"phase":"fine-tune","step":3,"steps":9,'
        '"imagesPerSecondPerWorker":512.5,"loaderWaitShare":0.1,"resumedFrom":8}\n'
    )
    progress = latest_progress(log)
    assert progress is not None
    dumped = progress.model_dump(exclude_none=True)
    assert dumped["imagesPerSecondPerWorker"] == 512.5
    assert dumped["loaderWaitShare"] == 0.1
    assert dumped["resumedFrom"] == 8


def _replicated_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: wrap, cut channels physically, train a step, compare."""
    import os

    import torch
    import torch_pruning as tp
    from torch import nn

    from kubeslim.api.spec import DistributedBackend
    from kubeslim.models import ddp

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    ddp.init(DistributedBackend.gloo, cuda=False)
    torch.manual_seed(rank)  # different weights per rank: DDP starts them from rank 0's
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    replica = ddp.Replicated(model, torch.device("cpu"))
    first = replica.training_model()
    same = replica.training_model() is first
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 8, 8))
    graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[0, 1, 2]).prune()
    second = replica.training_model()
    second(torch.randn(4, 1, 8, 8) + rank).sum().backward()  # each rank its own data
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    every = ddp.gather((grads, [p.detach().clone() for p in model.parameters()]))
    if rank == 0:
        (g0, p0), (g1, p1) = every
        agree = all(torch.equal(a, b) for a, b in zip(g0 + p0, g1 + p1, strict=True))
        Path(out).write_text(json.dumps([same, second is not first, len(grads), agree]))
    ddp.shutdown()


def test_ddp_is_rebuilt_when_pruning_changes_the_shapes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from kubeslim.stages.distributed import free_port

    out = tmp_path / "out.json"
    mp.spawn(_replicated_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    same, rebuilt, n_grads, agree = json.loads(out.read_text())
    assert same and rebuilt  # reused while the shapes held, rewrapped after the cut
    assert n_grads == 6 and agree  # every parameter's gradient averaged over both ranks


@pytest.mark.parametrize(("worker_exit", "expected"), [(2, 2), (3, 1), (0, 0)])
def test_torchrun_keeps_a_workers_bad_input_exit_code(worker_exit: int, expected: int) -> None:
    """torchrun alone exits 1 for any failed worker; a Job then retries bad input."""
    spec = _spec(distributed={"workers": 2})
    cmd = local_command(spec, ["-c", f"import sys; sys.exit({worker_exit})"], sys.executable)
    # The workers: a plain interpreter exiting with the code (not `-m kubeslim`).
    at = cmd.index("kubeslim") - 1
    cmd[at : at + 2] = ["--no-python", sys.executable]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == expected, done.stderr[-2000:]
