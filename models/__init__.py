"""Swin-family vision models: plain Swin, ACmix-Swin, AMixer-Swin and AMixer-DeiT.

Importing this package registers the published ACmix and AMixer models with timm.
"""
from .build import FAMILIES, build_model, from_reference, load_reference_state_dict, model_args

__all__ = ['FAMILIES', 'build_model', 'from_reference', 'load_reference_state_dict', 'model_args']
