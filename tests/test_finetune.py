"""Fine-tuning at a new image and window size: 224/window-7 weights into 384/window-12 models of every family,
through main.py --pretrained and timm.create_model.

Resized tables are checked against a bicubic interpolation written here in numpy from its definition (Keys'
cubic convolution, a = -0.75, align_corners=False, border samples repeated), never against our own output.
Small widths and 16-pixel patches keep the real 224 -> 384 geometry cheap: patch grids of 14 and 24.
"""
import json
import math
import os
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from config import get_default_config, merge_yaml
from models import build_model, from_reference
from models.pretrained import load_pretrained, resize_grid_table
from tests.helpers import AMIXER, final_checkpoint, launch, train_args
from utils import UserError

A = -0.75  # the cubic convolution coefficient of PyTorch's bicubic mode (and OpenCV's)

SWIN_SMALL = ['MODEL.SWIN.PATCH_SIZE', '16', 'MODEL.SWIN.EMBED_DIM', '16', 'MODEL.SWIN.DEPTHS', '[2, 2]',
              'MODEL.SWIN.NUM_HEADS', '[1, 2]']
GEOMETRY = {  # one small model per family; Swin with APE and AMixer with policy embeddings cover every table
    'swin': SWIN_SMALL + ['MODEL.SWIN.APE', 'True'],
    'acmix_swin': SWIN_SMALL,
    'amixer_swin': SWIN_SMALL + ['MODEL.AMIXER.POLICY_APE', 'True'],
    'amixer_deit': ['MODEL.DEIT.PATCH_SIZE', '16', 'MODEL.DEIT.EMBED_DIM', '32', 'MODEL.DEIT.DEPTH', '1',
                    'MODEL.DEIT.NUM_HEADS', '4', 'MODEL.DEIT.NUM_BANKS', '4'],
}
FAMILIES = list(GEOMETRY)


def family_opts(family: str, img_size: int, window: int, num_classes: int = 0) -> list[str]:
    return ['MODEL.TYPE', family, 'DATA.IMG_SIZE', str(img_size), 'MODEL.SWIN.WINDOW_SIZE', str(window),
            'MODEL.NUM_CLASSES', str(num_classes), *GEOMETRY[family]]


def family_model(family: str, img_size: int, window: int, num_classes: int, *opts: str):
    config = get_default_config()
    merge_yaml(config, AMIXER)
    config.defrost()
    config.merge_from_list(family_opts(family, img_size, window, num_classes) + list(opts))
    return build_model(config)


def perturbed_state(model) -> dict:
    """The model's state dict with noise on every parameter, so that no value is its initial one."""
    generator = torch.Generator().manual_seed(0)
    names = {name for name, _ in model.named_parameters()}
    return {key: value + 0.1 * torch.randn(value.shape, generator=generator) if key in names else value
            for key, value in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# The interpolation, from its definition
# ----------------------------------------------------------------------------------------------------

def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bicubic resampling with align_corners=False."""
    def near(d):  # Keys' kernel for |d| <= 1
        return ((A + 2) * d - (A + 3)) * d * d + 1

    def far(d):  # ... and for 1 < |d| < 2
        return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A

    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = (o + 0.5) * n_in / n_out - 0.5  # the output pixel's centre in input coordinates
        x0 = math.floor(x)
        t = x - x0
        for offset, weight in zip((-1, 0, 1, 2), (far(1 + t), near(t), near(1 - t), far(2 - t))):
            matrix[o, min(max(x0 + offset, 0), n_in - 1)] += weight
    return matrix


def numpy_resize(table: torch.Tensor, length: int, grid_dim: int) -> torch.Tensor:
    """`table` resized along its grid dimension (a square grid, row-major), in float64."""
    side, new_side = math.isqrt(table.shape[grid_dim]), math.isqrt(length)
    moved = table.movedim(grid_dim, -1).double().numpy()
    grids = moved.reshape(-1, side, side)
    m = bicubic_matrix(side, new_side)
    resized = np.einsum('oi,cij,pj->cop', m, grids, m).reshape(*moved.shape[:-1], length)
    return torch.from_numpy(resized).movedim(-1, grid_dim)


def grid_dim(key: str) -> int | None:
    """The dimension of a state-dict entry that runs over a square grid of positions, if it has one."""
    if key.endswith('relative_position_bias_table') or re.fullmatch(r'layers\.\d+\.ape', key):
        return 0
    if key.endswith('weight_bank') or key == 'absolute_pos_embed':
        return 1
    return None


def test_bicubic_of_a_single_peak_worked_out_by_hand():
    """A 3x3 table (window 2) to 5x5 (window 3). Output 2 samples input 1 exactly: x = 2.5 * 3/5 - 0.5 = 1.
    Output 0 sits at x = -0.2: taps at -2, -1, 0 (clamped to 0) and 1, weighted by Keys' kernel at distances
    1.8, 0.8, 0.2 and 1.2; the peak gets ((a*1.2 - 5a)*1.2 + 8a)*1.2 - 4a = -0.096, so corner = 0.096**2."""
    peak = torch.zeros(3, 3)
    peak[1, 1] = 1.
    resized = resize_grid_table(peak.reshape(9, 1), 25, 0).reshape(5, 5)
    assert resized[2, 2].item() == 1.
    assert resized[0, 0].item() == pytest.approx(0.009216, abs=1e-7)
    assert resized[0, 2].item() == pytest.approx(-0.096, abs=1e-7)


@pytest.mark.parametrize('shape, grid_dim_', [((13 * 13, 3), 0), ((4, 27 * 27), 1), ((1, 14 * 14, 8), 1)],
                         ids=['bias_table', 'weight_bank', 'position_embedding'])
def test_resized_tables_equal_bicubic_from_its_definition(shape, grid_dim_):
    table = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    length = {13 * 13: 23 * 23, 27 * 27: 47 * 47, 14 * 14: 24 * 24}[shape[grid_dim_]]
    resized = resize_grid_table(table, length, grid_dim_)
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized.double(), numpy_resize(table, length, grid_dim_), rtol=0, atol=1e-5)


def test_bias_tables_resize_bit_for_bit_as_swins_load_pretrained():
    table = torch.randn(13 * 13, 3, generator=torch.Generator().manual_seed(2))
    # microsoft/Swin-Transformer utils.py load_pretrained: the (L, heads) table viewed as (1, heads, S, S),
    # interpolated bicubically to the new side, viewed back
    swin = F.interpolate(table.permute(1, 0).view(1, 3, 13, 13), size=(23, 23), mode='bicubic')
    assert torch.equal(resize_grid_table(table, 23 * 23, 0), swin.view(3, 23 * 23).permute(1, 0))


# ----------------------------------------------------------------------------------------------------
# Whole checkpoints
# ----------------------------------------------------------------------------------------------------

def assert_adapted(model, checkpoint: dict, fresh) -> set[str]:
    """Every entry of `model` is the checkpoint's, resized where its grid differs; geometry buffers are
    `fresh`'s (a model built for the new geometry); the head, of another class count, is zero. Returns the
    resized keys."""
    resized = set()
    for key, value in model.state_dict().items():
        if key.endswith(('relative_position_index', 'attn_mask')):
            assert torch.equal(value, fresh.state_dict()[key]), key
        elif key.startswith('head.'):
            assert checkpoint[key].shape[0] != value.shape[0] and not value.any(), key
        elif checkpoint[key].shape != value.shape:
            resized.add(key)
            expected = numpy_resize(checkpoint[key], value.shape[grid_dim(key)], grid_dim(key))
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-5, msg=key)
        else:
            assert torch.equal(value, checkpoint[key]), key
    return resized


EXPECTED_RESIZED = {  # the grid tables each small model has
    'swin': r'absolute_pos_embed|layers\.[01]\.blocks\.[01]\.attn\.relative_position_bias_table',
    'acmix_swin': r'layers\.[01]\.blocks\.[01]\.attn\.relative_position_bias_table',
    'amixer_swin': r'layers\.[01]\.ape|layers\.[01]\.blocks\.[01]\.attn\.weight_bank',
    'amixer_deit': r'absolute_pos_embed|layers\.0\.blocks\.0\.attn\.weight_bank',
}


@pytest.mark.parametrize('family', FAMILIES)
def test_load_pretrained_adapts_every_size_dependent_tensor_and_only_the_head_starts_afresh(family, tmp_path):
    checkpoint = perturbed_state(family_model(family, 224, 7, 1000))
    torch.save({'model': checkpoint}, tmp_path / 'w7.pth')
    model = family_model(family, 384, 12, 10)
    load_pretrained(model, str(tmp_path / 'w7.pth'))
    resized = assert_adapted(model, checkpoint, family_model(family, 384, 12, 10))
    assert resized == {key for key in checkpoint if re.fullmatch(EXPECTED_RESIZED[family], key)}
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 10)


@pytest.mark.parametrize('golden, window', [('swin_small_geometry', 8), ('amixer_swin_policy_ape', 8),
                                            ('amixer_deit_small_geometry', None)])
def test_released_and_reference_layouts_fine_tune_at_another_size(golden, window, tmp_path):
    """Swin's released layout (with its index and mask buffers) and the reference AMixer layouts, from the
    golden files: 64 -> 128 pixels with window 4 -> 8 (AMixer-DeiT: 32 -> 48 pixels, its grid 8 -> 12)."""
    reference = torch.load(os.path.join('tests', 'data', 'golden', f'{golden}.pt'), weights_only=True)
    torch.save({'model': reference['state_dict']}, tmp_path / 'reference.pth')
    kwargs = dict(reference['reference_kwargs'], img_size=2 * reference['reference_kwargs']['img_size'])
    if window is None:
        kwargs['img_size'] = 48
    else:
        kwargs['window_size'] = window
    model = from_reference(reference['family'], kwargs)
    load_pretrained(model, str(tmp_path / 'reference.pth'))
    state = model.state_dict()
    # one table of each kind, against the reference layout's own tensors
    if reference['family'] == 'swin':
        key = 'layers.0.blocks.1.attn.relative_position_bias_table'
        expected = numpy_resize(reference['state_dict'][key], 15 * 15, 0)
    elif reference['family'] == 'amixer_swin':
        key = 'layers.1.ape'
        expected = numpy_resize(reference['state_dict'][key], 8 * 8, 0)
    else:
        key = 'absolute_pos_embed'
        expected = numpy_resize(reference['state_dict']['pos_embed'].flatten(1, 2), 12 * 12, 1)
    torch.testing.assert_close(state[key].double(), expected, rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def micro_data(tiny_data, tmp_path_factory):
    """Two training images and one validation image of each digit, as list files: at 384 pixels, enough."""
    root = tmp_path_factory.mktemp('micro_digits')
    for split, per_class in (('train', 2), ('val', 1)):
        os.symlink(os.path.join(tiny_data, split), root / split)
        with open(os.path.join(tiny_data, f'{split}_list.txt')) as f:
            lines = f.readlines()
        kept = [[line for line in lines if line.split()[-1] == str(label)][:per_class] for label in range(10)]
        (root / f'{split}_list.txt').write_text(''.join(sum(kept, [])))
    return str(root)


@pytest.mark.parametrize('family', FAMILIES)
def test_main_fine_tunes_a_224_window7_checkpoint_at_384_window12(family, micro_data, tmp_path):
    checkpoint = perturbed_state(family_model(family, 224, 7, 1000))
    torch.save({'model': checkpoint}, tmp_path / 'w7.pth')
    result = launch(train_args(AMIXER, micro_data, tmp_path, *family_opts(family, 384, 12), batch=10,
                               flags=['--pretrained', str(tmp_path / 'w7.pth')]))
    assert 'resized to this model\'s geometry' in result.stdout
    assert 'the head has 1000 classes, this model 10: it starts afresh at zero' in result.stdout
    trained = final_checkpoint(tmp_path, 0)
    assert trained['step'] == 2
    fresh = family_model(family, 384, 12, 10).state_dict()
    assert {k: v.shape for k, v in trained['model'].items()} == {k: v.shape for k, v in fresh.items()}


def test_main_eval_of_pretrained_weights_evaluates_them_as_the_ema_too(micro_data, tmp_path):
    """The EMA is copied from the random initialisation when the model is built; --pretrained sets it too."""
    torch.save({'model': perturbed_state(family_model('amixer_deit', 224, 7, 10))}, tmp_path / 'w.pth')
    result = launch(['--cfg', AMIXER, '--data-path', micro_data, '--eval', '--pretrained', str(tmp_path / 'w.pth'),
                     '--batch-size', '10', '--output', str(tmp_path), '--opts', 'DATA.NUM_WORKERS', '0',
                     'TRAIN.EMA.ENABLE', 'True', *family_opts('amixer_deit', 384, 12)])
    model, ema = (json.loads(result.stdout.split(f'eval {name}:', 1)[1].splitlines()[0])
                  for name in ('model', 'model_ema'))
    assert model['count'] == 10 and model == ema


TIMM_SMALL = {
    'acmix_swin_tiny_patch4_window7_224': dict(patch_size=16, embed_dim=16, depths=[2, 2], num_heads=[1, 2]),
    'amixer_t': dict(patch_size=16, embed_dim=16, depths=[2, 2], num_heads=[1, 2], policy_ape=True),
    'amixer_deit_s': dict(patch_size=16, embed_dim=32, depth=1, num_heads=4, k=4),
}


@pytest.mark.parametrize('name', TIMM_SMALL)
def test_timm_create_model_fine_tunes_a_224_window7_checkpoint_at_384_window12(name, tmp_path):
    windows = {} if name == 'amixer_deit_s' else {'window_size': 7}
    checkpoint = perturbed_state(timm.create_model(name, img_size=224, **windows, **TIMM_SMALL[name]))
    torch.save({'model': checkpoint}, tmp_path / 'w7.pth')
    windows = {} if name == 'amixer_deit_s' else {'window_size': 12}
    kwargs = dict(img_size=384, num_classes=7, **windows, **TIMM_SMALL[name])
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'w7.pth')),
                              **kwargs)
    assert assert_adapted(model, checkpoint, timm.create_model(name, **kwargs))


# ----------------------------------------------------------------------------------------------------
# What cannot be adapted
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('source, target, named', [
    ('acmix_swin', 'swin', r'unexpected \(20\): layers\.0\.blocks\.0\.attn\.dep_conv\.weight'),
    ('swin', 'amixer_swin', r'missing \(\d+\): layers\.0\.ape, layers\.0\.blocks\.0\.attn\.adapter'),
    ('amixer_deit', 'swin', r'missing .* unexpected'),
])
def test_a_checkpoint_of_another_family_is_an_error_naming_the_keys(source, target, named, tmp_path):
    torch.save({'model': family_model(source, 224, 7, 1000).state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(UserError, match=f'(?s)other.pth does not match this model.*{named}'):
        load_pretrained(family_model(target, 384, 12, 10), str(tmp_path / 'other.pth'))


def test_tables_of_another_head_count_are_an_error_not_resized(tmp_path):
    other = family_model('swin', 224, 7, 1000, 'MODEL.SWIN.NUM_HEADS', '[2, 2]')
    torch.save(other.state_dict(), tmp_path / 'heads.pth')
    with pytest.raises(UserError, match=r'relative_position_bias_table: \(169, 2\) vs \(529, 1\)'):
        load_pretrained(family_model('swin', 384, 12, 10), str(tmp_path / 'heads.pth'))


def test_timm_route_refuses_another_family(tmp_path):
    torch.save({'model': family_model('swin', 224, 7, 1000).state_dict()}, tmp_path / 'swin.pth')
    with pytest.raises(UserError, match=r'missing \(20\): layers\.0\.blocks\.0\.attn\.dep_conv\.weight'):
        timm.create_model('acmix_swin_tiny_patch4_window7_224', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'swin.pth')), img_size=384, window_size=12,
                          **TIMM_SMALL['acmix_swin_tiny_patch4_window7_224'])
