"""Swin-family vision models: plain Swin, ACmix-Swin, AMixer-Swin and AMixer-DeiT.

Importing this package registers the published ACmix and AMixer models with timm.
"""
from .build import FAMILIES, build_model, from_reference, model_args
from .pretrained import to_project_layout

__all__ = ['FAMILIES', 'build_model', 'from_reference', 'model_args', 'to_project_layout']
