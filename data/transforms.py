"""Training augmentation (timm's, as Swin uses it) and the evaluation resize and crop, in the loader's workers.

The workers stop at the augmented uint8 image; conversion to float, normalisation and random erasing follow
on the device (data/device.py).
"""
import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from yacs.config import CfgNode

SMALL_IMAGE = 32  # at most this size (CIFAR-like), images are padded and cropped rather than resized


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, also for 0 bits: a black image, as Pillow gave before version 13 refused it."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


# RandAugment's 'inc1' posterize keeps 0 bits at magnitude 10, which 'rand-m9-mstd0.5' reaches every few
# hundred images: with Pillow 13 the run would stop with "bits must be between or equal to 1 and 8".
for _name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
    auto_augment.NAME_TO_OP[_name] = _posterize


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image's pixels as a uint8 (H, W, 3) tensor: PIL's own layout, so one copy; the device puts
    them into (3, H, W) while it converts them to float."""
    return torch.from_numpy(np.array(image))


def build_transform(config: CfgNode, is_train: bool, float_in_worker: bool = False) -> transforms.Compose:
    """The worker's transform, ending in a uint8 (H, W, 3) tensor.

    `float_in_worker` gives the former transform instead: a normalised float (3, H, W) tensor, randomly
    erased (training) by the worker's seeded generators. It is kept to measure the loader against
    (tools/benchmark.py data times both) and to check the device's results by.
    """
    size = config.DATA.IMG_SIZE
    if is_train:
        transform = create_transform(
            input_size=size,
            is_training=True,
            use_prefetcher=not float_in_worker,  # timm's name for: stop at the uint8 image
            color_jitter=config.AUG.COLOR_JITTER if config.AUG.COLOR_JITTER > 0 else None,
            hflip=config.AUG.HFLIP,
            auto_augment=None if config.AUG.AUTO_AUGMENT == 'none' else config.AUG.AUTO_AUGMENT,
            re_prob=config.AUG.REPROB,  # random erasing: taken by the float path only
            re_mode=config.AUG.REMODE,
            re_count=config.AUG.RECOUNT,
            interpolation=config.DATA.INTERPOLATION,
            mean=tuple(config.DATA.MEAN),
            std=tuple(config.DATA.STD),
        )
        if size <= SMALL_IMAGE:
            transform.transforms[0] = transforms.RandomCrop(size, padding=4)  # replaces random-resized-crop
        if not float_in_worker:
            transform.transforms[-1] = to_uint8_tensor  # in place of timm's (3, H, W) one, a copy more
        return transform
    # 'random' is a training-only choice; evaluation then resizes bilinearly, as Swin does.
    interpolation = 'bilinear' if config.DATA.INTERPOLATION == 'random' else config.DATA.INTERPOLATION
    interpolation = InterpolationMode(interpolation)
    if config.TEST.CROP and size > SMALL_IMAGE:
        resize = [transforms.Resize(int(size / config.TEST.CROP_PCT), interpolation=interpolation),
                  transforms.CenterCrop(size)]
    else:
        resize = [transforms.Resize((size, size), interpolation=interpolation)]
    if float_in_worker:
        to_tensor = [transforms.ToTensor(), transforms.Normalize(config.DATA.MEAN, config.DATA.STD)]
    else:
        to_tensor = [to_uint8_tensor]
    return transforms.Compose(resize + to_tensor)
