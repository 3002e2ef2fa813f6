"""Distributed setup, RNG state, checkpoints and small helpers used by main.py."""
import ctypes
import logging
import os
import random
import re
import signal
from dataclasses import dataclass
from types import FrameType

import numpy as np
import torch
import torch.distributed as dist
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


def init_distributed(device_arg: str = 'auto', local_rank_arg: int | None = None) -> DistInfo:
    """Works under torchrun, `python -m torch.distributed.launch` (env vars and/or --local-rank) and
    plain `python`: a single process needs no process group."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', local_rank_arg if local_rank_arg is not None else 0))
    if device_arg == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for, but CUDA is not available on this machine')
    use_cuda = device_arg == 'cuda' or (device_arg == 'auto' and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        # input sizes are fixed: cuDNN times its convolution algorithms once per shape and keeps the fastest
        torch.backends.cudnn.benchmark = True
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
    if world_size > 1:
        # A key space of its own for each torchrun restart: in a store that outlives a failed attempt, the
        # new workers would otherwise read the addresses of the dead ones and fail to connect.
        store, _, _ = next(dist.rendezvous('env://', rank=rank, world_size=world_size))
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
