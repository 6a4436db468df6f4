"""An endless, seeded, shardable stream of training samples.

The stream is one global sequence of *positions* 0, 1, 2, ...; position ``p`` is
image ``perm_e[p % N]`` where ``e = p // N`` and ``perm_e`` is a permutation of the N
images drawn from (seed, e). There is no epoch boundary for a loop to trip over: the
iterator never ends.

The k-th batch drawn from ``start`` with per-process batch ``b`` on ``W`` processes consumes
positions ``start + [k*W*b, (k+1)*W*b)``; process ``r`` takes the slice
``start + k*W*b + r*b + [0, b)``. So the concatenation of the processes' batches, in rank
order, is exactly the batch one process would draw with batch ``W*b`` (what makes DDP
equal single-process training), and resuming needs only the position reached.

Each item is ``(index, position)``; the position seeds that sample's augmentation
(`sample_generator`), so augmentations are reproducible whatever the number of
DataLoader workers and across resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EndlessSampler", "sample_seed", "sample_generator", "epoch_permutation"]


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``num_samples`` images in pass ``epoch`` of the stream, (N,) int64."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def sample_seed(seed: int, position: int) -> int:
    """A 64-bit seed for the sample at ``position`` of the stream of run ``seed``."""
    low, high = np.random.SeedSequence([seed, position, 0x55D]).generate_state(2, dtype=np.uint32)
    return int(low) | (int(high) << 32)


def sample_generator(seed: int, position: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded for the sample at ``position``."""
    return torch.Generator().manual_seed(sample_seed(seed, position))


class EndlessSampler(Sampler):
    """Yields ``(dataset index, stream position)`` for one process, forever.

    Args:
        num_samples: dataset length N (> 0).
        batch_size: images per iteration for THIS process.
        seed: run seed.
        rank / world_size: this process among the data-parallel processes.
        start_position: stream position of the first batch (0, or the position saved by a
            checkpoint to resume).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_position: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_position = start_position
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            self._perm = epoch_permutation(self.num_samples, self.seed, epoch)
            self._epoch = epoch
        return int(self._perm[offset])

    def positions(self, batch: int) -> range:
        """Stream positions of this process's ``batch``-th batch (0 = the first after the start)."""
        start = self.start_position + (batch * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        batch = 0
        while True:
            for position in self.positions(batch):
                yield self.index_at(position), position
            batch += 1
