"""Learning-rate schedules, updated before every optimizer step (not every epoch)."""
import math

import torch


class LRScheduler:
    """Linear warm-up from `warmup_lr` to `base_lr`, then cosine / linear decay to `min_lr`, or step
    decay by `decay_rate` every `decay_steps`. The rate is a pure function of the optimizer step, so
    resuming needs nothing but the step count.

    `warmup_prefix`: the decay starts when the warm-up ends and spans the remaining steps (timm's
    warmup_prefix, Swin since 2022, AMixer); else it spans the whole run from step 0 and the warm-up
    overrides its start (timm without prefix: ACmix, the released Swin weights).
    `warmup_inclusive`: the last warm-up step already runs at `base_lr` (np.linspace, AMixer); else
    `base_lr` comes one step after the warm-up (timm: Swin, ACmix)."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int,
                 base_lr: float, warmup_lr: float, min_lr: float, warmup_prefix: bool = True,
                 warmup_inclusive: bool = False, decay_steps: int = 0, decay_rate: float = 0.1):
        if name not in ('cosine', 'linear', 'step'):
            raise ValueError(f'unknown TRAIN.LR_SCHEDULER.NAME {name!r}: use cosine, linear or step')
        self.optimizer = optimizer
        self.name = name
        self.total_steps = max(total_steps, 1)
        self.warmup_steps = warmup_steps
        self.base_lr, self.warmup_lr, self.min_lr = base_lr, warmup_lr, min_lr
        self.warmup_prefix, self.warmup_inclusive = warmup_prefix, warmup_inclusive
        self.decay_steps, self.decay_rate = max(decay_steps, 1), decay_rate
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            # np.linspace(warmup_lr, base_lr, W) of a single step holds warmup_lr alone
            span = max(self.warmup_steps - 1, 1) if self.warmup_inclusive else self.warmup_steps
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / span
        start = self.warmup_steps if self.warmup_prefix else 0
        if self.name == 'step':
            return self.base_lr * self.decay_rate ** ((step - start) // self.decay_steps)
        progress = min((step - start) / max(self.total_steps - start, 1), 1.0)
        if self.name == 'cosine':
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
        return self.base_lr + (self.min_lr - self.base_lr) * progress

    def step_update(self, step: int) -> None:
        """Set the rate for optimizer step `step` (0-based, counted over the whole run)."""
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group['lr'] = lr

    def state_dict(self) -> dict:
        return {'step_count': self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_update(state['step_count'])


def build_scheduler(config, optimizer: torch.optim.Optimizer, steps_per_epoch: int, world_size: int) -> LRScheduler:
    """The config's rates are for a global batch of TRAIN.LR_SCALE_BATCH and scale linearly to the actual
    one (per-device batch x world size x accumulation steps), as Swin does; LR_SCALE_BATCH 0 (--lr) and
    SCALE_MIN_LR False (AMixer's absolute --min_lr) keep rates as given."""
    train = config.TRAIN
    global_batch = config.DATA.BATCH_SIZE * world_size * train.ACCUMULATION_STEPS
    lr_scale = global_batch / train.LR_SCALE_BATCH if train.LR_SCALE_BATCH else 1.0
    schedule = train.LR_SCHEDULER
    return LRScheduler(
        optimizer, schedule.NAME,
        total_steps=train.EPOCHS * steps_per_epoch,
        warmup_steps=train.WARMUP_EPOCHS * steps_per_epoch,
        base_lr=train.BASE_LR * lr_scale, warmup_lr=train.WARMUP_LR * lr_scale,
        min_lr=train.MIN_LR * (lr_scale if train.SCALE_MIN_LR else 1.0),
        warmup_prefix=schedule.WARMUP_PREFIX, warmup_inclusive=schedule.WARMUP_INCLUSIVE,
        decay_steps=schedule.DECAY_EPOCHS * steps_per_epoch, decay_rate=schedule.DECAY_RATE)
