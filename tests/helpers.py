"""Running main.py in tests as a user would, and reading what it wrote."""
import json
import os
import socket
import subprocess
import sys

import torch
import yaml

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


def launch(args, nproc=1, launcher='python', check=True, script='main.py', env=None):
    """Run main.py as a user would: plain `python`, `torchrun` or `torch.distributed.launch`."""
    cmd = [sys.executable, script]
    if launcher != 'python':
        module = {'torchrun': 'torch.distributed.run', 'launch': 'torch.distributed.launch'}[launcher]
        cmd = [sys.executable, '-m', module, f'--nproc_per_node={nproc}', f'--master_port={free_port()}', script]
    result = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f'{cmd + args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
                             f'{result.stderr[-5000:]}')
    return result


def train_args(cfg, data, output, *opts, batch=16, epochs=1, flags=()):
    """Command-line arguments of a training run; `opts` are config overrides, `flags` further options."""
    return ['--cfg', cfg, '--data-path', data, '--output', str(output), '--batch-size', str(batch), *flags,
            '--opts', *BASE_OPTS, 'TRAIN.EPOCHS', str(epochs), *opts]


def run_dir(output, cfg=AMIXER, tag='default'):
    with open(cfg) as f:
        name = yaml.safe_load(f)['MODEL']['NAME']
    return os.path.join(str(output), name, tag)


def final_checkpoint(output, epoch, cfg=AMIXER):
    return torch.load(os.path.join(run_dir(output, cfg), f'ckpt_epoch_{epoch}.pth'), weights_only=True)


def eval_result(output, cfg=AMIXER) -> dict:
    """The summary that `main.py --eval` writes to eval.json in its run folder."""
    with open(os.path.join(run_dir(output, cfg), 'eval.json')) as f:
        return json.load(f)
