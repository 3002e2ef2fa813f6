"""Samplers of `(epoch, index)` keys, so that the dataset knows the epoch even in persistent workers."""
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    """This rank's share of one global shuffled order of the training set, as DistributedSampler draws it.

    The permutation of all `num_samples` indices comes from a generator seeded with `seed + epoch` and is cut
    to a whole number of global batches (`global_batch` = world size x per-device batch x accumulation
    steps); rank r takes positions r::world_size. Optimizer step k therefore uses exactly global positions
    [k * global_batch, (k + 1) * global_batch), however the global batch is split into ranks and
    accumulation steps.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.num_samples = num_samples
        self.per_rank = num_samples // global_batch * global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use `epoch`'s order and skip the first `start` samples of this rank (to resume mid-epoch)."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f'cannot skip {start} of the {self.per_rank} samples of a rank')
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)[:self.per_rank * self.world_size]
        mine = order[self.rank::self.world_size][self.start:]
        return ((self.epoch, index) for index in mine.tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


class EvalSampler(Sampler):
    """Every index exactly once across ranks, in order: rank r takes r::world_size, with no padding."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((0, index) for index in self.indices)

    def __len__(self) -> int:
        return len(self.indices)
