"""Data-parallel fine-tuning: the torchrun command, and a 2-process gloo prune through `kubeslim run`."""

from __future__ import annotations

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.stages.distributed import current_rank, torchrun_command, world_size
from tests.pipeline_helpers import manifest


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
        "torch.distributed.run",
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
    import pytest

    with pytest.raises(ValueError, match="node_rank_expr"):
        torchrun_command(_spec(), [], 2, None, "10.0.0.1:29500", rdzv_backend="static")


def test_rank_from_torchrun_environment() -> None:
    rank = current_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (rank.rank, rank.world_size, rank.local_rank, rank.main) == (3, 4, 1, False)
    assert current_rank({}).main and not current_rank({}).distributed
