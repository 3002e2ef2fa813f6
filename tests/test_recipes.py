"""The published recipes as their official code runs them: each family's learning rate at every optimizer
step, AMixer's absolute floor, and the EMA.

The expected rates come from the official schedules, not from lr_scheduler.py:
- Swin and ACmix: timm's CosineLRScheduler itself, called as their lr_scheduler.py calls it (current
  microsoft/Swin-Transformer: t_initial = all steps - warm-up steps, warmup_prefix = WARMUP_PREFIX; the
  2021 code that LeapLabTHU/ACmix ships, on timm 0.3.2: t_initial = all steps, no prefix). Its formula
  (t_mul 1, one cycle) is the same in timm 0.3.2, 0.4.12 and the installed timm.
- AMixer: utils.cosine_scheduler of ConvNeXt / HorNet, which AMixer's main.py imports, written out below
  with numpy as it builds its per-step array.
"""
import math
import os

import numpy as np
import pytest
import torch
from timm.scheduler import CosineLRScheduler

from config import get_default_config, merge_yaml
from data.samplers import TrainSampler
from lr_scheduler import LRScheduler, build_scheduler
from main import build_config, parse_option
from models import build_model
from tests.helpers import AMIXER, ROOT, launch, run_dir, train_args
from tests.test_seeds import seed_commands

IMAGENET_TRAIN = 1281167  # images in ImageNet-1k's training set


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


def timm_schedule(total: int, warmup: int, peak: float, warmup_lr: float, min_lr: float, prefix: bool):
    """The rate that Swin's / ACmix's scheduler sets with step_update(step)."""
    opt = optimizer()
    opt.param_groups[0]['lr'] = peak  # their optimizer is built with the scaled BASE_LR
    scheduler = CosineLRScheduler(opt, t_initial=total - warmup if prefix else total, lr_min=min_lr,
                                  warmup_lr_init=warmup_lr, warmup_t=warmup, cycle_limit=1, t_in_epochs=False,
                                  warmup_prefix=prefix)

    def rate(step: int) -> float:
        scheduler.step_update(step)
        return opt.param_groups[0]['lr']
    return rate


def amixer_schedule(total: int, warmup: int, peak: float, min_lr: float):
    """utils.cosine_scheduler(lr, min_lr, epochs, steps per epoch, warmup_epochs), start_warmup_value 0."""
    iters = np.arange(total - warmup)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((np.linspace(0.0, peak, warmup), cosine))
    assert len(schedule) == total
    return lambda step: float(schedule[step])


def ours(config, steps_per_epoch: int, world_size: int) -> LRScheduler:
    return build_scheduler(config, optimizer(), steps_per_epoch, world_size)


def assert_follows(actual, expected, steps):
    for step in steps:
        assert actual(step) == pytest.approx(expected(step), rel=1e-6, abs=0), f'step {step}'


def key_steps(total: int, warmup: int) -> list[int]:
    return [0, 1, warmup - 1, warmup, total // 2, total - 1]


def load(name: str, *opts: str):
    config = get_default_config()
    merge_yaml(config, os.path.join(ROOT, 'configs', f'{name}.yaml'))
    config.defrost()
    config.merge_from_list(list(opts))
    return config


# 10 steps an epoch, 300 epochs, 20 of warm-up: T = 3000, W = 200 (the issue's example), at 4 GPUs x 32
# images x 2 accumulation steps: a global batch of 256, so every rate of Swin and ACmix is halved.
STEPS, WORLD, BATCH, ACCUM = 10, 4, ['DATA.BATCH_SIZE', '32'], ['TRAIN.ACCUMULATION_STEPS', '2']
T, W = 3000, 200


@pytest.mark.parametrize('name, opts, prefix', [
    ('swin_tiny_patch4_window7_224', [], True),  # Swin's lr_scheduler.py today (WARMUP_PREFIX default True)
    ('swin_tiny_patch4_window7_224', ['TRAIN.LR_SCHEDULER.WARMUP_PREFIX', 'False'], False),  # released weights
    ('acmix_swin_tiny_patch4_window7_224', [], False),  # ACmix's 2021 Swin code on timm 0.3.2
])
def test_swin_and_acmix_follow_timm(name, opts, prefix):
    actual = ours(load(name, *BATCH, *ACCUM, *opts), STEPS, WORLD).lr_at
    scale = 256 / 512  # Swin main.py: BASE_LR, WARMUP_LR and MIN_LR x batch x world size x accumulation / 512
    expected = timm_schedule(T, W, 5e-4 * scale, 5e-7 * scale, 5e-6 * scale, prefix)
    assert_follows(actual, expected, key_steps(T, W))
    assert actual(T) == pytest.approx(5e-6 * scale, rel=1e-12)  # past the end: the floor, as timm's cycle_limit


def test_issue_example_numbers():
    """The issue's ACmix example (T 3000, W 200, peak 1e-3, min 1e-5): official 9.8918e-4 at step 200 and
    5.05e-4 at step 1500, where the cosine after the warm-up alone gave 1e-3 and 5.604e-4."""
    actual = ours(load('acmix_swin_tiny_patch4_window7_224'), STEPS, 8).lr_at  # 8 x 128: 1024, the rates x 2
    assert actual(200) == pytest.approx(9.8918e-4, rel=1e-5)
    assert actual(1500) == pytest.approx(5.05e-4, rel=1e-5)
    config = load('acmix_swin_tiny_patch4_window7_224', 'TRAIN.LR_SCHEDULER.WARMUP_PREFIX', 'True')
    prefixed = ours(config, STEPS, 8).lr_at
    assert prefixed(200) == pytest.approx(1e-3, rel=1e-9)
    assert prefixed(1500) == pytest.approx(5.604e-4, rel=1e-4)


@pytest.mark.parametrize('world_size, accumulation', [(8, 1), (2, 4), (1, 1)])
def test_amixer_follows_cosine_scheduler(world_size, accumulation):
    """Warm-up by np.linspace (its last step at the peak), the cosine over the rest, the floor absolute."""
    config = load('amixer_t', 'TRAIN.ACCUMULATION_STEPS', str(accumulation))
    actual = ours(config, STEPS, world_size).lr_at
    peak = 5e-4 * 128 * world_size * accumulation / 512  # the yaml's rate for 512, scaled as --cfg does
    expected = amixer_schedule(T, W, peak, 1e-6)
    assert_follows(actual, expected, key_steps(T, W))
    assert actual(W - 1) == pytest.approx(peak, rel=1e-12)  # np.linspace includes its end
    assert actual(T) == pytest.approx(1e-6, rel=1e-12)


def steps_per_epoch(config, world_size: int) -> int:
    """As main.py counts them: this rank's share of whole global batches, in optimizer steps."""
    batch, accum = config.DATA.BATCH_SIZE, config.TRAIN.ACCUMULATION_STEPS
    sampler = TrainSampler(IMAGENET_TRAIN, batch * world_size * accum, 0, world_size)
    return len(sampler) // (batch * accum)


def cfg_command(name: str, batch: int, *flags: str) -> list[str]:
    """The --cfg form of Swin's get_started.md, ACmix's Swin-Transformer/README.md and this project's README."""
    return ['--cfg', f'{ROOT}/configs/{name}.yaml', '--data-path', '/path/to/imagenet', '--batch-size', str(batch),
            *flags]


AMIXER_README = {c[c.index('--model') + 1]: c for c in seed_commands('amixer_README.md')}
AMIXER_BATCH = {'amixer_deit_s': (128, 1), 'amixer_t': (128, 1), 'amixer_s': (64, 2), 'amixer_b': (32, 4)}


def official_amixer(name: str):
    """AMixer main.py with its README's flags on 8 GPUs: len(dataset) // global batch steps an epoch,
    --lr 1e-3, --min_lr 1e-6, 20 warm-up epochs of 300."""
    batch, accum = AMIXER_BATCH[name]
    per_epoch = IMAGENET_TRAIN // (batch * accum * 8)
    return per_epoch, amixer_schedule(300 * per_epoch, 20 * per_epoch, 1e-3, 1e-6)


def official_swin(batch: int, accum: int, prefix: bool):
    """Swin main.py on 8 GPUs: len(data_loader_train) // accumulation steps an epoch (DistributedSampler
    pads each rank to ceil(N / 8); drop_last), the rates of config.py scaled by batch x 8 x accumulation / 512."""
    per_epoch = math.ceil(IMAGENET_TRAIN / 8) // batch // accum
    scale = batch * 8 * accum / 512
    total, warmup = 300 * per_epoch, 20 * per_epoch
    return per_epoch, timm_schedule(total, warmup, 5e-4 * scale, 5e-7 * scale, 5e-6 * scale, prefix)


PUBLISHED = [
    pytest.param(cfg_command('swin_tiny_patch4_window7_224', 128), lambda: official_swin(128, 1, True), id='swin_t'),
    pytest.param(cfg_command('swin_small_patch4_window7_224', 128), lambda: official_swin(128, 1, True), id='swin_s'),
    pytest.param(cfg_command('swin_base_patch4_window7_224', 64, '--accumulation-steps', '2'),
                 lambda: official_swin(64, 2, True), id='swin_b'),
    pytest.param(cfg_command('swin_tiny_patch4_window7_224', 128, '--opts', 'TRAIN.LR_SCHEDULER.WARMUP_PREFIX',
                              'False'), lambda: official_swin(128, 1, False), id='swin_t_released_schedule'),
    pytest.param(cfg_command('acmix_swin_tiny_patch4_window7_224', 128), lambda: official_swin(128, 1, False),
                 id='acmix_swin_t'),
    pytest.param(seed_commands('acmix_deepspark_README.md')[0], lambda: official_swin(128, 1, False),
                 id='acmix_swin_s_vendor_recipe'),
] + [pytest.param(AMIXER_README[name], lambda name=name: official_amixer(name), id=f'{name}_readme_lr')
     for name in AMIXER_BATCH] + [
    pytest.param(cfg_command(name, batch, '--accumulation-steps', str(accum)), lambda name=name: official_amixer(name),
                 id=f'{name}_cfg') for name, (batch, accum) in AMIXER_BATCH.items()]


@pytest.mark.parametrize('command, official', PUBLISHED)
def test_published_commands_at_world_size_8(command, official):
    """Each published config, built from its README command as main.py builds it on 8 GPUs, follows its
    official schedule at the key steps and at every 1000th; the AMixer runs end at 1e-6."""
    config = build_config(parse_option(command))
    per_epoch, expected = official()
    assert steps_per_epoch(config, 8) == per_epoch == 1251
    scheduler = ours(config, per_epoch, 8)
    actual = scheduler.lr_at
    total, warmup = 300 * per_epoch, 20 * per_epoch
    assert_follows(actual, expected, sorted(set(key_steps(total, warmup) + list(range(0, total, 1000)))))
    if config.MODEL.TYPE.startswith('amixer'):
        assert scheduler.min_lr == 1e-6
        assert actual(total - 1) == pytest.approx(1e-6, rel=1e-6)


def test_ema_follows_the_official_formula(tiny_data, tmp_path):
    """timm's ModelEma, as AMixer's main.py uses it: the EMA starts from the weights training starts from
    (here pretrained ones) and after update k holds d^k w_0 + (1 - d) sum_j d^(k - j) w_j, the decay d
    from the first update on. Integer buffers are copied, not averaged. d 0.99 instead of the published
    0.9999, so that 5 updates move the EMA far above float32 rounding."""
    config = get_default_config()
    merge_yaml(config, AMIXER)
    torch.manual_seed(123)  # not the run's seed: initial weights the run could not produce by itself
    pretrained = tmp_path / 'pretrained.pth'
    torch.save({'model': build_model(config).state_dict()}, pretrained)
    decay = 0.99
    launch(train_args(AMIXER, tiny_data, tmp_path / 'out', 'TRAIN.EMA.ENABLE', 'True', 'TRAIN.EMA.EVAL', 'False',
                      'TRAIN.EMA.DECAY', str(decay), 'TRAIN.SAVE_INTERVAL_STEPS', '1', 'TRAIN.SAVE_KEEP', '10',
                      batch=32, flags=['--pretrained', str(pretrained)]))
    folder = run_dir(tmp_path / 'out')
    names = [f'ckpt_epoch_0_step_{k}.pth' for k in range(1, 5)] + ['ckpt_epoch_0.pth']  # after updates 1..5
    checkpoints = [torch.load(f'{folder}/{name}', weights_only=True) for name in names]
    weights = [torch.load(pretrained, weights_only=True)['model']] + [c['model'] for c in checkpoints]
    ema = checkpoints[-1]['model_ema']
    k = len(checkpoints)
    for key, value in ema.items():
        if not value.is_floating_point():
            assert torch.equal(value, weights[-1][key]), key
            continue
        expected = decay ** k * weights[0][key].double() + sum(
            (1 - decay) * decay ** (k - j) * weights[j][key].double() for j in range(1, k + 1))
        assert torch.allclose(value.double(), expected, rtol=0, atol=1e-6), key
    moved = max((weights[-1][key].double() - weights[0][key].double()).abs().max() for key in ema
                if ema[key].is_floating_point())
    assert moved > 1e-3  # the weights moved 1000x the tolerance: the formula's terms are all visible


def test_amixer_warmup_of_one_step():
    """np.linspace(0, lr, 1) is [0.]: a one-step warm-up runs at the start rate, then the cosine begins."""
    actual = ours(load('amixer_t', 'TRAIN.WARMUP_EPOCHS', '1'), 1, 8).lr_at
    expected = amixer_schedule(300, 1, 1e-3, 1e-6)
    assert_follows(actual, expected, [0, 1, 2, 150, 299])
