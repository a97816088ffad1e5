"""How a stage runs on many processes: the torchrun command and this process's rank.

Pure (no torch import): the operator builds the prune Job's command from
torchrun_command too, and its image has no torch. The process group itself is
set up in kubeslim.models.ddp.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubeslim.api.spec import ModelOptimizationSpec, PruningSpec


@dataclass(frozen=True)
class Rank:
    """This process's place in the job, as torchrun's environment says."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only one that reports progress and writes artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_rank(env: Mapping[str, str] | None = None) -> Rank:
    """RANK, WORLD_SIZE and LOCAL_RANK from torchrun; a single process without them."""
    env = os.environ if env is None else env
    return Rank(
        rank=int(env.get("RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )


def procs_per_worker(pruning: PruningSpec) -> int:
    """One process per GPU when the prune stage gets GPUs, else one per worker."""
    return pruning.distributed.gpus_per_worker if pruning.gpu else 1


def world_size(spec: ModelOptimizationSpec) -> int:
    """Processes in the whole job."""
    return spec.pruning.distributed.workers * procs_per_worker(spec.pruning)


def torchrun_command(
    spec: ModelOptimizationSpec,
    stage_argv: Sequence[str],
    nnodes: int,
    node_rank_expr: str | None,
    rdzv_endpoint: str,
    python: str = "python",
    rdzv_backend: str = "c10d",
    nproc_per_node: int | None = None,
) -> list[str]:
    """`python -m kubeslim.stages.torchrun ... -m kubeslim STAGE_ARGV` for one node
    (torchrun itself, but a worker's exit 2, bad input, stays 2).

    nnodes: 1 locally, spec.pruning.distributed.workers on a cluster (one Pod each).
    node_rank_expr: this node's rank as the command should carry it, e.g.
    "$(JOB_COMPLETION_INDEX)" (the kubelet expands it); required by the static
    rendezvous, which a Service IP that no Pod owns as its hostname needs.
    nproc_per_node: processes on this node; procs_per_worker(spec.pruning) unless given.
    """
    if rdzv_backend not in ("c10d", "static"):
        raise ValueError(f"rdzv_backend: expected 'c10d' or 'static', got {rdzv_backend!r}")
    if rdzv_backend == "static" and node_rank_expr is None:
        raise ValueError("node_rank_expr: the static rendezvous needs each node's rank")
    cmd = [
        python,
        "-m",
        "kubeslim.stages.torchrun",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node or procs_per_worker(spec.pruning)}",
    ]
    if node_rank_expr is not None:
        cmd.append(f"--node-rank={node_rank_expr}")
    cmd += [
        f"--rdzv-backend={rdzv_backend}",
        f"--rdzv-endpoint={rdzv_endpoint}",
        # A failed worker fails the whole group at once; the restart (a new Pod or
        # a rerun) resumes from the stage's checkpoint instead.
        "--max-restarts=0",
        "-m",
        "kubeslim",
        *stage_argv,
    ]
    return cmd


def local_command(spec: ModelOptimizationSpec, stage_argv: Sequence[str], python: str) -> list[str]:
    """The torchrun command for `kubeslim run`: every process of the job on this machine."""
    endpoint = f"127.0.0.1:{free_port()}"
    return torchrun_command(
        spec, stage_argv, 1, None, endpoint, python=python, nproc_per_node=world_size(spec)
    )


def free_port() -> int:
    """A TCP port nothing listens on now, for the local rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
