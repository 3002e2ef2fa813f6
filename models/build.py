"""Build a model from the config tree or from reference arguments, and register the published ones with timm."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch.nn as nn
from timm.models import load_pretrained, register_model
from torch import Tensor

from config import get_default_config, merge_yaml
from .acmix import acmix_swin
from .amixer import (PUBLISHED_OPTIONS, REFERENCE_OPTION_DEFAULTS, amixer_deit, amixer_swin,
                     convert_reference_state_dict)
from .pretrained import checkpoint_filter_fn
from .swin import swin

__all__ = ['FAMILIES', 'build_model', 'model_args', 'from_reference', 'load_reference_state_dict']

FAMILIES: dict[str, Callable[..., nn.Module]] = {
    'swin': swin,
    'acmix_swin': acmix_swin,
    'amixer_swin': amixer_swin,
    'amixer_deit': amixer_deit,
}
ALIASES = {'swin_acmix': 'acmix_swin'}  # the ACmix reference's MODEL.TYPE

# The published ACmix and AMixer models: timm names, each with its yaml in configs/. timm's own swin_*
# models are not registered again: they stay timm's, as the peers we measure against.
TIMM_MODELS = ('acmix_swin_tiny_patch4_window7_224', 'acmix_swin_small_patch4_window7_224',
               'amixer_t', 'amixer_s', 'amixer_b', 'amixer_deit_s')
CONFIG_DIR = Path(__file__).resolve().parent.parent / 'configs'


def model_args(config) -> tuple[str, dict[str, Any]]:
    """The family named by MODEL.TYPE and its constructor's keyword arguments from the config tree."""
    model = config.MODEL
    family = ALIASES.get(model.TYPE, model.TYPE)
    if family not in FAMILIES:
        raise ValueError(f'unknown MODEL.TYPE {model.TYPE!r}; known: {sorted(FAMILIES) + sorted(ALIASES)}')
    kwargs = dict(img_size=config.DATA.IMG_SIZE, num_classes=model.NUM_CLASSES or 1000,
                  drop_rate=model.DROP_RATE, drop_path_rate=model.DROP_PATH_RATE,
                  use_checkpoint=config.TRAIN.USE_CHECKPOINT)
    amixer = model.AMIXER
    if family == 'amixer_deit':
        deit = model.DEIT
        return family, dict(kwargs, patch_size=deit.PATCH_SIZE, in_chans=deit.IN_CHANS, embed_dim=deit.EMBED_DIM,
                            depth=deit.DEPTH, num_heads=deit.NUM_HEADS, mlp_ratio=deit.MLP_RATIO,
                            k=deit.NUM_BANKS, init_values=amixer.INIT_VALUES,
                            adapter_reduction=amixer.ADAPTER_REDUCTION)
    s = model.SWIN
    kwargs.update(patch_size=s.PATCH_SIZE, in_chans=s.IN_CHANS, embed_dim=s.EMBED_DIM, depths=list(s.DEPTHS),
                  num_heads=list(s.NUM_HEADS), window_size=list(s.STAGE_WINDOW_SIZES) or s.WINDOW_SIZE,
                  mlp_ratio=s.MLP_RATIO, ape=s.APE, patch_norm=s.PATCH_NORM)
    if family == 'amixer_swin':
        kwargs.update(k=amixer.K, policy_ape=amixer.POLICY_APE, init_values=amixer.INIT_VALUES,
                      adapter_reduction=amixer.ADAPTER_REDUCTION)
    else:
        kwargs.update(qkv_bias=s.QKV_BIAS, qk_scale=s.QK_SCALE)
    return family, kwargs


def build_model(config) -> nn.Module:
    """The model that MODEL.TYPE names, shaped by the config tree (MODEL.NUM_CLASSES 0 builds 1000 classes)."""
    family, kwargs = model_args(config)
    return FAMILIES[family](**kwargs)


def from_reference(family: str, reference_kwargs: dict[str, Any]) -> nn.Module:
    """The project model equivalent to the reference class of `family` built with `reference_kwargs`."""
    kwargs = dict(reference_kwargs)
    for option, default in REFERENCE_OPTION_DEFAULTS.get(family, {}).items():
        value = kwargs.pop(option, default)
        if value != PUBLISHED_OPTIONS[option]:
            raise ValueError(f'{family}: only {option}={PUBLISHED_OPTIONS[option]!r} is implemented, not {value!r}')
    return FAMILIES[family](**kwargs)


def load_reference_state_dict(model: nn.Module, family: str, state_dict: dict[str, Tensor]) -> None:
    """Load a reference implementation's state dict (strict): Swin's and ACmix's layout is ours already."""
    if family.startswith('amixer'):
        state_dict = convert_reference_state_dict(state_dict)
    model.load_state_dict(state_dict)


def _published_entrypoint(name: str) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
               **kwargs) -> nn.Module:
        # no weights are published through timm: pretrained=True loads a file, adapted to the model
        file = (pretrained_cfg_overlay or {}).get('file')
        if pretrained and not file:
            raise ValueError(f'{name}: no pretrained weights are published through timm; '
                             f'pass pretrained_cfg_overlay=dict(file=PATH)')
        config = get_default_config()
        merge_yaml(config, str(CONFIG_DIR / f'{name}.yaml'))
        family, defaults = model_args(config)
        model = FAMILIES[family](**{**defaults, **kwargs})
        if pretrained:
            load_pretrained(model, pretrained_cfg={'file': file}, filter_fn=checkpoint_filter_fn)
        return model

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f'{name} as published; keyword arguments override its configs/{name}.yaml.'
    return create


for _name in TIMM_MODELS:
    register_model(_published_entrypoint(_name))
