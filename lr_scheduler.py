"""Learning-rate schedules, updated after every optimizer step (not every epoch)."""
import math

import torch


class LRScheduler:
    """Linear warm-up from `warmup_lr` to `base_lr`, then cosine / linear decay to `min_lr`, or step
    decay by `decay_rate` every `decay_steps`. The rate is a pure function of the optimizer step, so
    resuming needs nothing but the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int,
                 base_lr: float, warmup_lr: float, min_lr: float, decay_steps: int = 0, decay_rate: float = 0.1):
        if name not in ('cosine', 'linear', 'step'):
            raise ValueError(f'unknown TRAIN.LR_SCHEDULER.NAME {name!r}: use cosine, linear or step')
        self.optimizer = optimizer
        self.name = name
        self.total_steps = max(total_steps, 1)
        self.warmup_steps = warmup_steps
        self.base_lr, self.warmup_lr, self.min_lr = base_lr, warmup_lr, min_lr
        self.decay_steps, self.decay_rate = max(decay_steps, 1), decay_rate
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        if self.name == 'step':
            return self.base_lr * self.decay_rate ** ((step - self.warmup_steps) // self.decay_steps)
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
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


def build_scheduler(config, optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr_scale: float) -> LRScheduler:
    """`lr_scale` multiplies the config's rates (Swin's linear scaling to the global batch)."""
    train = config.TRAIN
    return LRScheduler(
        optimizer, train.LR_SCHEDULER.NAME,
        total_steps=train.EPOCHS * steps_per_epoch,
        warmup_steps=train.WARMUP_EPOCHS * steps_per_epoch,
        base_lr=train.BASE_LR * lr_scale, warmup_lr=train.WARMUP_LR * lr_scale, min_lr=train.MIN_LR * lr_scale,
        decay_steps=train.LR_SCHEDULER.DECAY_EPOCHS * steps_per_epoch,
        decay_rate=train.LR_SCHEDULER.DECAY_RATE)
