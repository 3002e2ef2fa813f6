"""Distributed setup, RNG state, checkpoints and small helpers used by main.py."""
import contextlib
import ctypes
import logging
import os
import random
import re
import signal
import statistics
import time
from dataclasses import dataclass
from types import FrameType
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode


class UserError(Exception):
    """A problem the user can fix (bad path, bad config, bad checkpoint): reported without a traceback."""


# -----------------------------------------------------------------------------
# Distributed
# -----------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list, which SLURM writes compressed: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    item = re.match(r'(?:[^,\[]|\[[^\]]*\])+', nodelist)
    if item is None:
        raise UserError(f'no host in the SLURM node list {nodelist!r}')
    # SLURM sorts what a bracket holds, so the first host takes the first number of each bracket
    return re.sub(r'\[([^\]]*)\]', lambda m: re.split(r'[-,]', m.group(1))[0], item.group(0))


def launch_layout(local_rank_arg: int | None = None) -> tuple[int, int, int, str]:
    """(rank, world size, local rank, rendezvous URL) of this process: from torchrun's variables (which
    torch.distributed.launch sets too), else from those srun gives each task of a step; neither: one process."""
    env = os.environ
    # In a step, the step's task count (a shell in the interactive step of a 16-task salloc has SLURM_NTASKS
    # 16, yet is one process); outside a step, the allocation's.
    tasks = int(env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS') or 1)
    if 'WORLD_SIZE' in env or tasks == 1:
        return (int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)),
                int(env.get('LOCAL_RANK', local_rank_arg or 0)), 'env://')
    nodelist = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or env.get('SLURM_NODELIST')
    missing = [name for name in ('SLURM_STEP_NUM_TASKS', 'SLURM_PROCID', 'SLURM_LOCALID') if not env.get(name)]
    if not nodelist:
        missing.append('a node list (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST or SLURM_NODELIST)')
    if missing:
        raise UserError(f'SLURM reports {tasks} tasks, but this process has no {", ".join(missing)}: it is not '
                        'one task of an srun step and cannot join their process group. Launch one task per GPU '
                        'with `srun python main.py ...` (or use torchrun), or one process with `srun --ntasks 1 ...`')
    rank = int(env['SLURM_PROCID'])
    if not 0 <= rank < tasks:
        raise UserError(f'SLURM_PROCID is {rank}, outside the {tasks} tasks of the step (SLURM_STEP_NUM_TASKS)')
    # Jobs sharing a node need ports of their own: one from the job id, below Linux's ephemeral ports (32768+).
    port = int(env['MASTER_PORT']) if 'MASTER_PORT' in env else 10000 + int(env.get('SLURM_JOB_ID', 0)) % 20000
    return rank, tasks, int(env['SLURM_LOCALID']), f'tcp://{first_slurm_host(nodelist)}:{port}'


def init_distributed(device_arg: str = 'auto', local_rank_arg: int | None = None) -> DistInfo:
    """Works under torchrun, `python -m torch.distributed.launch` (env vars and/or --local-rank), srun
    (one task per GPU) and plain `python`: a single process needs no process group."""
    rank, world_size, local_rank, rendezvous_url = launch_layout(local_rank_arg)
    if device_arg == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for, but CUDA is not available on this machine')
    use_cuda = device_arg == 'cuda' or (device_arg == 'auto' and torch.cuda.is_available())
    if use_cuda:
        # srun's --gpus-per-task or --gpu-bind can leave each task only its own GPU to see
        device = torch.device('cuda', local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        # input sizes are fixed: cuDNN times its convolution algorithms once per shape and keeps the fastest
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device('cpu')
    if world_size > 1:
        # A key space of its own for each torchrun restart: in a store that outlives a failed attempt, the
        # new workers would otherwise read the addresses of the dead ones and fail to connect.
        store, _, _ = next(dist.rendezvous(rendezvous_url, rank=rank, world_size=world_size))
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        dist.init_process_group('nccl' if use_cuda else 'gloo', store=dist.PrefixStore(f'attempt_{attempt}', store),
                                rank=rank, world_size=world_size, device_id=device if use_cuda else None)
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag read between optimizer steps, so the step in flight finishes
    and a checkpoint is written before the process exits."""

    def __init__(self):
        self.signal_name = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (a collective: call it on all ranks at once)."""
        flag = torch.tensor([float(self.signal_name is not None)], device=device)
        return bool(all_reduce_sum(flag).item() > 0)


# -----------------------------------------------------------------------------
# Randomness
# -----------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every RNG the training loop draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': np_state[2],
                  'has_gauss': np_state[3], 'cached_gaussian': np_state[4]},
        'python': list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    random.setstate((3, tuple(state['python']), None))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# -----------------------------------------------------------------------------
# Checkpoints
# -----------------------------------------------------------------------------
_CKPT_RE = re.compile(r'^ckpt_epoch_(\d+)(?:_step_(\d+))?\.pth$')


def run_folder(config: CfgNode) -> str:
    """Where a run writes its config, logs, metrics and checkpoints: OUTPUT/MODEL.NAME/TAG."""
    return os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """`ckpt_epoch_{epoch}.pth` once epoch `epoch` is complete; `ckpt_epoch_{epoch}_step_{step}.pth`
    after `step` optimizer steps of it."""
    return f'ckpt_epoch_{epoch}_step_{step}.pth' if step else f'ckpt_epoch_{epoch}.pth'


def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint paths in `output_dir`, oldest training position first."""
    found = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        m = _CKPT_RE.match(name)
        if m:
            epoch, step = int(m.group(1)), m.group(2)
            position = (epoch, int(step)) if step else (epoch + 1, 0)
            found.append((position, os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def save_checkpoint(state: dict, path: str) -> None:
    """Write atomically: a crash or a full disk leaves either the old file or the new one, never half."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f'could not write checkpoint {path}: {e}. The earlier checkpoints are intact.') from e


def prune_checkpoints(output_dir: str, keep: int) -> None:
    for path in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        os.remove(path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated, empty or not a checkpoint at all: pickle/zip raise many types
        raise UserError(f'checkpoint {path} is unreadable ({type(e).__name__}: {e})') from e


def find_resume_checkpoint(output_dir: str, logger: logging.Logger) -> tuple[str, dict] | None:
    """The newest readable checkpoint in `output_dir`; unreadable ones are skipped with a warning."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return path, load_checkpoint(path)
        except UserError as e:
            logger.warning(f'auto-resume skips {e}')
    return None


def load_model_state(model: nn.Module, state_dict: dict, source: str) -> None:
    """Strict load that names every mismatched key, so a checkpoint of another model never loads silently."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
                    for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def listed(title: str, keys: list[str]) -> str:
            return f'\n  {title} ({len(keys)}): ' + ', '.join(keys[:20]) + (' ...' if len(keys) > 20 else '') if keys else ''
        raise UserError(f'{source} does not match this model (MODEL.TYPE / MODEL.NAME / sizes differ?):'
                        + listed('missing', missing) + listed('unexpected', unexpected)
                        + listed('shape mismatch (checkpoint vs model)', shapes))
    model.load_state_dict(state_dict)


def weights_are_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse and serve blocks up to 32 MB from its heap; True if it took.

    On CPU every tensor comes from malloc. By default glibc maps large blocks afresh and returns freed memory
    to the system, so each training step pays page faults for its activations until glibc's adaptive
    thresholds have grown, which takes many steps; this sets the state they grow to from the start.
    A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, from glibc's malloc.h
    return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20))


class AverageMeter:
    """Running average of a scalar."""

    def __init__(self):
        self.sum, self.count, self.val = 0.0, 0, 0.0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


# -----------------------------------------------------------------------------
# Throughput
# -----------------------------------------------------------------------------
THROUGHPUT_MODES = ('inference', 'training')


def median_milliseconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median time of `fn` over `reps` calls after `warmup` calls: CUDA events on a GPU, the wall clock elsewhere
    (the GPU check tools time single operations with it)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)


class ThroughputRunner:
    """One model's inference and training steps on fixed synthetic batches, timed one step at a time.

    `main.py --throughput` and tools/benchmark.py both time models with it. A training step is forward,
    cross-entropy, backward and an optimizer step (through `scaler`, main.py's float16 loss scaling).
    On a GPU it also records the peak memory of each mode as if the model ran alone: the tensors it keeps
    between steps (weights, buffers, optimizer state, its batches) plus the most that one step allocated.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 scaler: torch.amp.GradScaler | None = None):
        self.model, self.optimizer, self.batches, self.autocast = model, optimizer, batches, autocast
        self.forward = model if forward is None else forward  # e.g. torch.compile's module (it has no truth value)
        self.scaler = scaler or torch.amp.GradScaler(enabled=False)
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == 'cuda'
        self.peak_bytes = dict.fromkeys(THROUGHPUT_MODES, 0)

    def images_per_second(self, mode: str) -> float:
        """Run and time one step of `mode` (inference or training)."""
        images, labels = self.batches[mode]
        self.model.train(mode == 'training')
        self.synchronize()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            kept, allocated = self.kept_bytes(), torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        if mode == 'inference':
            with torch.no_grad(), self.autocast():
                self.forward(images)
        else:
            with self.autocast():
                loss = F.cross_entropy(self.forward(images), labels)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        self.synchronize()
        seconds = time.perf_counter() - start
        if self.cuda:
            step_bytes = torch.cuda.max_memory_allocated(self.device) - allocated
            self.peak_bytes[mode] = max(self.peak_bytes[mode], kept + step_bytes)
        return len(images) / seconds

    def kept_bytes(self) -> int:
        """Bytes of the tensors this model keeps between steps (other models in memory are not counted)."""
        state = (t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t))
        batches = (t for pair in self.batches.values() for t in pair)
        tensors = [*self.model.parameters(), *self.model.buffers(), *state, *batches]
        return sum(t.numel() * t.element_size() for t in tensors)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
