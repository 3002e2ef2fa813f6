import hashlib
import itertools
import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import AugmentOp
from timm.data.random_erasing import RandomErasing
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms

from config import get_default_config
from data import BadImageTracker, DataError, DeviceLoader, build_loader
from data.datasets import collate, load_rgb
from data.samplers import EvalSampler, TrainSampler
from data.transforms import build_transform
from tools.make_demo_dataset import make_demo_dataset, make_photo_dataset

NUM_TRAIN, NUM_VAL = 1437, 360  # the digits, split 80/20
TRAIN_IMAGE, VAL_IMAGE = '0/digit_0000.png', '0/digit_0078.png'  # an image of each split
LAYOUT_HINT = 'DATA_PATH/train/<class>/<image>'  # part of every message about a wrong layout


def make_config(data_path, *opts):
    """Settings for the 32x32 digits, then `opts` (KEY, VALUE, ...)."""
    config = get_default_config()
    config.defrost()
    config.DATA.DATA_PATH = str(data_path)
    config.DATA.IMG_SIZE = 32
    config.DATA.BATCH_SIZE = 32
    config.DATA.NUM_WORKERS = 0
    config.AUG.HFLIP = 0.0  # a flip changes a digit
    config.merge_from_list(list(opts))
    config.freeze()
    return config


@pytest.fixture
def data_copy(demo_data, tmp_path):
    return shutil.copytree(demo_data, tmp_path / 'digits')


def file_hashes(root):
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob('*')) if path.is_file()}


def train_one_epoch(config, epoch=0):
    """One epoch of a linear classifier, driven as the engine drives it: the data, labels seen, bad count."""
    data = build_loader(config)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, data.num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = BadImageTracker(config.DATA.MAX_BAD_IMAGES)
    data.sampler_train.set_epoch(epoch)
    labels = []
    for images, targets, bad_paths in data.loader_train:
        tracker.add(bad_paths)
        labels.append(targets)
        if data.mixup_fn is not None:
            images, targets = data.mixup_fn(images, targets)
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return data, torch.cat(labels), tracker.end_epoch(epoch)


def relative_samples(dataset, root):
    return [(os.path.relpath(path, root), label) for path, label in dataset.samples]


# --- the demo dataset ---

def test_demo_dataset_is_deterministic_and_idempotent(demo_data, tmp_path):
    assert make_demo_dataset(str(tmp_path)) == (NUM_TRAIN, NUM_VAL)
    assert file_hashes(tmp_path) == file_hashes(demo_data)
    make_demo_dataset(str(tmp_path))
    assert file_hashes(tmp_path) == file_hashes(demo_data)
    assert sorted(os.listdir(tmp_path / 'train')) == [str(digit) for digit in range(10)]
    with Image.open(tmp_path / 'train' / '3' / 'digit_0003.png') as image:
        assert (image.mode, image.size) == ('RGB', (32, 32))
    assert (tmp_path / 'train_list.txt').read_text().splitlines()[0] == '0/digit_0000.png 0'


def test_photo_dataset_is_deterministic_jpegs_of_photo_sizes(tmp_path):
    assert make_photo_dataset(str(tmp_path / 'a'), num_train=6, num_val=2) == (6, 2)
    make_photo_dataset(str(tmp_path / 'b'), num_train=6, num_val=2)
    assert file_hashes(tmp_path / 'a') == file_hashes(tmp_path / 'b')
    paths = sorted((tmp_path / 'a').rglob('*.jpg'))
    assert sorted({path.relative_to(tmp_path / 'a').parts[:2] for path in paths}) == [
        ('train', 'china'), ('train', 'flower'), ('val', 'china'), ('val', 'flower')]
    assert len(paths) == 8
    for path in paths:
        with Image.open(path) as image:
            assert image.format == 'JPEG' and image.mode == 'RGB' and image.size in ((500, 375), (375, 500))


def test_loader_benchmark_measures_both_paths(tmp_path, capsys):
    from tools.benchmark import data_main  # here: it imports the models

    make_photo_dataset(str(tmp_path / 'photos'), num_train=8, num_val=2)
    assert data_main([str(tmp_path / 'photos'), '--batch-size', '4', '--images', '8', '--runs', '2',
                      '--json', str(tmp_path / 'speed.json')]) == 0
    result = json.loads((tmp_path / 'speed.json').read_text())
    assert result['settings']['auto_augment'] == 'rand-m9-mstd0.5-inc1' and result['settings']['reprob'] == 0.25
    for path in ('uint8', 'float'):
        for kind in ('wall', 'cpu'):
            assert len(result['images_per_worker'][path][kind]) == 2
            assert all(value > 0 for value in result['images_per_worker'][path][kind])
    assert 'uint8 in the worker' in capsys.readouterr().out


def test_feed_benchmark_trains_on_the_loaders_batches_and_on_one_synthetic_batch_in_turns(tmp_path, monkeypatch):
    import dataclasses

    import tools.benchmark as benchmark  # here: it imports the models

    fed = []  # per epoch: the batches the training steps got
    train_one_epoch = benchmark.Trainer.train_one_epoch

    def recording(trainer, epoch, start_step):
        batches = list(trainer.data.loader_train)
        fed.append(batches)
        trainer.data = dataclasses.replace(trainer.data, loader_train=iter(batches))
        return train_one_epoch(trainer, epoch, start_step)

    monkeypatch.setattr(benchmark.Trainer, 'train_one_epoch', recording)
    make_photo_dataset(str(tmp_path / 'photos'), num_train=12, num_val=2)
    assert benchmark.feed_main([str(tmp_path / 'photos'), '--cfg', 'configs/demo/acmix_swin_demo.yaml', '--device',
                                'cpu', '--workers', '1', '--batch-size', '4', '--skip', '1', '--rounds', '2',
                                '--json', str(tmp_path / 'feed.json')]) == 0
    assert len(fed) == 6 and all(len(batches) == 3 for batches in fed)  # a warm-up epoch and 2 timed ones each
    loader_epochs, synthetic_epochs = fed[0::2], fed[1::2]
    for batches in synthetic_epochs:
        assert all(images is fed[1][0][0] for images, _, _ in batches)
    first_images = [batches[0][0] for batches in loader_epochs]
    for images in first_images:
        assert images.shape == fed[1][0][0].shape and images.dtype == torch.float32
        assert not any(images is batch[0] for batch in fed[1])
    assert not torch.equal(first_images[0], first_images[1])  # each epoch its own samples and augmentation
    result = json.loads((tmp_path / 'feed.json').read_text())
    assert result['settings']['steps_per_epoch'] == 3
    assert all(len(speeds) == 2 and min(speeds) > 0 for speeds in result['images_per_s'].values())
    assert result['ratio'] == pytest.approx(result['medians']['loader'] / result['medians']['synthetic'])


# --- layouts ---

def test_folder_and_both_list_layouts_train_alike(data_copy):
    runs = {'folder': train_one_epoch(make_config(data_copy, 'DATA.FORMAT', 'folder')),
            'lists relative to the split folder':
                train_one_epoch(make_config(data_copy, 'DATA.FORMAT', 'list'))}
    for split in ('train', 'val'):
        lines = (data_copy / f'{split}_list.txt').read_text().splitlines()
        (data_copy / f'{split}_list.txt').write_text(''.join(f'{split}/{line}\n' for line in lines))
    runs['lists relative to DATA_PATH'] = train_one_epoch(make_config(data_copy, 'DATA.FORMAT', 'list'))

    folder_data, folder_labels, _ = runs['folder']
    train_samples = relative_samples(folder_data.dataset_train, data_copy)
    val_samples = relative_samples(folder_data.dataset_val, data_copy)
    assert (len(train_samples), len(val_samples)) == (NUM_TRAIN, NUM_VAL)
    assert all(path.split(os.sep)[1] == str(label) for path, label in train_samples + val_samples)
    for layout, (data, labels, bad_count) in runs.items():
        assert relative_samples(data.dataset_train, data_copy) == train_samples, layout
        assert relative_samples(data.dataset_val, data_copy) == val_samples, layout
        assert data.num_classes == 10, layout
        assert len(labels) == NUM_TRAIN // 32 * 32 and torch.equal(labels, folder_labels), layout
        assert bad_count == 0, layout


def test_auto_format_logs_the_layout_it_reads(data_copy, caplog):
    caplog.set_level(logging.INFO)
    build_loader(make_config(data_copy))
    assert 'list layout' in caplog.text
    caplog.clear()
    for split in ('train', 'val'):
        (data_copy / f'{split}_list.txt').unlink()
    build_loader(make_config(data_copy))
    assert 'folder layout' in caplog.text


def test_num_classes_is_taken_from_the_data(demo_data):
    config = make_config(demo_data)
    assert config.MODEL.NUM_CLASSES == 0
    assert build_loader(config).num_classes == 10
    assert config.MODEL.NUM_CLASSES == 10 and config.is_frozen()


# --- bad data found at start ---

def remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def empty_folder(path):
    for image in path.iterdir():
        image.unlink()


def add_val_class(root):
    (root / 'val' / 'x').mkdir()
    shutil.copy(root / 'val' / VAL_IMAGE, root / 'val' / 'x')


def replace_line(list_file, line_no, text):
    lines = list_file.read_text().splitlines()
    lines[line_no - 1] = text
    list_file.write_text('\n'.join(lines) + '\n')


def unchanged(root):
    pass


def case(name, break_data, opts, fragments):
    """A bad-data case: what to break in the data copy, config changes, fragments of the message."""
    return pytest.param(break_data, opts, fragments, id=name)


@pytest.mark.parametrize('break_data, opts, fragments', [
    case('missing DATA_PATH', remove, [], ['{root}', LAYOUT_HINT]),
    case('missing split folder', lambda root: remove(root / 'val'), ['DATA.FORMAT', 'folder'],
         ['{root}/val', LAYOUT_HINT]),
    case('empty class folder', lambda root: empty_folder(root / 'train' / '3'), ['DATA.FORMAT', 'folder'],
         ['{root}/train/3', LAYOUT_HINT]),
    case('val class unknown to train', add_val_class, ['DATA.FORMAT', 'folder'], ['{root}/val', ': x']),
    case('missing list file', lambda root: remove(root / 'val_list.txt'), ['DATA.FORMAT', 'list'],
         ['{root}/val_list.txt', LAYOUT_HINT]),
    case('wrong column count', lambda root: replace_line(root / 'train_list.txt', 5, TRAIN_IMAGE), [],
         ['{root}/train_list.txt:5:', 'found 1']),
    case('label not an integer', lambda root: replace_line(root / 'train_list.txt', 7, f'{TRAIN_IMAGE} zero'),
         [], ['{root}/train_list.txt:7:', "'zero'"]),
    case('negative label', lambda root: replace_line(root / 'val_list.txt', 2, f'{VAL_IMAGE}\t-1'), [],
         ['{root}/val_list.txt:2:', "'-1'"]),
    case('val label beyond the training labels',
         lambda root: replace_line(root / 'val_list.txt', 3, f'{VAL_IMAGE} 10'), [],
         ['{root}/val_list.txt:3:', 'label 10', '0..9']),
    case('missing listed image', lambda root: remove(root / 'train' / '5' / 'digit_0005.png'), [],
         ['{root}/train_list.txt:', '{root}/train/5/digit_0005.png']),
    case('first listed image in neither folder',
         lambda root: replace_line(root / 'train_list.txt', 1, 'nowhere.png 0'), [],
         ['{root}/train_list.txt:1:', 'nowhere.png', LAYOUT_HINT]),
    case('unknown format', unchanged, ['DATA.FORMAT', 'lists'], ["'lists'", 'auto, folder or list']),
    case('class count differs from MODEL.NUM_CLASSES', unchanged, ['MODEL.NUM_CLASSES', 1000],
         ['1000', '10 classes']),
    case('fewer images than a global batch', unchanged,
         ['DATA.BATCH_SIZE', 1024, 'TRAIN.ACCUMULATION_STEPS', 2], [f'{NUM_TRAIN} training images', '2048']),
    case('odd batch for mixup', unchanged, ['DATA.BATCH_SIZE', 33], ['even DATA.BATCH_SIZE']),
    case('unknown erasing mode', unchanged, ['AUG.REMODE', 'pixels'], ['AUG.REMODE', "'pixels'"]),
])
def test_bad_data_is_explained(data_copy, break_data, opts, fragments):
    break_data(data_copy)
    with pytest.raises(DataError) as error:
        build_loader(make_config(data_copy, *opts))
    for fragment in fragments:
        assert fragment.format(root=data_copy) in str(error.value)


# --- unreadable images during training ---

def plant_bad_images(folder):
    """A truncated JPEG, a zero-byte file and a text file named like images; returns their paths."""
    jpeg = folder / 'bad_truncated.jpg'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:jpeg.stat().st_size // 2])
    empty = folder / 'bad_zero_bytes.JPEG'
    empty.write_bytes(b'')
    text = folder / 'bad_not_an_image.png'
    text.write_text('not an image')
    return [str(path) for path in (jpeg, empty, text)]


def test_an_epoch_goes_past_unreadable_images(data_copy, caplog):
    bad_paths = plant_bad_images(data_copy / 'train' / '0')
    caplog.set_level(logging.INFO)
    # NUM_TRAIN + 3 images are 45 batches of 32: the epoch reads every image.
    data, labels, bad_count = train_one_epoch(make_config(data_copy, 'DATA.FORMAT', 'folder'))
    assert len(labels) == NUM_TRAIN + 3
    assert bad_count == 3
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(any(path in warning for warning in warnings) for path in bad_paths)
    assert 'epoch 0: 3 unreadable images replaced' in caplog.text
    # The three sort first in class 0: the first is replaced by the first readable image, naming all three.
    image, label, _, skipped = data.dataset_train[(0, 0)]
    assert skipped == tuple(sorted(bad_paths)) and label == 0 and image.shape == (32, 32, 3)


def test_too_many_unreadable_images_stop_the_run(data_copy):
    bad_paths = plant_bad_images(data_copy / 'train' / '0')
    with pytest.raises(DataError, match='more than DATA.MAX_BAD_IMAGES = 2') as error:
        train_one_epoch(make_config(data_copy, 'DATA.FORMAT', 'folder', 'DATA.MAX_BAD_IMAGES', 2))
    assert all(path in str(error.value) for path in bad_paths)


def test_bad_image_tracker_counts_each_image_once_per_epoch(caplog):
    tracker = BadImageTracker(max_bad=5)
    tracker.add(['a.jpg'])
    tracker.add(['a.jpg', 'b.jpg'])
    assert tracker.end_epoch(0) == 2
    assert tracker.end_epoch(1) == 0
    assert caplog.text.count('unreadable image') == 2


@pytest.mark.parametrize('mode, color, file_name, rgb', [
    ('L', 100, 'gray.jpg', (100, 100, 100)),
    ('LA', (100, 0), 'gray_alpha.png', (100, 100, 100)),
    ('CMYK', (0, 0, 0, 0), 'cmyk.jpg', (255, 255, 255)),
    ('P', 1, 'palette.png', (255, 0, 0)),
    ('RGBA', (10, 20, 30, 0), 'alpha.png', (10, 20, 30)),
])
def test_images_are_read_as_rgb(tmp_path, mode, color, file_name, rgb):
    image = Image.new(mode, (8, 8), color)
    if mode == 'P':
        image.putpalette([0, 0, 0, 255, 0, 0])
        image.info['transparency'] = 0
    path = tmp_path / file_name
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.mode == 'RGB' and loaded.size == (8, 8)
    assert np.abs(np.asarray(loaded)[4, 4].astype(int) - rgb).max() <= 2  # JPEG is lossy


# --- samplers and loaders ---

def step_samples(batch_size, accumulation_steps, world_size, num_samples=103, epoch=3):
    """The sorted sample indices of each optimizer step, over all ranks and accumulation steps."""
    step_size = batch_size * accumulation_steps
    ranks = []
    for rank in range(world_size):
        sampler = TrainSampler(num_samples, step_size * world_size, rank, world_size, seed=7)
        sampler.set_epoch(epoch)
        ranks.append([index for _, index in sampler])
    return [sorted(index for indices in ranks for index in indices[step * step_size:(step + 1) * step_size])
            for step in range(len(ranks[0]) // step_size)]


def test_optimizer_steps_see_the_same_samples_however_the_batch_is_split():
    steps = step_samples(8, 1, 1)
    assert len(steps) == 103 // 8
    assert step_samples(4, 2, 1) == steps
    assert step_samples(4, 1, 2) == steps
    assert step_samples(2, 2, 2) == steps
    assert len({index for step in steps for index in step}) == 12 * 8


def test_train_sampler_shuffles_by_epoch_like_distributed_sampler():
    samplers = [TrainSampler(96, 8, rank, 2, seed=7) for rank in range(2)]
    for epoch in (0, 1):
        for rank, sampler in enumerate(samplers):
            sampler.set_epoch(epoch)
            reference = DistributedSampler(range(96), num_replicas=2, rank=rank, shuffle=True, seed=7)
            reference.set_epoch(epoch)
            assert list(sampler) == [(epoch, index) for index in reference]
    assert [index for _, index in samplers[0]] != sorted(index for _, index in samplers[0])


def test_train_sampler_resumes_mid_epoch():
    sampler = TrainSampler(103, 8, rank=1, world_size=2)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start=20)
    assert list(sampler) == full[20:] and len(sampler) == len(full) - 20 == 28
    with pytest.raises(ValueError):
        sampler.set_epoch(4, start=49)


def test_eval_sampler_covers_each_sample_once():
    keys = [key for rank in range(3) for key in EvalSampler(10, rank, 3)]
    assert sorted(keys) == [(0, index) for index in range(10)]
    assert [len(EvalSampler(10, rank, 3)) for rank in range(3)] == [4, 3, 3]


def test_loaders_follow_the_config(demo_data):
    data = build_loader(make_config(demo_data, 'DATA.NUM_WORKERS', 64))
    for loader in (data.loader_train.loader, data.loader_val.loader):
        assert loader.num_workers == min(64, os.cpu_count()) and loader.persistent_workers
        assert not loader.pin_memory  # CPU
        assert loader.collate_fn is collate
    assert data.loader_train.loader.drop_last and not data.loader_val.loader.drop_last
    assert data.mixup_fn is not None and data.mixup_fn.num_classes == 10

    data = build_loader(make_config(demo_data, 'AUG.MIXUP', 0.0, 'AUG.CUTMIX', 0.0))
    assert data.mixup_fn is None
    labels = [label for _, labels, _ in data.loader_val for label in labels.tolist()]
    assert sorted(labels) == sorted(label for _, label in data.dataset_val.samples)


def test_augmentation_depends_only_on_seed_epoch_and_index(demo_data):
    dataset = build_loader(make_config(demo_data)).dataset_train
    keys = [(0, 5), (0, 6), (1, 5)]
    in_main_process = [dataset[key][0] for key in keys]
    # The same keys in reverse order, through two worker processes.
    loader = DataLoader(dataset, sampler=keys[::-1], batch_size=1, num_workers=2, collate_fn=collate)
    in_workers = [images[0] for images, _, _, _ in loader][::-1]
    assert all(torch.equal(a, b) for a, b in zip(in_main_process, in_workers))
    assert not torch.equal(in_main_process[0], in_main_process[2])

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    for seed_all in (random.seed, np.random.seed, torch.manual_seed):
        seed_all(1)
    expected = draws()
    for seed_all in (random.seed, np.random.seed, torch.manual_seed):
        seed_all(1)
    dataset[(0, 5)]
    assert draws() == expected


# --- uint8 batches, made float, normalised and randomly erased on the device ---

def sample_seeds(seed, epoch, index):
    """The documented seeds of a sample: the two words that SeedSequence((seed, epoch, index)) begins with."""
    return [int(word) for word in np.random.SeedSequence((seed, epoch, index)).generate_state(2, np.uint64)]


def worker_float_image(config, path, seed, epoch, index):
    """What the workers made of a training sample before: the float transform, seeded by its first seed,
    and timm's random erasing, seeded by its second."""
    augment_seed, erase_seed = sample_seeds(seed, epoch, index)
    random.seed(augment_seed)
    np.random.seed(augment_seed % 2 ** 32)
    torch.manual_seed(augment_seed)
    *augment, erasing = build_transform(config, is_train=True, float_in_worker=True).transforms
    assert isinstance(erasing, RandomErasing)
    image = transforms.Compose(augment)(load_rgb(path))
    random.seed(erase_seed)
    torch.manual_seed(erase_seed)
    return RandomErasing(config.AUG.REPROB, mode=config.AUG.REMODE, max_count=config.AUG.RECOUNT,
                         device='cpu')(image)


@pytest.mark.parametrize('mode, count', [('pixel', 3), ('rand', 1), ('const', 2)])
def test_device_batches_are_the_former_float_images(demo_data, mode, count):
    """Through 2 workers, in batches of 5 of an arbitrary order: each image is bitwise the one the float
    transform in the worker gives for its (seed, epoch, index). 40 px: random-resized crop and RandAugment."""
    config = make_config(demo_data, 'DATA.IMG_SIZE', 40, 'AUG.REPROB', 1.0, 'AUG.REMODE', mode,
                         'AUG.RECOUNT', count, 'SEED', 3)
    data = build_loader(config)
    keys = [(2, 17), (0, 3), (2, 1000), (2, 5), (1, 17), (0, 400), (2, 9), (0, 0), (1, 1), (1, 3)]
    uint8 = DataLoader(data.dataset_train, sampler=keys, batch_size=5, num_workers=2, collate_fn=collate,
                       generator=torch.Generator())  # not the global generator, checked below
    images, _, _, _ = next(iter(uint8))
    assert images.dtype == torch.uint8 and images.shape == (5, 40, 40, 3)
    loader = DeviceLoader(uint8, torch.device('cpu'), config.DATA.MEAN, config.DATA.STD, data.loader_train.erasing)
    state = torch.get_rng_state()
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), state)  # the training loop's random stream stays where it was
    images = torch.cat([images for images, _, _ in batches])
    assert images.dtype == torch.float32 and images.shape == (10, 3, 40, 40)
    for image, (epoch, index) in zip(images, keys):
        expected = worker_float_image(config, data.dataset_train.samples[index][0], 3, epoch, index)
        assert torch.equal(image, expected), (epoch, index)
    assert all((image == 0).all(dim=0).any() for image in images) == (mode == 'const')

    images, labels, _ = next(iter(data.loader_val))
    assert images.shape == (32, 3, 40, 40)
    val_transform = build_transform(config, is_train=False, float_in_worker=True)
    for i, image in enumerate(images):
        path, label = data.dataset_val.samples[i]
        assert labels[i] == label and torch.equal(image, val_transform(load_rgb(path)))


def test_device_loader_resumes_mid_epoch_exactly(demo_data):
    data = build_loader(make_config(demo_data, 'DATA.BATCH_SIZE', 8, 'AUG.REPROB', 0.5))
    data.sampler_train.set_epoch(1)
    full = list(itertools.islice(data.loader_train, 4))
    data.sampler_train.set_epoch(1, start=16)
    resumed = list(itertools.islice(data.loader_train, 2))
    for (images, labels, _), (expected_images, expected_labels, _) in zip(resumed, full[2:]):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


# --- transforms ---

def test_transforms_follow_the_config(demo_data):
    image = Image.new('RGB', (48, 40))
    small = build_transform(make_config(demo_data), is_train=True)
    assert isinstance(small.transforms[0], transforms.RandomCrop)
    config = make_config(demo_data, 'DATA.IMG_SIZE', 64, 'AUG.AUTO_AUGMENT', 'none')
    train = build_transform(config, is_train=True)
    assert not isinstance(train.transforms[0], transforms.RandomCrop)
    assert 'RandAugment' not in repr(train)
    assert train(image).shape == (64, 64, 3)
    crop = build_transform(config, is_train=False)
    assert [type(t) for t in crop.transforms[:2]] == [transforms.Resize, transforms.CenterCrop]
    assert crop.transforms[0].size == int(64 / 0.875)
    assert crop(image).shape == (64, 64, 3)
    resize = build_transform(make_config(demo_data, 'DATA.IMG_SIZE', 64, 'TEST.CROP', False), is_train=False)
    assert resize(image).shape == (64, 64, 3)


def test_randaugment_posterize_to_zero_bits_gives_black():
    # data.transforms, imported above, lets timm's op do what Pillow 13 refuses.
    image = Image.new('RGB', (8, 8), (200, 100, 50))
    black = AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)(image)
    assert np.asarray(black).max() == 0
