"""Build a model from the config tree or from reference arguments, and register the published ones with timm."""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from yacs.config import CfgNode

from config import get_default_config, merge_yaml
from .acmix import acmix_swin
from .amixer import PUBLISHED_OPTIONS, REFERENCE_OPTION_DEFAULTS, amixer_deit, amixer_swin
from .pretrained import checkpoint_filter_fn
from .swin import swin

__all__ = ['FAMILIES', 'TIMM_MODELS', 'build_model', 'model_args', 'from_reference', 'checkpoint_filter_fn']

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


# The published models' sources, for their timm pretrained cfgs
PAPERS = {
    'acmix': dict(paper_ids='arXiv:2111.14556', paper_name='On the Integration of Self-Attention and Convolution',
                  origin_url='https://github.com/LeapLabTHU/ACmix'),
    'amixer': dict(paper_ids='arXiv:2209.13802',
                   paper_name='AMixer: Adaptive Weight Mixing for Self-attention Free Vision Transformers',
                   origin_url='https://github.com/raoyongming/AMixer'),
}


def published_config(name: str) -> CfgNode:
    """The config tree of a published model: the defaults merged with its configs/<name>.yaml."""
    config = get_default_config()
    merge_yaml(config, str(CONFIG_DIR / f'{name}.yaml'))
    return config


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained cfg of a published model, from its yaml: input size, test-time crop and
    normalisation, the final feature map's size, module names, paper. No weights are published through
    timm (a released checkpoint loads with pretrained_cfg_overlay=dict(file=...))."""
    config = published_config(name)
    family, kwargs = model_args(config)
    side = config.DATA.IMG_SIZE // kwargs['patch_size']
    for _ in range(len(kwargs.get('depths', [1])) - 1):
        side = math.ceil(side / 2)  # patch merging pads an odd side
    return dict(url='', num_classes=1000, input_size=(kwargs['in_chans'], config.DATA.IMG_SIZE, config.DATA.IMG_SIZE),
                pool_size=(side, side), fixed_input_size=True, crop_pct=config.TEST.CROP_PCT,
                interpolation=config.DATA.INTERPOLATION, mean=tuple(config.DATA.MEAN), std=tuple(config.DATA.STD),
                first_conv='patch_embed.proj', classifier='head', **PAPERS[family.split('_')[0]])


default_cfgs = generate_default_cfgs({name: pretrained_cfg(name) for name in TIMM_MODELS})


def build_family(family: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **kwargs) -> nn.Module:
    """FAMILIES[family](**kwargs), its tensors created on `device` (meta included) and cast to `dtype`."""
    with torch.device(device) if device is not None else nullcontext():
        model = FAMILIES[family](**kwargs)
    return model if dtype is None else model.to(dtype)


def _published_entrypoint(name: str) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, **kwargs) -> nn.Module:
        overrides = {key: kwargs[key] for key in ('pretrained_cfg', 'pretrained_cfg_overlay') if key in kwargs}
        if pretrained and not resolve_pretrained_cfg(name, **overrides).has_weights:
            raise ValueError(f'{name}: no pretrained weights are published through timm; load a released '
                             f"checkpoint with pretrained_cfg_overlay=dict(file='path/to/checkpoint.pth')")
        family, defaults = model_args(published_config(name))
        # features: the end of each stage, or of the last 3 blocks of the one-stage AMixer-DeiT (as timm's ViTs)
        out_indices = kwargs.pop('out_indices', 3 if family == 'amixer_deit' else tuple(range(len(defaults['depths']))))
        # a feature extractor is a backbone: it takes any input size
        kwargs.setdefault('dynamic_img_size', kwargs.get('features_only', False))
        return build_model_with_cfg(
            partial(build_family, family), name, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(feature_cls='getter', out_indices=out_indices), **{**defaults, **kwargs})

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f'{name} as published; keyword arguments override its configs/{name}.yaml.'
    return create


for _name in TIMM_MODELS:
    register_model(_published_entrypoint(_name))
