"""Fixtures shared by the tests (pytest.ini puts the repository root on the path)."""
import os

import pytest


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """The digits demo dataset in both layouts, written once per session: copy it before changing it."""
    from tools.make_demo_dataset import make_demo_dataset  # here: scikit-learn is slow to import

    path = tmp_path_factory.mktemp('digits')
    make_demo_dataset(str(path))
    return path


@pytest.fixture(scope='session')
def tiny_data(demo_data, tmp_path_factory):
    """160 training and 33 validation digits (an odd count, for exact multi-rank evaluation), as list files."""
    root = tmp_path_factory.mktemp('tiny_digits')
    for split, step in (('train', 9), ('val', 11)):  # every 9th of 1437, every 11th of 360: all classes
        os.symlink(os.path.join(demo_data, split), root / split)
        with open(os.path.join(demo_data, f'{split}_list.txt')) as f:
            lines = f.readlines()[::step]
        assert len(lines) == {'train': 160, 'val': 33}[split]
        (root / f'{split}_list.txt').write_text(''.join(lines))
    return str(root)
