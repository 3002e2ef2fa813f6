"""Write a small real dataset for demos and tests: scikit-learn's 1,797 handwritten digits.

The 8x8 images (values 0..16) become 32x32 RGB PNGs, split 80/20 (stratified, fixed seed), in both layouts
at once: DIR/train/<digit>/, DIR/val/<digit>/, and DIR/train_list.txt, DIR/val_list.txt with paths relative
to the split folder. The same bytes on every run; re-running over DIR rewrites the same files.

    python tools/make_demo_dataset.py --out datasets/digits
"""
import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SIZE = 32
VAL_FRACTION = 0.2
SEED = 0


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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='folder to write the dataset into')
    args = parser.parse_args()
    num_train, num_val = make_demo_dataset(args.out)
    print(f'wrote {num_train} training and {num_val} validation images of 10 digits to {args.out}')


if __name__ == '__main__':
    main()
