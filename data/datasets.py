"""Finding the images of a data folder, reading them, and getting past the unreadable ones."""
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate, get_worker_info

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
EXPECTED_LAYOUT = (
    'Expected DATA.DATA_PATH to hold either class folders DATA_PATH/train/<class>/<image> and '
    'DATA_PATH/val/<class>/<image>, or the list files DATA_PATH/train_list.txt and DATA_PATH/val_list.txt '
    "with one 'relative/path label' per line (paths relative to DATA_PATH/train resp. DATA_PATH/val, "
    'or to DATA_PATH; labels are integers from 0).')

Sample = tuple[str, int]  # image path, label
ListEntry = tuple[str, int, int]  # image path, label, line number in its list file


class DataError(ValueError):
    """A problem with the data that the user has to fix; its message says what and where."""


def find_samples(data_path: str, data_format: str = 'auto',
                 check_files: bool = True) -> tuple[list[Sample], list[Sample], int]:
    """The `(path, label)` samples of the train and the val split under `data_path`, and the class count.

    `data_format` is 'folder', 'list', or 'auto': the list layout when DATA_PATH/train_list.txt exists.
    """
    if data_format not in ('auto', 'folder', 'list'):
        raise DataError(f'DATA.FORMAT is {data_format!r}; it must be auto, folder or list')
    if not data_path:
        raise DataError('DATA.DATA_PATH is not set. ' + EXPECTED_LAYOUT)
    if not os.path.isdir(data_path):
        raise DataError(f'DATA.DATA_PATH {data_path} is not a directory. ' + EXPECTED_LAYOUT)
    layout = data_format
    if layout == 'auto':
        layout = 'list' if os.path.exists(os.path.join(data_path, 'train_list.txt')) else 'folder'
    logger.info('reading the %s layout of %s (DATA.FORMAT %s)', layout, data_path, data_format)
    return _folder_samples(data_path) if layout == 'folder' else _list_samples(data_path, check_files)


# Hidden entries are left out: macOS, for one, leaves '._x.JPEG' files that are no images.
def _is_class_folder(entry: os.DirEntry) -> bool:
    return entry.is_dir() and not entry.name.startswith('.')


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith('.') and entry.name.lower().endswith(IMG_EXTENSIONS)


def _class_images(split_dir: str) -> dict[str, list[str]]:
    """Class folder name -> sorted paths of the images in it, in sorted class order."""
    if not os.path.isdir(split_dir):
        raise DataError(f'split folder {split_dir} does not exist. ' + EXPECTED_LAYOUT)
    classes = sorted(entry.name for entry in os.scandir(split_dir) if _is_class_folder(entry))
    if not classes:
        raise DataError(f'{split_dir} has no class folders. ' + EXPECTED_LAYOUT)
    images = {name: sorted(entry.path for entry in os.scandir(os.path.join(split_dir, name))
                           if _is_image(entry))
              for name in classes}
    empty = [os.path.join(split_dir, name) for name in classes if not images[name]]
    if empty:
        raise DataError(f'{len(empty)} class folders hold no images ({", ".join(IMG_EXTENSIONS)}): '
                        f'{", ".join(empty[:10])}. ' + EXPECTED_LAYOUT)
    return images


def _folder_samples(data_path: str) -> tuple[list[Sample], list[Sample], int]:
    train = _class_images(os.path.join(data_path, 'train'))
    val = _class_images(os.path.join(data_path, 'val'))
    # Labels follow the training classes, so a val folder lacking a class does not shift the others.
    unknown = sorted(set(val) - set(train))
    if unknown:
        raise DataError(f'{os.path.join(data_path, "val")} has class folders that '
                        f'{os.path.join(data_path, "train")} lacks: {", ".join(unknown[:10])}')
    label = {name: i for i, name in enumerate(train)}

    def samples(images: dict[str, list[str]]) -> list[Sample]:
        return [(path, label[name]) for name, paths in images.items() for path in paths]

    return samples(train), samples(val), len(train)


def _list_samples(data_path: str, check_files: bool) -> tuple[list[Sample], list[Sample], int]:
    train_file, train = _read_list(data_path, 'train', check_files)
    val_file, val = _read_list(data_path, 'val', check_files)
    num_classes = max(label for _, label, _ in train) + 1
    for path, label, line_no in val:
        if label >= num_classes:
            raise DataError(f'{val_file}:{line_no}: label {label}, but {train_file} has labels '
                            f'0..{num_classes - 1}')

    def samples(entries: list[ListEntry]) -> list[Sample]:
        return [(path, label) for path, label, _ in entries]

    return samples(train), samples(val), num_classes


def _read_list(data_path: str, split: str, check_files: bool) -> tuple[str, list[ListEntry]]:
    """The list file DATA_PATH/<split>_list.txt and its `(path, label, line number)` entries."""
    list_file = os.path.join(data_path, f'{split}_list.txt')
    if not os.path.isfile(list_file):
        raise DataError(f'list file {list_file} does not exist. ' + EXPECTED_LAYOUT)
    entries = []
    with open(list_file) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                problem = f'expected 2 columns (relative/path label), found {len(fields)}'
            elif not (fields[1].isascii() and fields[1].isdigit()):
                problem = f'label {fields[1]!r} is not an integer >= 0'
            else:
                entries.append((fields[0], int(fields[1]), line_no))
                continue
            raise DataError(f'{list_file}:{line_no}: {problem}: {line.strip()!r}')
    if not entries:
        raise DataError(f'list file {list_file} lists no images. ' + EXPECTED_LAYOUT)
    base = _list_base(data_path, split, list_file, entries[0])
    entries = [(os.path.join(base, path), label, line_no) for path, label, line_no in entries]
    if check_files:
        _check_exist(list_file, entries)
    return list_file, entries


def _list_base(data_path: str, split: str, list_file: str, first_entry: ListEntry) -> str:
    """The folder the list's paths are relative to: DATA_PATH/<split> or DATA_PATH, by its first path."""
    path, _, line_no = first_entry
    bases = (os.path.join(data_path, split), data_path)
    for base in bases:
        if os.path.isfile(os.path.join(base, path)):
            return base
    raise DataError(f'{list_file}:{line_no}: {path} is in neither {bases[0]} nor {bases[1]}. '
                    + EXPECTED_LAYOUT)


def _check_exist(list_file: str, entries: list[ListEntry]) -> None:
    """Raise a DataError naming the listed images that do not exist.

    One directory listing per folder rather than one stat per image: much faster for ImageNet's 1.28M.
    """
    started = time.perf_counter()
    listings = {}
    missing = []
    for path, _, line_no in entries:
        folder, name = os.path.split(path)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name not in listings[folder]:
            missing.append(f'{list_file}:{line_no}: {path}')
    logger.info('checked that the %d images of %s exist in %.1f s (DATA.CHECK_FILES False skips this)',
                len(entries), list_file, time.perf_counter() - started)
    if missing:
        raise DataError(f'{len(missing)} listed images do not exist:\n' + '\n'.join(missing[:20])
                        + ('\n...' if len(missing) > 20 else ''))


def load_rgb(path: str) -> Image.Image:
    """The image at `path` in RGB: grayscale, CMYK and palette images are converted, alpha is dropped."""
    with Image.open(path) as image:
        if image.mode == 'RGB':  # most photographs: decoded as they are, without convert's copy
            image.load()
            return image
        return image.convert('RGB')


def sample_seeds(seed, epoch, index):
    """The two 64-bit seeds of a sample: the first for its augmentation in the worker, the second for its
    random erasing on the device. Both depend on (seed, epoch, index) alone."""
    words = np.random.SeedSequence((seed, epoch, index)).generate_state(2, np.uint64)
    return int(words[0]), int(words[1])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python's, numpy's and torch's CPU generators with `seed`.

    In a worker process the generators are the worker's own; in the main process (no workers) their state
    is restored afterwards, so that data loading does not move the training loop's random stream.
    """
    in_main_process = get_worker_info() is None
    if in_main_process:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)  # numpy takes 32-bit seeds
    torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which would also reseed CUDA
    try:
        yield
    finally:
        if in_main_process:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class ImageDataset(Dataset):
    """`(path, label)` samples as `(image, label, erase_seed, bad_paths)`, indexed by `(epoch, index)` keys.

    The augmentation of a sample depends only on (seed, epoch, index): not on workers, ranks or resumes;
    so does its random erasing on the device, drawn from `erase_seed`. An image that cannot be read is
    replaced by the next readable one; `bad_paths` names those skipped.
    """

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], Tensor], seed: int = 0):
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, tuple[str, ...]]:
        epoch, index = key
        augment_seed, erase_seed = sample_seeds(self.seed, epoch, index)
        bad_paths = []
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                image = load_rgb(path)
            except Exception:  # whatever is wrong with the file, a long run goes on without it
                bad_paths.append(path)
                continue
            with seeded_rngs(augment_seed):
                return self.transform(image), label, erase_seed, tuple(bad_paths)
        raise DataError(f'none of the {len(self.samples)} images could be read, e.g. {bad_paths[0]}')


def collate(batch: list[tuple[Tensor, int, int, tuple[str, ...]]]
            ) -> tuple[Tensor, Tensor, list[int], list[str]]:
    """Batch `(image, label, erase_seed, bad_paths)` samples into `(images, labels, erase_seeds, bad_paths)`,
    the last two flat lists."""
    images, labels, erase_seeds, bad_paths = zip(*batch)
    # default_collate stacks a worker's images straight into shared memory: no copy on the way out
    return (default_collate(images), torch.tensor(labels), list(erase_seeds),
            [path for paths in bad_paths for path in paths])


class BadImageTracker:
    """The unreadable images of one epoch: warns once for each, and stops the run past `max_bad` of them."""

    def __init__(self, max_bad: int, log: logging.Logger = logger):
        self.max_bad = max_bad
        self.log = log
        self.paths = {}  # an ordered set

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.paths:
                self.paths[path] = None
                self.log.warning('unreadable image, replaced by another sample: %s', path)
        if len(self.paths) > self.max_bad:
            raise DataError(f'{len(self.paths)} unreadable images in this epoch, more than '
                            f'DATA.MAX_BAD_IMAGES = {self.max_bad}:\n' + '\n'.join(self.paths))

    def end_epoch(self, epoch: int) -> int:
        """Log and return the epoch's count of unreadable images, and start counting the next epoch."""
        count = len(self.paths)
        self.log.info('epoch %d: %d unreadable images replaced', epoch, count)
        self.paths.clear()
        return count
