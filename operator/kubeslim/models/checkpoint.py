"""Resumable fine-tuning: one checkpoint object in the artifact store, replaced atomically.

It lives under the stage's fingerprint prefix, so only a run with the same
inputs resumes from it. Rank 0 writes it (with every rank's RNG states, which
it gathers); every rank reads it on start.
"""

from __future__ import annotations

import io
import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kubeslim.models import ddp
from kubeslim.store.base import ArtifactStore

FORMAT = 1


@dataclass(frozen=True)
class Position:
    """Where fine-tuning stands: the next action of the plan and the batches of it done."""

    action: int = 0
    batch: int = 0
    global_step: int = 0


def rng_state() -> dict[str, Any]:
    """This process's random number generators."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # As plain values, so the checkpoint loads with weights_only (no pickled objects).
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple[str, list[int], int, int, float]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)


class Checkpointer:
    """Saves and loads the fine-tuning state at `prefix/checkpoint.pt` in the store."""

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        fingerprint: str,
        every_steps: int | None,
        main: bool,
        resume: bool = True,
    ) -> None:
        self.store = store
        self.resume = resume
        self.key = f"{prefix}/checkpoint.pt"
        self.fingerprint = fingerprint
        self.every_steps = every_steps
        self.main = main

    def due(self, global_step: int, epoch_end: bool) -> bool:
        """Every N optimizer steps, or at each epoch's end when N is not set."""
        if self.every_steps is None:
            return epoch_end
        return not epoch_end and global_step % self.every_steps == 0

    def save(self, state: dict[str, Any], rank_state: dict[str, Any]) -> None:
        """Collective: every rank passes its own rank_state (RNG, loader); rank 0 writes."""
        ranks = ddp.gather(rank_state)
        if self.main:
            buf = io.BytesIO()
            torch.save(
                {**state, "format": FORMAT, "fingerprint": self.fingerprint, "ranks": ranks}, buf
            )
            self.store.write_bytes(self.key, buf.getvalue())
        ddp.barrier()

    def load(self, world_size: int) -> dict[str, Any] | None:
        """The stored state for this fingerprint and world size, or None."""
        if not self.resume or not self.store.exists(self.key):
            return None
        raw = self.store.read_bytes(self.key)
        # weights_only: a checkpoint is data; loading it must not run code.
        state: dict[str, Any] = torch.load(io.BytesIO(raw), weights_only=True)
        if state.get("format") != FORMAT or state.get("fingerprint") != self.fingerprint:
            return None
        if len(state.get("ranks", [])) != world_size:
            print(
                f"warning: {self.store.uri(self.key)} was written by "
                f"{len(state.get('ranks', []))} ranks, this run has {world_size}; starting afresh",
                file=sys.stderr,
            )
            return None
        return state

    def discard(self) -> None:
        """Drop the checkpoint once the stage's outputs no longer need it."""
        if self.main:
            self.store.delete(self.key)
