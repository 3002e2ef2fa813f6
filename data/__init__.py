"""Datasets, samplers and loaders for training and validation, built from the config."""
import logging
import os
import signal
from dataclasses import dataclass
from typing import Optional

import torch
from timm.data import Mixup
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from .datasets import BadImageTracker, DataError, ImageDataset, collate, find_samples
from .device import DeviceLoader, SeededErasing
from .samplers import EvalSampler, TrainSampler
from .transforms import build_transform

__all__ = ['BadImageTracker', 'DataError', 'DeviceLoader', 'LoadedData', 'build_loader']

logger = logging.getLogger(__name__)


@dataclass
class LoadedData:
    dataset_train: ImageDataset
    dataset_val: ImageDataset
    # batches of (images, labels, bad_paths), images and labels on the device; `.loader` is the DataLoader
    loader_train: DeviceLoader
    loader_val: DeviceLoader
    sampler_train: TrainSampler
    mixup_fn: Optional[Mixup]
    num_classes: int


def build_loader(config: CfgNode, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device('cpu')) -> LoadedData:
    """Datasets and loaders of DATA.DATA_PATH for this rank, feeding `device`; sets MODEL.NUM_CLASSES when it
    is 0. The workers yield uint8 images, made float, normalised and randomly erased on the device.

    Every problem with the data found here raises a DataError in the calling process.
    """
    samples_train, samples_val, num_classes = find_samples(
        config.DATA.DATA_PATH, config.DATA.FORMAT, config.DATA.CHECK_FILES)
    logger.info('%d training and %d validation images of %d classes',
                len(samples_train), len(samples_val), num_classes)
    _set_num_classes(config, num_classes)

    batch, accum = config.DATA.BATCH_SIZE, config.TRAIN.ACCUMULATION_STEPS
    global_batch = world_size * batch * accum
    if len(samples_train) < global_batch:
        raise DataError(f'{len(samples_train)} training images are fewer than one global batch of {global_batch} '
                        f'= {batch} per device (DATA.BATCH_SIZE) x {world_size} devices x {accum} accumulation steps '
                        '(TRAIN.ACCUMULATION_STEPS)')
    mixup_fn = _build_mixup(config, num_classes)
    erasing = SeededErasing(config.AUG.REPROB, config.AUG.REMODE, config.AUG.RECOUNT) if config.AUG.REPROB > 0 else None

    dataset_train = ImageDataset(samples_train, build_transform(config, is_train=True), config.SEED)
    dataset_val = ImageDataset(samples_val, build_transform(config, is_train=False), config.SEED)
    sampler_train = TrainSampler(len(dataset_train), global_batch, rank, world_size, config.SEED)
    num_workers = min(config.DATA.NUM_WORKERS, os.cpu_count())
    loader_options = dict(
        batch_size=config.DATA.BATCH_SIZE,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=config.DATA.PIN_MEMORY and device.type == 'cuda',
        persistent_workers=num_workers > 0,
        # A loader's own generator: each new iterator draws a base seed from it, and must not draw from the
        # global one, whose stream (drop path, mixup) a run resumed mid-epoch must continue exactly.
        generator=torch.Generator(),
        worker_init_fn=_leave_stopping_to_the_main_process,
    )
    loader_train = DataLoader(dataset_train, sampler=sampler_train, drop_last=True, **loader_options)
    sampler_val = EvalSampler(len(dataset_val), rank, world_size)
    loader_val = DataLoader(dataset_val, sampler=sampler_val, **loader_options)
    mean, std = config.DATA.MEAN, config.DATA.STD
    loader_train = DeviceLoader(loader_train, device, mean, std, erasing)
    loader_val = DeviceLoader(loader_val, device, mean, std)
    return LoadedData(dataset_train, dataset_val, loader_train, loader_val, sampler_train, mixup_fn,
                      num_classes)


def _leave_stopping_to_the_main_process(worker_id: int) -> None:
    """SLURM signals every process of a job step, loader workers too, and torch makes a worker die of SIGTERM:
    the main process would then fail in the step in flight instead of checkpointing (utils.StopRequest).
    Workers ignore SIGTERM and end when the main process closes its loaders."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _set_num_classes(config: CfgNode, num_classes: int) -> None:
    if config.MODEL.NUM_CLASSES == 0:
        frozen = config.is_frozen()
        config.defrost()
        config.MODEL.NUM_CLASSES = num_classes
        if frozen:
            config.freeze()
    elif config.MODEL.NUM_CLASSES != num_classes:
        raise DataError(f'MODEL.NUM_CLASSES is {config.MODEL.NUM_CLASSES}, but the data in '
                        f'{config.DATA.DATA_PATH} has {num_classes} classes')


def _build_mixup(config: CfgNode, num_classes: int) -> Optional[Mixup]:
    aug = config.AUG
    if aug.MIXUP <= 0 and aug.CUTMIX <= 0 and aug.CUTMIX_MINMAX is None:
        return None
    if config.DATA.BATCH_SIZE % 2:
        # timm's Mixup pairs each sample with the one mirrored in the batch.
        raise DataError(f'mixup and cutmix need an even DATA.BATCH_SIZE, not {config.DATA.BATCH_SIZE}')
    return Mixup(mixup_alpha=aug.MIXUP, cutmix_alpha=aug.CUTMIX, cutmix_minmax=aug.CUTMIX_MINMAX,
                 prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=num_classes)
