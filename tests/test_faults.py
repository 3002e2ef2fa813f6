"""Nothing is lost to faults: preemption (SIGTERM), a killed worker, corrupt checkpoints, non-finite
losses and failed saves. Tiny AMixer demo model on 160 digits, 10 optimizer steps per epoch."""
import os
import signal
import subprocess
import sys

import torch

from tests.helpers import AMIXER, ROOT, final_checkpoint, free_port, launch, run_dir, train_args
from utils import list_checkpoints

# Drop path on: resuming must also continue the random stream exactly. A step schedule without decay keeps
# the learning rate independent of TRAIN.EPOCHS, so runs of different lengths follow the same schedule.
OPTS = ('MODEL.DROP_PATH_RATE', '0.1', 'PRINT_FREQ', '1', 'TRAIN.LR_SCHEDULER.NAME', 'step',
        'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '100')
UNBUFFERED = {**os.environ, 'PYTHONUNBUFFERED': '1'}


def straight_run(tiny_data, tmp_path, epochs=2, **kwargs):
    launch(train_args(AMIXER, tiny_data, tmp_path / 'straight', *OPTS, epochs=epochs, **kwargs))
    return final_checkpoint(tmp_path / 'straight', epochs - 1)


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol:
            assert torch.allclose(a[key], b[key], rtol=0, atol=atol), key
        else:
            assert torch.equal(a[key], b[key]), key


def wait_for_line(proc, text: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f'{text!r} never printed:\n' + ''.join(lines[-30:]))


def test_sigterm_mid_epoch_then_resume_is_exact(tiny_data, tmp_path):
    expected = straight_run(tiny_data, tmp_path)
    args = train_args(AMIXER, tiny_data, tmp_path / 'stopped', *OPTS, epochs=2)
    proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=UNBUFFERED)
    wait_for_line(proc, 'train epoch 0 [3/10]')
    proc.send_signal(signal.SIGTERM)
    out = ''.join(proc.stdout)
    assert proc.wait(timeout=120) == 0, out
    assert 'stopped by SIGTERM' in out and 'run the same command again' in out
    (mid,) = list_checkpoints(run_dir(tmp_path / 'stopped'))
    position = torch.load(mid, weights_only=True)
    assert position['epoch'] == 0 and 3 <= position['step'] < 10

    result = launch(args)
    assert f'resuming from {mid}' in result.stdout
    resumed = final_checkpoint(tmp_path / 'stopped', 1)
    assert_same_weights(expected['model'], resumed['model'])


def test_killed_worker_restarts_and_completes(tiny_data, tmp_path):
    """torchrun --max-restarts 1, one of 2 workers SIGKILLed mid-epoch: the group restarts from the newest
    (mid-epoch) checkpoint and ends with the weights of an uninterrupted run."""
    opts = (*OPTS, 'TRAIN.SAVE_INTERVAL_STEPS', '2')
    launch(train_args(AMIXER, tiny_data, tmp_path / 'straight', *opts, batch=8, epochs=2), nproc=2,
           launcher='torchrun')
    expected = final_checkpoint(tmp_path / 'straight', 1)

    args = train_args(AMIXER, tiny_data, tmp_path / 'killed', *opts, batch=8, epochs=2)
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             '--max-restarts=1', '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{free_port()}',
                             'main.py', *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=UNBUFFERED)
    wait_for_line(proc, 'train epoch 1 [5/10]')
    workers = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    out = ''.join(proc.stdout)
    assert proc.wait(timeout=240) == 0, out
    assert 'resuming from' in out
    assert_same_weights(expected['model'], final_checkpoint(tmp_path / 'killed', 1)['model'], atol=1e-6)


def test_truncated_newest_checkpoint_is_skipped(tiny_data, tmp_path):
    expected = straight_run(tiny_data, tmp_path, epochs=3)
    args = train_args(AMIXER, tiny_data, tmp_path / 'broken', *OPTS, epochs=2)
    launch(args)
    newest = list_checkpoints(run_dir(tmp_path / 'broken'))[-1]
    with open(newest, 'r+b') as f:
        f.truncate(os.path.getsize(newest) // 2)

    bad = launch(['--resume', newest] + args, check=False)
    assert bad.returncode != 0 and 'unreadable' in bad.stderr and newest in bad.stderr
    assert 'Traceback' not in bad.stderr

    result = launch(train_args(AMIXER, tiny_data, tmp_path / 'broken', *OPTS, epochs=3))
    assert f'auto-resume skips checkpoint {newest} is unreadable' in result.stdout
    assert_same_weights(expected['model'], final_checkpoint(tmp_path / 'broken', 2)['model'])


def test_nan_loss_is_skipped_and_logged(tiny_data, tmp_path):
    result = launch(train_args(AMIXER, tiny_data, tmp_path, *OPTS, 'DEBUG.NAN_LOSS_STEPS', '[3, 4]'))
    assert 'step 3: non-finite loss or gradients, update skipped (1 in a row)' in result.stdout
    assert 'step 4: non-finite loss or gradients, update skipped (2 in a row)' in result.stdout
    ckpt = final_checkpoint(tmp_path, 0)
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values() if v.is_floating_point())


def test_persistent_nan_stops_the_run_with_finite_checkpoints(tiny_data, tmp_path):
    launch(train_args(AMIXER, tiny_data, tmp_path, *OPTS))  # epoch 0 is fine
    nan_steps = str(list(range(10, 20)))
    result = launch(train_args(AMIXER, tiny_data, tmp_path, *OPTS, 'DEBUG.NAN_LOSS_STEPS', nan_steps,
                               'TRAIN.MAX_NONFINITE_STEPS', '3', epochs=2), check=False)
    assert result.returncode != 0
    assert '3 consecutive non-finite steps' in result.stderr and 'Traceback' not in result.stderr
    for path in list_checkpoints(run_dir(tmp_path)):
        state = torch.load(path, weights_only=True)['model']
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_failed_save_keeps_earlier_checkpoints(tiny_data, tmp_path):
    """A full disk: the next checkpoint's temporary file is /dev/full, where every write fails (ENOSPC)."""
    args = train_args(AMIXER, tiny_data, tmp_path, *OPTS, epochs=2)
    launch(train_args(AMIXER, tiny_data, tmp_path, *OPTS, epochs=1))
    first = os.path.join(run_dir(tmp_path), 'ckpt_epoch_0.pth')
    before = open(first, 'rb').read()
    os.symlink('/dev/full', os.path.join(run_dir(tmp_path), 'ckpt_epoch_1.pth.tmp'))
    result = launch(args, check=False)
    assert result.returncode != 0
    assert 'could not write checkpoint' in result.stderr and 'No space left on device' in result.stderr
    assert 'Traceback' not in result.stderr
    assert open(first, 'rb').read() == before
    assert list_checkpoints(run_dir(tmp_path)) == [first]
