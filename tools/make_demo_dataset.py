"""Write small real datasets for demos, tests and loader benchmarks, from images scikit-learn ships.

Digits (the default): the 1,797 8x8 handwritten digits (values 0..16) become 32x32 RGB PNGs, split 80/20
(stratified, fixed seed), in both layouts at once: DIR/train/<digit>/, DIR/val/<digit>/, and
DIR/train_list.txt, DIR/val_list.txt with paths relative to the split folder.

Photos (--photos): ImageNet-like JPEGs (quality 90) of 500x375 or 375x500 pixels, random crops of the two
sample photographs (classes china and flower) at random scales, in class folders DIR/train/<class>/ and
DIR/val/<class>/; they give the data loader real decoding and augmentation work to measure.

Both are the same bytes on every run; re-running over DIR rewrites the same files.

    python tools/make_demo_dataset.py --out datasets/digits
    python tools/make_demo_dataset.py --photos --out datasets/photos [--num-train 400 --num-val 100]
"""
import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from sklearn.model_selection import train_test_split

SIZE = 32
VAL_FRACTION = 0.2
SEED = 0
PHOTO_SIZES = ((500, 375), (375, 500))  # ImageNet's commonest landscape and portrait sizes
PHOTO_MIN_SCALE = 0.3  # of the largest crop of the photo's aspect ratio that fits the source


def make_demo_dataset(out_dir):
    """Write the digits dataset into `out_dir`; returns the number of (train, val) images."""
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    train, val = train_test_split(np.arange(len(pixels)), test_size=VAL_FRACTION,
                                  stratify=digits.target, random_state=SEED)
    for split, indices in (('train', train), ('val', val)):
        lines = []
        # In the folder layout's order (class, then file name), so that both layouts number samples alike.
        for index in sorted(indices, key=lambda i: (digits.target[i], i)):
            label = int(digits.target[index])
            relative = f'{label}/digit_{index:04d}.png'
            path = os.path.join(out_dir, split, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image = Image.fromarray(pixels[index]).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
            image.convert('RGB').save(path)
            lines.append(f'{relative} {label}\n')
        with open(os.path.join(out_dir, f'{split}_list.txt'), 'w') as f:
            f.writelines(lines)
    return len(train), len(val)


def make_photo_dataset(out_dir, num_train=400, num_val=100):
    """Write `num_train` and `num_val` JPEG crops of the sample photographs into `out_dir`, in two classes;
    returns the number of (train, val) images."""
    sources = load_sample_images()
    names = [os.path.splitext(os.path.basename(path))[0] for path in sources.filenames]
    rng = np.random.default_rng(SEED)
    for split, count in (('train', num_train), ('val', num_val)):
        for i in range(count):
            label = i % len(names)
            pixels = sources.images[label]
            path = os.path.join(out_dir, split, names[label], f'{names[label]}_{i:04d}.jpg')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _random_crop(pixels, rng).save(path, quality=90)
    return num_train, num_val


def _random_crop(pixels, rng):
    """A crop of `pixels` (H, W, 3) at a random place, scale, orientation and flip, resized to a photo size."""
    width, height = PHOTO_SIZES[int(rng.random() < 0.25)]  # a quarter portrait
    fit = min(pixels.shape[0] / height, pixels.shape[1] / width)  # largest crop of this aspect ratio
    scale = fit * np.sqrt(rng.uniform(PHOTO_MIN_SCALE, 1.0))
    crop_h, crop_w = int(height * scale), int(width * scale)
    top = int(rng.integers(0, pixels.shape[0] - crop_h + 1))
    left = int(rng.integers(0, pixels.shape[1] - crop_w + 1))
    image = Image.fromarray(pixels[top:top + crop_h, left:left + crop_w])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='folder to write the dataset into')
    parser.add_argument('--photos', action='store_true',
                        help='JPEG photographs (two classes) instead of the digits, for loader benchmarks')
    parser.add_argument('--num-train', type=int, default=400, help='training photographs (default 400)')
    parser.add_argument('--num-val', type=int, default=100, help='validation photographs (default 100)')
    args = parser.parse_args()
    if args.photos:
        num_train, num_val = make_photo_dataset(args.out, args.num_train, args.num_val)
        print(f'wrote {num_train} training and {num_val} validation JPEG photographs to {args.out}')
    else:
        num_train, num_val = make_demo_dataset(args.out)
        print(f'wrote {num_train} training and {num_val} validation images of 10 digits to {args.out}')


if __name__ == '__main__':
    main()
