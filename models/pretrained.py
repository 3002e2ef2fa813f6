"""Pretrained weights into a model of another image size, window size or class count: the one place for it.

`main.py --pretrained` uses `load_pretrained`; timm's `pretrained_cfg_overlay=dict(file=PATH)` route uses
`checkpoint_filter_fn`. Both take our checkpoints, the released Swin and ACmix ones (the same layout) and
the reference AMixer layout (converted by models.amixer.convert_reference_state_dict), and adapt every
tensor whose size follows from the geometry as the official code does:

- tables over a square grid of positions are resized bicubically on that grid (align_corners=False):
  Swin's and ACmix's relative position bias tables exactly as microsoft/Swin-Transformer's
  `load_pretrained` (utils.py) does, absolute position embeddings (AMixer-DeiT, Swin with APE) as
  facebookresearch/deit's fine-tuning does (main.py; the same interpolation), and by the same rule AMixer's
  relative weight banks and per-stage policy position embeddings `ape`;
- relative position indices and shifted-window masks are the model's own, built for its geometry;
- a head of another class count starts afresh at zero (weight and bias), as Swin's `load_pretrained` does.

Anything else that differs (another family, another width or depth) is an error naming every mismatched key.
"""
from __future__ import annotations

import logging
import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils import load_checkpoint, load_model_state
from .amixer import convert_reference_state_dict

__all__ = ['checkpoint_filter_fn', 'load_pretrained', 'adapt_state_dict', 'resize_grid_table',
           'to_project_layout']

_logger = logging.getLogger(__name__)

# Size-dependent tables: key pattern -> the dimension that runs over the points of a square grid.
GRID_TABLES = {
    re.compile(r'.*\.attn\.relative_position_bias_table'): 0,  # (2w-1)**2 offsets x heads (Swin, ACmix)
    re.compile(r'.*\.attn\.weight_bank'): 1,  # banks x (2w-1)**2 offsets (AMixer)
    re.compile(r'layers\.\d+\.ape'): 0,  # w**2 window positions x channels (AMixer's policy embedding)
    re.compile(r'absolute_pos_embed'): 1,  # 1 x patch grid x channels (AMixer-DeiT, Swin with APE)
}
# Buffers that follow from the geometry: always the model's own.
GEOMETRY_BUFFERS = ('.relative_position_index', '.attn_mask')
HEAD = ('head.weight', 'head.bias')


def to_project_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict in this project's layout: the reference AMixer code's (recognised by its mixer's name,
    `spatial_mixer`, or AMixer-DeiT's `spatil_mlp`) converted; ours, Swin's and ACmix's as they are."""
    if any('.spatial_mixer.' in key or '.spatil_mlp.' in key for key in state_dict):
        _logger.info('converted from the reference AMixer layout')
        return convert_reference_state_dict(state_dict)
    return state_dict


def resize_grid_table(table: Tensor, length: int, grid_dim: int) -> Tensor:
    """A table whose dimension `grid_dim` runs over a square grid (row-major), resized to `length` points.

    The other dimensions are channels of one bicubic interpolation (align_corners=False). For a bias table
    (offsets, heads) this is Swin's `load_pretrained` step for step: the table as a (1, heads, S, S) view,
    interpolated, then viewed back; for a (1, positions, C) embedding, DeiT's.
    """
    side, new_side = math.isqrt(table.shape[grid_dim]), math.isqrt(length)
    moved = table.movedim(grid_dim, -1)
    grid = moved.reshape(1, -1, side, side)
    resized = F.interpolate(grid, size=(new_side, new_side), mode='bicubic', align_corners=False)
    return resized.reshape(*moved.shape[:-1], length).movedim(-1, grid_dim)


def _resizable_dim(key: str, value: Tensor, target: Tensor | None) -> int | None:
    """The grid dimension along which the checkpoint's `value` resizes to the model's `target`, if `key` names a
    grid table and the two differ in the size of that square grid alone; else None."""
    dim = next((d for pattern, d in GRID_TABLES.items() if pattern.fullmatch(key)), None)
    if dim is None or target is None or value.ndim != target.ndim or value.shape == target.shape:
        return None
    same_elsewhere = all(a == b for i, (a, b) in enumerate(zip(value.shape, target.shape)) if i != dim)
    square = all(math.isqrt(n) ** 2 == n for n in (value.shape[dim], target.shape[dim]))
    return dim if same_elsewhere and square else None


def adapt_state_dict(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """`state_dict` (project layout) adapted to `model`'s image size, window sizes and class count.

    Tensors that cannot be adapted are left as they are, for load_model_state to name. A head of another
    class count is zeroed in `model` itself too, so that a loader which drops it instead (timm's, when the
    class count differs from its pretrained_cfg's) leaves the same head.
    """
    own = model.state_dict()
    adapted, resized = {}, []
    for key, value in state_dict.items():
        if key.endswith(GEOMETRY_BUFFERS):
            continue
        dim = _resizable_dim(key, value, own.get(key))
        if dim is not None:
            value = resize_grid_table(value.to(own[key].dtype), own[key].shape[dim], dim)
            resized.append(key)
        adapted[key] = value
    adapted.update({key: value for key, value in own.items() if key.endswith(GEOMETRY_BUFFERS)})
    if resized:
        _logger.info(f'resized to this model\'s geometry ({len(resized)}): {", ".join(resized)}')

    head = model.get_submodule('head')
    weight = state_dict.get('head.weight')
    if isinstance(head, nn.Linear) and weight is not None and weight.ndim == 2 \
            and weight.shape[1] == head.in_features and weight.shape[0] != head.out_features:
        _logger.warning(f'the head has {weight.shape[0]} classes, this model {head.out_features}: '
                        f'it starts afresh at zero')
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        adapted.update({'head.weight': head.weight.detach().clone(), 'head.bias': head.bias.detach().clone()})
    elif isinstance(head, nn.Identity) and any(key in adapted for key in HEAD):
        _logger.info('this model has no head: the checkpoint\'s is left out')
        adapted = {key: value for key, value in adapted.items() if key not in HEAD}
    return adapted


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load pretrained weights (a checkpoint with 'model', or a bare state dict) into `model`, adapted to it;
    UserError naming every key that does not fit."""
    checkpoint = load_checkpoint(path)
    state_dict = adapt_state_dict(to_project_layout(checkpoint.get('model', checkpoint)), model)
    load_model_state(model, state_dict, path)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's pretrained filter: the state dict adapted to `model`, complete and of the model's shapes.

    Loading it here checks every key strictly (UserError naming the mismatches) before timm's own load,
    which turns non-strict where it drops a classifier.
    """
    state_dict = adapt_state_dict(to_project_layout(state_dict.get('model', state_dict)), model)
    load_model_state(model, state_dict, 'pretrained weights')
    return state_dict
