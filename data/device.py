"""Batches onto the device: the workers' uint8 images become normalised, randomly erased float images there.

On CUDA the next batch is copied from pinned memory and prepared on a side stream while the current one
trains, as timm's PrefetchLoader does; on other devices the same steps run on each batch in turn.
"""
import math
import random
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from .datasets import DataError

ERASE_MODES = ('const', 'rand', 'pixel')


class SeededErasing:
    """Random erasing (Zhong et al., 2017) of normalised images, with timm's parameters and order of draws,
    each image drawn from its own seed, so that batch composition, workers and resumes do not matter.

    With `probability`, an image gets 1 to `max_count` boxes (uniformly) of 2% to 1/3 of its area between
    them, of log-uniform aspect ratio in [0.3, 1 / 0.3] (up to 10 tries for a box that fits), filled with
    zeros ('const'), one normal draw per channel ('rand') or per pixel ('pixel'). The boxes come from a
    python generator, the fill from a torch generator on the images' device, both seeded with the seed.
    """

    MIN_AREA, MAX_AREA = 0.02, 1 / 3
    LOG_ASPECTS = (math.log(0.3), math.log(1 / 0.3))
    TRIES = 10

    def __init__(self, probability: float, mode: str = 'pixel', max_count: int = 1):
        if mode not in ERASE_MODES:
            raise DataError(f'random erasing mode (AUG.REMODE) is {mode!r}; it must be one of {ERASE_MODES}')
        if max_count < 1:
            raise DataError(f'random erasing count (AUG.RECOUNT) is {max_count}; it must be 1 or more')
        self.probability = probability
        self.mode = mode
        self.max_count = max_count

    def boxes(self, seed: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The (top, left, height, width) boxes to erase in an image of this seed and size."""
        rng = random.Random(seed)
        if rng.random() > self.probability:
            return []
        count = 1 if self.max_count == 1 else rng.randint(1, self.max_count)
        image_area = height * width
        found = []
        for _ in range(count):
            for _ in range(self.TRIES):
                area = rng.uniform(self.MIN_AREA, self.MAX_AREA) * image_area / count
                aspect = math.exp(rng.uniform(*self.LOG_ASPECTS))
                box_h, box_w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if box_h < height and box_w < width:
                    found.append((rng.randint(0, height - box_h), rng.randint(0, width - box_w), box_h, box_w))
                    break
        return found

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Erase in the (B, C, H, W) `images` in place, image i as `seeds[i]` draws."""
        _, channels, height, width = images.shape
        generator = torch.Generator(images.device)
        for image, seed in zip(images, seeds):
            boxes = self.boxes(seed, height, width)
            if not boxes:
                continue
            generator.manual_seed(seed)
            for top, left, box_h, box_w in boxes:
                box = image[:, top:top + box_h, left:left + box_w]
                if self.mode == 'const':
                    box.zero_()
                else:
                    fill_shape = (channels, box_h, box_w) if self.mode == 'pixel' else (channels, 1, 1)
                    box.copy_(torch.empty(fill_shape, dtype=images.dtype, device=images.device)
                              .normal_(generator=generator))
        return images


class DeviceLoader:
    """Iterates a DataLoader of `(uint8 images (B, H, W, 3), labels, erase seeds, bad paths)` batches as
    `(float images (B, 3, H, W), labels, bad paths)`, images and labels on `device`.

    The images are scaled to [0, 1] and normalised with `mean` and `std` by the operations that torchvision's
    ToTensor and Normalize apply (on the CPU the results are bitwise those of the transforms in a worker),
    then randomly erased by `erasing`, if given.
    """

    def __init__(self, loader: DataLoader, device: torch.device, mean: Sequence[float], std: Sequence[float],
                 erasing: SeededErasing | None = None):
        self.loader = loader
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, device=device).view(-1, 1, 1)
        self.erasing = erasing
        # one stream for the loader's life: the caching allocator keeps each stream's freed blocks apart
        self.stream = torch.cuda.Stream(device) if device.type == 'cuda' else None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        if self.stream is None:
            return (self._prepare(*batch) for batch in self.loader)
        return self._prefetched()

    def _prefetched(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Batch k + 1 is copied and prepared on the side stream while the caller's stream runs batch k."""
        ready = None
        for batch in self.loader:
            # The side stream may be handed blocks that the caller has freed: it must not write into them
            # before the caller's work queued so far has run.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                upcoming = self._prepare(*batch)
            if ready is not None:
                yield ready
            # the caller's next work waits for `upcoming`: recorded only now, after the caller has queued
            # its work on `ready`, so that that work does not wait too
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            ready = upcoming
        if ready is not None:
            yield ready

    def _prepare(self, images: torch.Tensor, labels: torch.Tensor, erase_seeds: list[int],
                 bad_paths: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        # to float and into (B, 3, H, W) in one copy, then ToTensor's scaling and Normalize's two steps
        images = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        images.div_(255).sub_(self.mean).div_(self.std)
        if self.erasing is not None:
            self.erasing(images, erase_seeds)
        return images, labels, bad_paths
