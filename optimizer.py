"""Optimizer with weight decay on weight matrices only: not on norms, biases and the model's
`no_weight_decay()` names / `no_weight_decay_keywords()` (position tables, layer scales, ...)."""
import torch
from torch import nn

# Devices with fused optimizer kernels: one pass over all parameters instead of several ops per tensor,
# which pays on the CPU too (docs/performance.md).
FUSED_DEVICES = ('cuda', 'cpu')


def _decay_groups(model: nn.Module, weight_decay: float) -> list:
    skip = set(getattr(model, 'no_weight_decay', set)())
    keywords = set(getattr(model, 'no_weight_decay_keywords', set)())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith('.bias') or name in skip or any(k in name for k in keywords):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{'params': decay, 'weight_decay': weight_decay},
            {'params': no_decay, 'weight_decay': 0.0}]


def build_optimizer(config, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    opt = config.TRAIN.OPTIMIZER
    groups = _decay_groups(model, config.TRAIN.WEIGHT_DECAY)
    lr = config.TRAIN.BASE_LR  # the scheduler sets the real value before the first step
    name = opt.NAME.lower()
    fused = device.type in FUSED_DEVICES
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt.BETAS), eps=opt.EPS, fused=fused)
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=opt.MOMENTUM, nesterov=True, fused=fused)
    raise ValueError(f'unknown TRAIN.OPTIMIZER.NAME {opt.NAME!r}: use adamw or sgd')
