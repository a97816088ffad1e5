"""Which items each rank reads, in which order: DistributedSampler's semantics, deterministic.

Training loaders (shuffle=True) follow torch's DistributedSampler: a permutation seeded
by seed + epoch, padded by repeating its head to a multiple of world_size, rank r taking
every world_size-th item from r. Every rank then takes the same number of steps (DDP
needs that) and the shares are disjoint apart from those < world_size repeated items.
Evaluation loaders (shuffle=False) are padded with nothing: the shares are exactly
disjoint and cover the split, so summed counts give the exact accuracy.

With augmentation the sampler yields (index, epoch) keys instead of indices, so that a
worker process can seed each sample's random crop from (seed, epoch, index): the same
images come out whatever the number of loader workers, and a resumed epoch repeats.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

Key = int | tuple[int, int]


class ShareSampler(Sampler[Key]):
    """One rank's share of n items; a new order per epoch when shuffling.

    set_epoch(e) fixes the epoch (a resumed run or a DDP loop calls it each epoch);
    a caller that never calls it gets the next epoch on every pass, as a plain
    shuffling DataLoader would.
    """

    def __init__(
        self,
        n: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        keyed: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n = n
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.keyed = keyed
        self.epoch = 0
        self.start = 0
        self._epoch_fixed = False

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Fix the epoch; start > 0 skips that many of this rank's items in its next
        pass (a run resumed mid-epoch goes on without reading the batches it did)."""
        self.epoch = epoch
        self.start = start
        self._epoch_fixed = True

    def share(self, epoch: int) -> list[int]:
        """The indices this rank reads in an epoch, in order."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=gen)
            total = -(-self.n // self.world_size) * self.world_size
            if total > self.n:  # DistributedSampler's padding: repeat the head
                order = torch.cat([order, order.repeat(-(-total // self.n))[: total - self.n]])
        else:
            order = torch.arange(self.n)
        share: list[int] = order[self.rank :: self.world_size].tolist()
        return share

    def __len__(self) -> int:
        if self.shuffle:
            full = -(-self.n // self.world_size)
        else:
            full = len(range(self.rank, self.n, self.world_size))
        return max(0, full - self.start)

    def __iter__(self) -> Iterator[Key]:
        epoch, start = self.epoch, self.start
        self.start = 0  # a skip applies to one pass
        if not self._epoch_fixed:
            self.epoch += 1
        share = self.share(epoch)[start:]
        if self.keyed:
            return ((i, epoch) for i in share)
        return iter(share)
