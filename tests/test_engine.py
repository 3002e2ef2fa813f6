"""main.py end to end on CPU: launch forms, equivalence of batch splits, exact resume, eval, throughput,
clear errors. Tiny AMixer/ACmix demo models on a subset of the digits data."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMIXER = os.path.join(ROOT, 'configs', 'demo', 'amixer_swin_demo.yaml')
ACMIX = os.path.join(ROOT, 'configs', 'demo', 'acmix_swin_demo.yaml')
# Deterministic and fast: no worker processes, no drop path, mixup/cutmix off; other augmentation stays on.
BASE_OPTS = ['DATA.NUM_WORKERS', '0', 'MODEL.DROP_PATH_RATE', '0.0', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0',
             'TRAIN.WARMUP_EPOCHS', '0', 'PRINT_FREQ', '5']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(args, nproc=1, launcher='python', check=True, env=None):
    """Run main.py as a user would: plain python, torchrun, or torch.distributed.launch."""
    if launcher == 'python':
        cmd = [sys.executable, 'main.py']
    elif launcher == 'torchrun':
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               f'--master_port={free_port()}', 'main.py']
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.launch', f'--nproc_per_node={nproc}',
               f'--master_port={free_port()}', 'main.py']
    result = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f'{cmd + args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}')
    return result


@pytest.fixture(scope='module')
def tiny_data(demo_data, tmp_path_factory):
    """160 training and 33 validation digits (an odd count, for exact multi-rank evaluation), as list files."""
    root = tmp_path_factory.mktemp('tiny_digits')
    for split, count in (('train', 160), ('val', 33)):
        os.symlink(os.path.join(demo_data, split), root / split)
        with open(os.path.join(demo_data, f'{split}_list.txt')) as f:
            lines = f.readlines()
        (root / f'{split}_list.txt').write_text(''.join(lines[:count]))
    return str(root)


def train_args(cfg, data, output, *opts, batch=16, epochs=1, flags=()):
    """Command-line arguments of a training run; `opts` are config overrides, `flags` further options."""
    return ['--cfg', cfg, '--data-path', data, '--output', str(output), '--batch-size', str(batch), *flags,
            '--opts', *BASE_OPTS, 'TRAIN.EPOCHS', str(epochs), *opts]


def run_dir(output, cfg=AMIXER, tag='default'):
    import yaml
    with open(cfg) as f:
        name = yaml.safe_load(f)['MODEL']['NAME']
    return os.path.join(str(output), name, tag)


def final_checkpoint(output, epoch, cfg=AMIXER):
    return torch.load(os.path.join(run_dir(output, cfg), f'ckpt_epoch_{epoch}.pth'), weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize('form', ['python', 'local_rank_by_hand', 'torchrun', 'distributed_launch'])
def test_launch_forms_train_one_epoch(tiny_data, tmp_path, form):
    args = train_args(AMIXER, tiny_data, tmp_path, batch=8)
    if form == 'python':
        launch(args)
    elif form == 'local_rank_by_hand':
        launch(['--local_rank', '0'] + args)
    elif form == 'torchrun':
        launch(args, nproc=2, launcher='torchrun')
    else:
        launch(args, nproc=2, launcher='launch')
    ckpt = final_checkpoint(tmp_path, 0)
    assert ckpt['epoch'] == 0 and ckpt['step'] == 160 // 16
    assert isinstance(ckpt['config'], str) and 'amixer_swin' in ckpt['config']
    for key in ('model', 'optimizer', 'lr_scheduler', 'scaler', 'model_ema', 'max_accuracy', 'rng'):
        assert key in ckpt
    metrics = [json.loads(line) for line in open(os.path.join(run_dir(tmp_path), 'metrics.jsonl'))]
    assert [m['epoch'] for m in metrics] == [0]
    for key in ('train_loss', 'lr', 'val_loss', 'val_acc1', 'val_acc5', 'epoch_time_s', 'train_images_per_s'):
        assert isinstance(metrics[0][key], float)


@pytest.mark.parametrize('cfg, tolerance', [(AMIXER, 1e-5), (ACMIX, 1e-4)])
def test_batch_splits_give_the_same_weights(tiny_data, tmp_path, cfg, tolerance):
    """10 optimizer steps of a global batch of 16: one process, accumulation, and two ranks agree."""
    launch(train_args(cfg, tiny_data, tmp_path / 'a', batch=16))
    launch(train_args(cfg, tiny_data, tmp_path / 'b', batch=8, flags=['--accumulation-steps', '2']))
    launch(train_args(cfg, tiny_data, tmp_path / 'c', batch=8), nproc=2, launcher='torchrun')
    a, b, c = (final_checkpoint(tmp_path / x, 0, cfg) for x in 'abc')
    assert a['step'] == b['step'] == c['step'] == 10
    assert max_diff(a['model'], b['model']) <= tolerance
    assert max_diff(a['model'], c['model']) <= tolerance


def test_auto_resume_is_exact(tiny_data, tmp_path):
    # A step schedule with no warm-up keeps the learning rate independent of TRAIN.EPOCHS, so that a run
    # told to stop after one epoch follows the same schedule as the two-epoch run.
    opts = ['TRAIN.EMA.ENABLE', 'True', 'TRAIN.EMA.DECAY', '0.9', 'TRAIN.LR_SCHEDULER.NAME', 'step',
            'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '100', 'MODEL.DROP_PATH_RATE', '0.1']
    launch(train_args(AMIXER, tiny_data, tmp_path / 'straight', *opts, epochs=2))
    launch(train_args(AMIXER, tiny_data, tmp_path / 'resumed', *opts, epochs=1))
    result = launch(train_args(AMIXER, tiny_data, tmp_path / 'resumed', *opts, epochs=2))
    assert 'resuming from' in result.stdout
    straight, resumed = final_checkpoint(tmp_path / 'straight', 1), final_checkpoint(tmp_path / 'resumed', 1)
    for part in ('model', 'model_ema'):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), f'{part}.{key} differs after resume'
    assert resumed['max_accuracy'] == straight['max_accuracy']


def test_eval_reproduces_logged_accuracy_on_two_ranks(tiny_data, tmp_path):
    launch(train_args(AMIXER, tiny_data, tmp_path, batch=16))
    logged = json.loads(open(os.path.join(run_dir(tmp_path), 'metrics.jsonl')).readline())
    ckpt = os.path.join(run_dir(tmp_path), 'ckpt_epoch_0.pth')
    for nproc, launcher in ((1, 'python'), (2, 'torchrun')):
        result = launch(['--cfg', AMIXER, '--data-path', tiny_data, '--output', str(tmp_path / 'eval'), '--eval',
                         '--resume', ckpt, '--opts', 'DATA.NUM_WORKERS', '0'], nproc=nproc, launcher=launcher)
        line = next(l for l in result.stdout.splitlines() if 'eval model:' in l)
        val = json.loads(line.split('eval model:', 1)[1])
        assert val['count'] == 33
        assert val['acc1'] == pytest.approx(logged['val_acc1'], abs=1e-9)
        assert val['loss'] == pytest.approx(logged['val_loss'], rel=1e-5)


def test_throughput_without_dataset(tmp_path):
    result = launch(['--cfg', AMIXER, '--throughput', '--batch-size', '4', '--output', str(tmp_path)])
    line = next(l for l in result.stdout.splitlines() if 'throughput of' in l)
    inference = float(line.split('inference ')[1].split(' images/s')[0])
    training = float(line.split('training ')[1].split(' images/s')[0])
    assert inference > 0 and training > 0


@pytest.mark.parametrize('case', ['missing_cfg', 'unknown_key', 'missing_resume', 'mismatched_resume'])
def test_bad_input_gives_clear_error(tiny_data, tmp_path, case):
    args = train_args(AMIXER, tiny_data, tmp_path)
    if case == 'missing_cfg':
        args[1], expected = str(tmp_path / 'nope.yaml'), 'config file not found'
    elif case == 'unknown_key':
        args, expected = args + ['TRAIN.NO_SUCH_KEY', '1'], 'TRAIN.NO_SUCH_KEY'
    elif case == 'missing_resume':
        args, expected = ['--resume', str(tmp_path / 'none.pth')] + args, 'checkpoint not found'
    else:
        launch(train_args(ACMIX, tiny_data, tmp_path / 'acmix', batch=16))
        other = os.path.join(run_dir(tmp_path / 'acmix', ACMIX), 'ckpt_epoch_0.pth')
        args, expected = ['--resume', other] + args, 'does not match this model'
    result = launch(args, check=False)
    assert result.returncode != 0
    assert expected in result.stderr
    assert 'Traceback' not in result.stderr
