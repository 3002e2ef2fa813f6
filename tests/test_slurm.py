"""Launching under SLURM's srun: the process layout read from SLURM's variables; two CPU tasks started with
srun's variables by hand train as one group, also across a SIGTERM sent as SLURM sends it; a clear error
where the layout is incomplete."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers import AMIXER, ROOT, final_checkpoint, free_port, launch, run_dir, train_args
from utils import UserError, first_slurm_host, launch_layout, list_checkpoints

LAUNCH_VARIABLES = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def is_launch_variable(name: str) -> bool:
    return name.startswith('SLURM_') or name in LAUNCH_VARIABLES


def set_launch_variables(monkeypatch, variables: dict) -> None:
    """Exactly `variables` of SLURM's and torchrun's in this process's environment."""
    for name in filter(is_launch_variable, list(os.environ)):
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize('nodelist, first', [
    ('gpu7', 'gpu7'),
    ('node[01-03,7]', 'node01'),
    ('node[7,9-10],login1', 'node7'),
    ('login1,node[3-4]', 'login1'),
    ('rack[2-3]-gpu[009-012]', 'rack2-gpu009'),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


# A step of srun as SLURM describes it to task 3 of 4 (srun -N 2 --ntasks-per-node 2), torchrun's variables
# alone, both at once, and single processes inside allocations.
STEP = {'SLURM_JOB_ID': '123456', 'SLURM_NTASKS': '4', 'SLURM_STEP_NUM_TASKS': '4', 'SLURM_PROCID': '3',
        'SLURM_LOCALID': '1', 'SLURM_STEP_NODELIST': 'gpu[07-08]', 'SLURM_JOB_NODELIST': 'gpu[05,07-08]'}
TORCHRUN = {'WORLD_SIZE': '2', 'RANK': '1', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'h', 'MASTER_PORT': '29500'}


@pytest.mark.parametrize('variables, layout', [
    (STEP, (3, 4, 1, 'tcp://gpu07:13456')),  # port 10000 + 123456 % 20000
    ({**STEP, 'MASTER_PORT': '4242'}, (3, 4, 1, 'tcp://gpu07:4242')),
    ({k: v for k, v in STEP.items() if k != 'SLURM_STEP_NODELIST'}, (3, 4, 1, 'tcp://gpu05:13456')),
    (TORCHRUN, (1, 2, 1, 'env://')),
    ({**STEP, **TORCHRUN}, (1, 2, 1, 'env://')),  # torchrun inside an srun step: torchrun's layout
    ({}, (0, 1, 0, 'env://')),
    # the batch script of a one-task sbatch job; a shell in the interactive step of `salloc -n 8`
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1', 'SLURM_PROCID': '0', 'SLURM_JOB_NODELIST': 'a[1-2]'},
     (0, 1, 0, 'env://')),
    ({'SLURM_NTASKS': '8', 'SLURM_STEP_NUM_TASKS': '1', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0',
      'SLURM_STEP_NODELIST': 'a1'}, (0, 1, 0, 'env://')),
])
def test_launch_layout(monkeypatch, variables, layout):
    set_launch_variables(monkeypatch, variables)
    assert launch_layout() == layout


@pytest.mark.parametrize('variables, named', [
    ({'SLURM_NTASKS': '4', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0', 'SLURM_JOB_NODELIST': 'a[1-2]'},
     'SLURM_STEP_NUM_TASKS'),  # `python main.py` in the batch script of a 4-task job: no step
    ({k: v for k, v in STEP.items() if k != 'SLURM_LOCALID'}, 'SLURM_LOCALID'),
    ({k: v for k, v in STEP.items() if 'NODELIST' not in k}, 'a node list'),
    ({**STEP, 'SLURM_PROCID': '4'}, 'SLURM_PROCID is 4, outside the 4 tasks'),
])
def test_launch_layout_names_what_is_missing(monkeypatch, variables, named):
    set_launch_variables(monkeypatch, variables)
    with pytest.raises(UserError, match=named):
        launch_layout()


def srun_step(args: list[str], ntasks: int, without: str = '') -> list[subprocess.Popen]:
    """main.py as `srun --ntasks NTASKS` on one node starts it: SLURM's variables (less `without`), no torchrun's;
    each task leads a process group of its own, as each task of a step has a process container of its own."""
    environ = {k: v for k, v in os.environ.items() if not is_launch_variable(k)}
    step = {'SLURM_JOB_ID': '1', 'SLURM_NTASKS': str(ntasks), 'SLURM_STEP_NUM_TASKS': str(ntasks),
            'SLURM_STEP_NODELIST': 'localhost', 'SLURM_JOB_NODELIST': 'localhost', 'MASTER_PORT': str(free_port()),
            'OMP_NUM_THREADS': '1',  # as torchrun sets for its workers: the same thread count, the same sums
            'PYTHONUNBUFFERED': '1'}
    tasks = []
    for task in range(ntasks):
        env = {**environ, **step, 'SLURM_PROCID': str(task), 'SLURM_LOCALID': str(task)}
        env.pop(without, None)
        tasks.append(subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return tasks


def finish(tasks: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each task."""
    outputs = [task.communicate(timeout=300) for task in tasks]
    return [(task.returncode, out, err) for task, (out, err) in zip(tasks, outputs)]


def test_srun_tasks_train_as_one_group_and_survive_sigterm(tiny_data, tmp_path):
    """Two tasks of a step train as one process group and reach the weights of torchrun's two workers, though
    SIGTERM stopped them mid-epoch, sent as SLURM sends it (to every process of the step, loader workers too),
    and the same step was started again."""
    launch(train_args(AMIXER, tiny_data, tmp_path / 'torchrun', batch=8), nproc=2, launcher='torchrun')
    expected = final_checkpoint(tmp_path / 'torchrun', 0)

    args = train_args(AMIXER, tiny_data, tmp_path / 'srun', 'DATA.NUM_WORKERS', '2', 'PRINT_FREQ', '1', batch=8)
    tasks = srun_step(args, ntasks=2)
    for line in tasks[0].stdout:  # rank 0 logs to the console
        if 'train epoch 0 [3/10]' in line:
            break
    else:
        raise AssertionError(f'the step never reached step 3: {finish(tasks)}')
    for task in tasks:
        os.killpg(task.pid, signal.SIGTERM)
    for rc, out, err in finish(tasks):
        assert rc == 0, out[-3000:] + err[-5000:]
    (stopped,) = list_checkpoints(run_dir(tmp_path / 'srun'))
    assert 3 <= torch.load(stopped, weights_only=True)['step'] < 10

    for rc, out, err in finish(srun_step(args, ntasks=2)):
        assert rc == 0, out[-3000:] + err[-5000:]
    for rank in (0, 1):
        with open(os.path.join(run_dir(tmp_path / 'srun'), f'log_rank{rank}.txt')) as f:
            log = f.read()
        assert f'rank {rank}/2 on cpu' in log and 'stopped by SIGTERM' in log and f'resuming from {stopped}' in log
    got = final_checkpoint(tmp_path / 'srun', 0)
    assert got['step'] == expected['step'] == 160 // (8 * 2)
    for key, value in expected['model'].items():
        assert torch.equal(value, got['model'][key]), key


def test_incomplete_srun_step_stops_without_training(tiny_data, tmp_path):
    """A step of two tasks whose tasks lack SLURM_PROCID: each stops with the reason, none trains alone."""
    args = train_args(AMIXER, tiny_data, tmp_path, batch=8)
    for rc, _, err in finish(srun_step(args, ntasks=2, without='SLURM_PROCID')):
        assert rc != 0
        assert 'SLURM reports 2 tasks' in err and 'SLURM_PROCID' in err and 'Traceback' not in err
    assert not os.path.exists(run_dir(tmp_path))
