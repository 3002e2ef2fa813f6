"""Models: fidelity to the reference implementations, published sizes, timm registration, training behaviour.

Expected values come from tests/data/golden (outputs of the reference code and the published models'
sizes), never from this project's own output.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models import group_parameters

from config import get_default_config, merge_yaml
from models import build_model, from_reference
from models.acmix import CONV_IMPL, ACmixAttention, dense_weight
from models.amixer import AdaptiveWeightMixing, SourceSoftmaxMix, convert_reference_state_dict, exp_needs_no_shift
from models.swin import ScaledResidual, SwinTransformer, WindowAttention, shifted_window_mask
from models.build import TIMM_MODELS, checkpoint_filter_fn
from tools.check_golden import main as check_golden
from tools.model_info import model_info

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / 'tests' / 'data' / 'golden'
GOLDEN_FILES = sorted(GOLDEN.glob('*.pt'))
PUBLISHED = json.loads((GOLDEN / 'published_models.json').read_text())


def load_golden(path):
    return torch.load(path, weights_only=True)


def load_config(path, *opts):
    config = get_default_config()
    merge_yaml(config, str(path))
    config.defrost()
    config.merge_from_list(list(opts))
    return config


def run_tool(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------------------------
# Fidelity to the reference implementations
# ----------------------------------------------------------------------------------------------------

def test_golden_files_cover_every_family():
    assert (GOLDEN / 'README.md').is_file()
    families = {load_golden(path)['family'] for path in GOLDEN_FILES}
    assert families == {'swin', 'acmix_swin', 'amixer_swin', 'amixer_deit'}


def test_check_golden_passes_every_golden_file():
    result = run_tool('tools/check_golden.py', *map(str, GOLDEN_FILES), '--atol', '1e-4')
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(GOLDEN_FILES)
    for line, path in zip(lines, GOLDEN_FILES):
        assert line.startswith(str(path)) and line.endswith(' ok'), line
        assert float(line.split('max abs diff ')[1].split()[0]) <= 1e-4


def test_check_golden_fails_beyond_tolerance(tmp_path, capsys):
    golden = load_golden(GOLDEN / 'acmix_swin_small_geometry.pt')
    golden['output'] = golden['output'] + 1e-3
    torch.save(golden, tmp_path / 'off.pt')
    assert check_golden([str(tmp_path / 'off.pt'), '--atol', '1e-4']) == 1
    assert 'FAIL' in capsys.readouterr().out


@pytest.mark.parametrize('name', ['swin_small_geometry', 'acmix_swin_small_geometry'])
def test_shifted_window_masks_equal_the_reference_buffers(name):
    golden = load_golden(GOLDEN / f'{name}.pt')
    model = from_reference(golden['family'], golden['reference_kwargs'])
    ours = {key: value for key, value in model.state_dict().items() if key.endswith('attn_mask')}
    theirs = {key: value for key, value in golden['state_dict'].items() if key.endswith('attn_mask')}
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


@pytest.mark.parametrize('name', ['swin_small_geometry', 'acmix_swin_small_geometry', 'amixer_swin_small_geometry'])
def test_mixers_mask_with_minus_infinity(name):
    """The references' -100 becomes -inf: masked weights are exact zeros, not denormals (slow on x86)."""
    golden = load_golden(GOLDEN / f'{name}.pt')
    model = from_reference(golden['family'], golden['reference_kwargs'])
    stage, block = next((stage, block) for stage in model.layers for block in stage.blocks if block.shift_size)
    masks = []
    block.attn.register_forward_pre_hook(lambda module, args: masks.append(args[1]))
    block.mix_tokens(torch.randn(1, block.padded_size, block.padded_size, block.norm1.normalized_shape[0]), stage.ape)
    reference = shifted_window_mask(block.padded_size, block.window_size, block.shift_size)
    assert torch.equal(masks[0], reference.masked_fill(reference == -100, float('-inf')))


def test_amixer_checkpoint_conversion_is_needed():
    """The reference's patch-merging channel order differs from ours: loading it unconverted is wrong."""
    golden = load_golden(GOLDEN / 'amixer_swin_small_geometry.pt')
    model = from_reference(golden['family'], golden['reference_kwargs']).eval()
    converted = convert_reference_state_dict(golden['state_dict'])
    for key in converted:
        if '.downsample.' in key:
            converted[key] = golden['state_dict'][key.replace('.reduction.', '.proj.')]
    model.load_state_dict(converted)
    with torch.no_grad():
        assert (model(golden['input']) - golden['output']).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------------
# The nine published models
# ----------------------------------------------------------------------------------------------------

def published_state_dict(name):
    """Meta tensors in the layout of the released (reference) checkpoint, converted to ours for AMixer."""
    entry = PUBLISHED[name]
    state_dict = {key: torch.empty(shape, device='meta') for key, shape in entry['state_dict_shapes'].items()}
    return convert_reference_state_dict(state_dict) if entry['family'].startswith('amixer') else state_dict


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_model_size(name):
    entry = PUBLISHED[name]
    config = load_config(ROOT / 'configs' / f'{name}.yaml')
    assert config.DATA.IMG_SIZE == 224
    info = model_info(config)
    assert info['params'] == entry['params']
    assert abs(info['macs'] - entry['macs_224']) <= 0.01 * entry['macs_224']
    expected = {key: list(value.shape) for key, value in published_state_dict(name).items()}
    assert info['state_dict_shapes'] == expected
    if entry['family'] in ('swin', 'acmix_swin'):  # the released checkpoints' layout exactly
        assert info['state_dict_shapes'] == entry['state_dict_shapes']


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_checkpoint_loads_strictly(name):
    config = load_config(ROOT / 'configs' / f'{name}.yaml')
    with torch.device('meta'):
        model = build_model(config)
    checkpoint = {'model': published_state_dict(name)}
    model.load_state_dict(checkpoint['model'], strict=True)


def test_model_info_json():
    config_path = ROOT / 'configs' / 'demo' / 'acmix_swin_demo.yaml'
    result = run_tool('tools/model_info.py', '--cfg', str(config_path), '--json')
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    model = build_model(load_config(config_path))
    assert info['params'] == sum(p.numel() for p in model.parameters())
    assert info['macs'] > 0
    assert info['state_dict_shapes'] == {key: list(value.shape) for key, value in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# timm registration
# ----------------------------------------------------------------------------------------------------

def test_timm_registers_only_the_acmix_and_amixer_models():
    ours = [name for name in timm.list_models() if timm.models.model_entrypoint(name).__module__ == 'models.build']
    assert sorted(ours) == sorted(TIMM_MODELS)
    assert timm.models.model_entrypoint('swin_tiny_patch4_window7_224').__module__ == 'timm.models.swin_transformer'


@pytest.mark.parametrize('name', TIMM_MODELS)
def test_timm_create_model_honours_keyword_arguments(name):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=7, drop_path_rate=0.3, img_size=448)
        assert model(torch.empty(1, 3, 448, 448)).shape == (1, 7)
    assert model.head.out_features == 7
    assert model.layers[-1].blocks[-1].drop_path == pytest.approx(0.3)
    with pytest.raises(ValueError, match='pretrained'):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', TIMM_MODELS)
def test_timm_builds_on_the_device_and_in_the_dtype_asked_with_a_pretrained_cfg(name):
    model = timm.create_model(name, device='meta', dtype=torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert all(t.device.type == 'meta' for t in tensors.values())
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    cfg = model.pretrained_cfg
    # test-time preprocessing as the papers' code (Swin's and DeiT's): bicubic, 224 / 256 crop, ImageNet statistics
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == ((3, 224, 224), 0.875, 'bicubic')
    assert (cfg['mean'], cfg['std']) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert cfg['pool_size'] == ((14, 14) if name == 'amixer_deit_s' else (7, 7))
    assert cfg['paper_ids'] == ('arXiv:2111.14556' if name.startswith('acmix') else 'arXiv:2209.13802')
    state_dict = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state_dict and f"{cfg['classifier']}.weight" in state_dict


def test_timm_loads_a_reference_amixer_checkpoint_file_through_its_filter(tmp_path):
    golden = load_golden(GOLDEN / 'amixer_swin_small_geometry.pt')
    torch.save({'model': golden['state_dict']}, tmp_path / 'reference.pth')  # the released layout, wrapped
    kwargs = {key: value for key, value in golden['reference_kwargs'].items()
              if key not in ('ada', 'mode', 'pre_proj', 'post_proj', 'relative')}
    model = timm.create_model('amixer_t', pretrained=True, **kwargs, pretrained_cfg_overlay=dict(
        file=str(tmp_path / 'reference.pth'), num_classes=kwargs['num_classes'])).eval()
    with torch.no_grad():
        assert (model(golden['input']) - golden['output']).abs().max() <= 1e-4
    ours = model.state_dict()  # this project's own checkpoints pass the filter unchanged
    filtered = checkpoint_filter_fn({'model': ours}, model)
    assert filtered.keys() == ours.keys() and all(torch.equal(filtered[k], ours[k]) for k in ours)


def small_model(name, **kwargs):
    golden = load_golden(GOLDEN / f'{name}.pt')
    return from_reference(golden['family'], {**golden['reference_kwargs'], **kwargs}).eval(), golden['input']


@pytest.mark.parametrize('name, channels, sides', [
    ('acmix_swin_small_geometry', [16, 32, 64, 128], [32, 16, 8, 4]),  # 64 px, patch 2: a stage per tap
    ('amixer_deit_small_geometry', [32, 32], [8, 8]),  # 32 px, patch 4, two blocks: a block per tap
])
def test_forward_intermediates_taps_and_pruning(name, channels, sides):
    model, images = small_model(name)
    assert [info['num_chs'] for info in model.feature_info] == channels
    with torch.no_grad():
        final, taps = model.forward_intermediates(images)
        assert [tuple(t.shape) for t in taps] == [(2, c, s, s) for c, s in zip(channels, sides)]
        assert torch.equal(final, model.forward_features(images))
        assert torch.equal(model.forward_intermediates(images, indices=1, norm=True, output_fmt='NHWC',
                                                       intermediates_only=True)[0], final)
        for i in range(len(taps)):
            early, = model.forward_intermediates(images, indices=[i], stop_early=True, intermediates_only=True)
            assert torch.equal(early, taps[i])
            pruned = copy.deepcopy(model)
            assert pruned.prune_intermediate_layers([i], prune_norm=True) == [i]
            assert torch.equal(pruned(images).permute(0, 3, 1, 2), taps[i])  # no norm, no pooling, no head
            assert pruned.num_features == channels[i]


def test_reset_classifier_and_forward_head():
    model, images = small_model('swin_small_geometry')
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == (2, 4, 4, model.num_features)  # unpooled, channels last
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean(dim=(1, 2)), rtol=0, atol=0)
        model.reset_classifier(5)
        assert model.get_classifier().out_features == 5 and not model.get_classifier().training
        assert model(images).shape == (2, 5)
        model.reset_classifier(0, '')
        assert torch.equal(model(images), features)
    with pytest.raises(ValueError, match="global_pool 'max'"):
        model.reset_classifier(0, 'max')


def test_group_matcher_orders_parameters_as_the_network():
    """Groups for layer-wise rate decay: the embedding; per stage its policy position embedding, each block,
    its patch merging; the final norm with the last block (timm's Swin does the same); the head last."""
    model, _ = small_model('amixer_swin_policy_ape')
    expected = [['patch_embed.norm.bias', 'patch_embed.norm.weight', 'patch_embed.proj.bias', 'patch_embed.proj.weight']]
    for i in range(4):
        expected += [[f'layers.{i}.ape'], [f'layers.{i}.blocks.0'], [f'layers.{i}.blocks.1']]
        if i < 3:
            expected.append([f'layers.{i}.downsample.norm', f'layers.{i}.downsample.reduction'])
    expected[-1] += ['norm.bias', 'norm.weight']
    expected.append(['head.bias', 'head.weight'])
    groups = group_parameters(model, model.group_matcher()).values()
    assert [sorted({'.'.join(name.split('.')[:4]) for name in names}) for names in groups] == expected
    coarse = group_parameters(model, model.group_matcher(coarse=True)).values()
    assert [sorted({'.'.join(name.split('.')[:2]) for name in names}) for names in coarse] == [
        ['patch_embed.norm', 'patch_embed.proj'], ['layers.0'], ['layers.1'], ['layers.2'], ['layers.3'],
        ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']]


# ----------------------------------------------------------------------------------------------------
# Training behaviour
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('autocast', [False, True], ids=['float32', 'autocast-bfloat16'])
@pytest.mark.parametrize('path', GOLDEN_FILES, ids=lambda path: path.stem)
def test_every_parameter_gets_a_finite_nonzero_gradient(path, autocast):
    golden = load_golden(path)
    torch.manual_seed(0)
    # drop path 0.3: at batch 8 some blocks drop some samples, and the CPU then runs their branches on the rest
    model = from_reference(golden['family'], {**golden['reference_kwargs'], 'drop_path_rate': 0.3}).train()
    images = torch.randn(8, *golden['input'].shape[1:])
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        loss = torch.nn.functional.cross_entropy(model(images), torch.arange(8) % model.num_classes)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize('layer_scale', [None, 0.5])
def test_drop_path_keeps_or_drops_each_samples_whole_residual(layer_scale):
    torch.manual_seed(0)
    model = SwinTransformer(WindowAttention, img_size=16, embed_dim=8, depths=(2,), num_heads=(2,),
                            window_size=4, drop_path_rate=.5, layer_scale=layer_scale)
    block = model.layers[0].blocks[-1]  # the last block has the whole rate: drops half the samples
    keep = 1. - block.drop_path
    gamma = block.gamma1
    batch_sizes = []

    def branch(t: torch.Tensor) -> torch.Tensor:  # maps each sample on its own, and records the batch it got
        batch_sizes.append(len(t))
        return t.square() + 1

    x = torch.randn(64, 2, 2, 8)
    residual = x.square() + 1 if gamma is None else gamma * (x.square() + 1)
    out = block.train().residual(x, branch, gamma)
    kept = [torch.allclose(o, a + r / keep) for o, a, r in zip(out, x, residual)]
    dropped = [torch.equal(o, a) for o, a in zip(out, x)]
    assert all(k != d for k, d in zip(kept, dropped))  # each sample: its whole residual, scaled, or none of it
    assert 16 < sum(kept) < 48
    assert batch_sizes == [sum(kept)]  # on the CPU the branch runs on the kept samples only
    torch.testing.assert_close(block.eval().residual(x, branch, gamma), x + residual)


@pytest.mark.parametrize('scale_shape', [(4,), (2, 1, 1, 4)], ids=['per-channel', 'per-sample-and-channel'])
def test_scaled_residual_gradients_equal_finite_differences(scale_shape):
    torch.manual_seed(0)
    x, y = (torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    scale = torch.randn(scale_shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ScaledResidual.apply(x, scale, y), x + scale * y)
    assert torch.autograd.gradcheck(ScaledResidual.apply, (x, scale, y))


def test_scaled_residual_keeps_the_branch_output_only_for_a_trained_scale():
    x, y = (torch.randn(2, 3, 3, 4, requires_grad=True) for _ in range(2))
    for scale_requires_grad in (False, True):
        scale = torch.rand(2, 1, 1, 1, requires_grad=scale_requires_grad)  # a drop-path mask has no gradient
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = ScaledResidual.apply(x, scale, y)
        assert any(t is y for t in saved) == scale_requires_grad
        grad_x, grad_y = torch.autograd.grad(out, (x, y), torch.ones_like(out))
        torch.testing.assert_close(grad_y, scale.detach().expand_as(y))
        torch.testing.assert_close(grad_x, torch.ones_like(x))


def test_gradient_checkpointing_recomputes_and_matches():
    golden = load_golden(GOLDEN / 'acmix_swin_small_geometry.pt')
    plain = from_reference('acmix_swin', {**golden['reference_kwargs'], 'drop_path_rate': 0.})
    checkpointed = from_reference('acmix_swin', {**golden['reference_kwargs'], 'drop_path_rate': 0.,
                                                 'use_checkpoint': True})
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.layers[0].blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    for model in (plain, checkpointed):
        model(golden['input']).square().mean().backward()
    assert len(calls) == 2  # forward, then again during backward
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def compiled_training_step(path, **compile_options):
    """Outputs and gradients of one training step (drop path on), eager and through torch.compile."""
    golden = load_golden(path)
    torch.manual_seed(0)
    model = from_reference(golden['family'], {**golden['reference_kwargs'], 'drop_path_rate': 0.2}).train()
    images = torch.randn(4, *golden['input'].shape[1:])
    steps = []
    for run in (model, torch.compile(model, fullgraph=True, **compile_options)):  # fullgraph: a graph break raises
        torch.manual_seed(1)  # the same samples dropped
        model.zero_grad()
        out = run(images)
        out.square().mean().backward()
        steps.append([out.detach()] + [param.grad.clone() for param in model.parameters()])
    return steps


@pytest.mark.parametrize('path', GOLDEN_FILES, ids=lambda path: path.stem)
def test_torch_compile_traces_each_model_whole_and_trains_as_eager(path):
    # aot_eager: dynamo's graphs and AOTAutograd's backward, run by the eager kernels (equal to the bit
    # here; float32's default tolerance leaves room for a BLAS that rounds by memory alignment)
    eager, compiled = compiled_training_step(path, backend='aot_eager')
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor_runs_the_amixer_mixing_forward_and_backward():
    eager, compiled = compiled_training_step(GOLDEN / 'amixer_deit_small_geometry.pt')  # inductor, C++ on CPU
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def plain_mixing(policy, bank, mask, values):
    """SourceSoftmaxMix's maths as autograd's plain ops: the mask repeats over the batch as there."""
    logits = torch.bmm(policy, bank.transpose(1, 2))
    logits = (logits.view(mask.shape[0], -1, *mask.shape[2:]) + mask).view_as(logits)
    return torch.bmm(logits.softmax(dim=0).permute(1, 2, 0), values)


def minus_infinity_mask(sources, batch, fraction, dtype=torch.float32):
    """A (sources, 1, batch, sources) mask of 0 and -inf in which each target keeps itself as a source."""
    mask = torch.where(torch.rand(sources, 1, batch, sources) < fraction, float('-inf'), 0.).to(dtype)
    mask[torch.arange(sources), :, :, torch.arange(sources)] = 0.
    return mask


@pytest.mark.parametrize('autocast', [False, True], ids=['float64', 'autocast-bfloat16'])
@pytest.mark.parametrize('shifted', [False, True], ids=['unshifted-exp', 'shifted-exp'])
def test_amixer_mixing_backward_equals_autograd_of_the_plain_ops(autocast, shifted):
    torch.manual_seed(0)
    sources, windows, heads, banks, head_dim = 9, 2, 3, 4, 5
    batch = 2 * windows * heads  # (image, window, head)
    dtype = torch.float32 if autocast else torch.float64
    policy = torch.randn(sources, batch, banks, dtype=dtype, requires_grad=True)
    bank = torch.randn(sources, sources, banks, dtype=dtype, requires_grad=True)
    values = torch.randn(batch, sources, head_dim, dtype=dtype, requires_grad=True)
    mask = torch.randn(sources, 1, windows * heads, sources, dtype=dtype)
    grad = torch.randn(batch, sources, head_dim, dtype=dtype)
    assert exp_needs_no_shift(policy, bank, mask)  # so both paths are exact: the same logits, shifted or not

    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        mixed = SourceSoftmaxMix.apply(policy, bank, mask, values, shifted)
        plain = plain_mixing(policy, bank, mask, values)
    ours = torch.autograd.grad(mixed, (policy, bank, values), grad)
    theirs = torch.autograd.grad(plain, (policy, bank, values), grad)
    tolerance = {'rtol': 0.02, 'atol': 0.05} if autocast else {}  # bfloat16 keeps 8 bits
    assert mixed.dtype == plain.dtype
    torch.testing.assert_close(mixed, plain, **tolerance)
    for name, a, b in zip(('policy', 'bank', 'values'), ours, theirs):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a, b, **tolerance, msg=name)


def test_amixer_mixing_is_exact_with_large_logits_and_minus_infinity_masks():
    # logits in the thousands overflow exp (float64's too) unless their max is subtracted first; -inf
    # masks (as the Swin mixers pass them) must weigh exactly 0 and keep the gradients finite. (float64:
    # near one-hot weights leave gradients far below float32's rounding of the terms they cancel from.)
    torch.manual_seed(0)
    sources, batch, banks, head_dim = 16, 6, 4, 5
    policy = (100 * torch.randn(sources, batch, banks, dtype=torch.float64)).requires_grad_()
    bank = (10 * torch.randn(sources, sources, banks, dtype=torch.float64)).requires_grad_()
    values = torch.randn(batch, sources, head_dim, dtype=torch.float64, requires_grad=True)
    mask = minus_infinity_mask(sources, batch, 0.5, torch.float64)
    grad = torch.randn(batch, sources, head_dim, dtype=torch.float64)

    logits = torch.bmm(policy, bank.transpose(1, 2)) + mask[:, 0]
    assert logits.max() > 1000 and not exp_needs_no_shift(policy, bank, mask)
    mixed = SourceSoftmaxMix.apply(policy, bank, mask, values, True)
    plain = plain_mixing(policy, bank, mask, values)
    torch.testing.assert_close(mixed, plain)
    ours = torch.autograd.grad(mixed, (policy, bank, values), grad)
    theirs = torch.autograd.grad(plain, (policy, bank, values), grad)
    for name, a, b in zip(('policy', 'bank', 'values'), ours, theirs):
        assert a.isfinite().all(), name
        torch.testing.assert_close(a, b, msg=name)


def test_amixer_unshifted_exp_is_exact_in_float32_near_its_bound():
    # rows aligned so that logits reach +-29.7 (the bound is 30), large values, -inf masks: without the
    # shift, float32 must still match float64's plain softmax to float32's rounding, forward and backward
    torch.manual_seed(0)
    sources, batch, banks, head_dim = 49, 12, 4, 8
    policy = torch.nn.functional.normalize(torch.randn(sources, batch, banks), dim=-1) * 5.4
    bank = policy[:, :1].expand(-1, sources, -1) * torch.randn(sources, sources, 1).sign() * (5.5 / 5.4)
    values = 100 * torch.randn(batch, sources, head_dim)
    mask = minus_infinity_mask(sources, batch, 0.3)
    grad = torch.randn(batch, sources, head_dim)
    assert exp_needs_no_shift(policy, bank, mask)
    assert torch.bmm(policy, bank.transpose(1, 2)).abs().max() > 29

    ours = [t.clone().requires_grad_() for t in (policy, bank, values)]
    mixed = SourceSoftmaxMix.apply(ours[0], ours[1], mask, ours[2], False)
    exact = [t.double().requires_grad_() for t in (policy, bank, values)]
    plain = plain_mixing(exact[0], exact[1], mask.double(), exact[2])
    pairs = [(mixed, plain)] + list(zip(torch.autograd.grad(mixed, ours, grad),
                                        torch.autograd.grad(plain, exact, grad.double())))
    for a, b in pairs:  # relative to each tensor's largest entry
        assert a.isfinite().all()
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()


def test_amixer_mixer_shifts_its_softmax_where_exp_could_overflow():
    # a bank scaled up puts logits in the hundreds, past float32's exp (and past the bound): the mixer
    # must take the shifted path there, or its output would be inf or nan
    torch.manual_seed(0)
    mixer = AdaptiveWeightMixing(dim=8, num_heads=2, window_size=3, num_banks=3)
    with torch.no_grad():
        mixer.weight_bank.mul_(5e4)
    x = torch.randn(2, 6, 6, 8)
    mixed = mixer(x, None, None)
    assert mixed.isfinite().all()
    torch.testing.assert_close(mixed, mixer.double()(x.double(), None, None).float())


def test_amixer_unshifted_exp_bound():
    # |policy row| * |bank row| bounds every logit: 5 * 6 = 30 is the bound itself, 5 * 6.5 is past it
    policy = torch.tensor([[[3., 4.]], [[0., 1.]]])  # (sources, b, banks), rows of norm 5 and 1
    assert exp_needs_no_shift(policy, torch.tensor([[[6., 0.]], [[0., 2.]]]))
    assert not exp_needs_no_shift(policy, torch.tensor([[[6., 0.]], [[0., -6.5]]]))
    # a mask's positive entries raise logits: 5 * 5 + 5 is the bound, + 6 is past it; -inf lowers them
    bank = torch.tensor([[[5., 0.]], [[0., 2.]]])
    assert exp_needs_no_shift(policy, bank, torch.tensor([[[5., float('-inf')]]]))
    assert not exp_needs_no_shift(policy, bank, torch.tensor([[[6., 0.]]]))
    assert not exp_needs_no_shift(policy.to('meta'), torch.zeros(2, 1, 2, device='meta'))  # CPU only


@pytest.mark.parametrize('heads', [2, 3, 4])  # 6 and 9 parts: the fc folds into the convolution; 12: it does not
def test_acmix_convolution_path_equals_the_reference_formula(heads):
    torch.manual_seed(0)
    head_dim = 4
    attn = ACmixAttention(heads * head_dim, heads, window_size=4).double()
    with torch.no_grad():
        for param in (attn.fc.weight, attn.fc.bias, attn.dep_conv.weight):
            param.normal_()
    qkv = torch.randn(2, 5, 6, head_dim, 3 * heads, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads * head_dim, dtype=torch.float64)
    # the reference: a 1x1 conv over the parts of each head channel, then the group convolution, in NCHW
    parts = qkv.permute(0, 3, 4, 1, 2).reshape(2 * head_dim, 3 * heads, 5, 6)
    taps = torch.nn.functional.conv2d(parts, attn.fc.weight, attn.fc.bias).reshape(2, head_dim * 9, 5, 6)
    expected = torch.nn.functional.conv2d(taps, attn.dep_conv.weight, bias, padding=1, groups=head_dim)
    ours = attn.convolve(qkv, attn.dep_conv.weight, bias)
    torch.testing.assert_close(ours, expected.permute(0, 2, 3, 1))
    grad = torch.randn_like(ours)
    params = (qkv, attn.fc.weight, attn.fc.bias, attn.dep_conv.weight)
    for name, a, b in zip(('qkv', 'fc.weight', 'fc.bias', 'dep_conv.weight'), torch.autograd.grad(ours, params, grad),
                          torch.autograd.grad(expected.permute(0, 2, 3, 1), params, grad)):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_dense_weight_gives_the_group_convolution(groups):
    torch.manual_seed(0)
    x = torch.randn(2, 4 * groups, 5, 6, dtype=torch.float64)
    weight = torch.randn(3 * groups, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    grouped = torch.nn.functional.conv2d(x, weight, padding=1, groups=groups)
    dense = torch.nn.functional.conv2d(x, dense_weight(weight, groups), padding=1)
    torch.testing.assert_close(dense, grouped)
    grad = torch.randn_like(dense)
    torch.testing.assert_close(torch.autograd.grad(dense, weight, grad), torch.autograd.grad(grouped, weight, grad))


@pytest.mark.parametrize('heads', [2, 4])  # 6 parts: the fc folds into the convolution; 12: it does not
def test_acmix_block_on_the_dense_path_equals_the_grouped_path(monkeypatch, heads):
    """The dense convolution (ACmix's CUDA path) against F.conv2d's grouped one: output and every gradient."""
    torch.manual_seed(0)
    attn = ACmixAttention(heads * 4, heads, window_size=3).double()
    with torch.no_grad():
        for param in attn.parameters():  # off the shift-kernel init, so that every weight matters
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(2, 6, 6, heads * 4, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 6, 6, heads * 4, dtype=torch.float64)
    names, leaves = zip(('x', x), *attn.named_parameters())
    results = {}
    for how in ('grouped', 'dense'):
        monkeypatch.setitem(CONV_IMPL, 'cpu', how)
        out = attn(x, None)
        results[how] = (out, torch.autograd.grad(out, leaves, grad))
    (grouped, grouped_grads), (dense, dense_grads) = results['grouped'], results['dense']
    torch.testing.assert_close(dense, grouped)
    for name, a, b in zip(names, dense_grads, grouped_grads):
        torch.testing.assert_close(a, b, msg=lambda m: f'grad of {name}: {m}')


def test_no_weight_decay_names_exist():
    golden = load_golden(GOLDEN / 'swin_small_geometry.pt')
    swin = from_reference('swin', golden['reference_kwargs'])
    keyword, = swin.no_weight_decay_keywords()
    assert any(keyword in name for name, _ in swin.named_parameters())
    golden = load_golden(GOLDEN / 'amixer_deit_small_geometry.pt')
    deit = from_reference('amixer_deit', golden['reference_kwargs'])
    assert deit.no_weight_decay() <= {name for name, _ in deit.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# Building from the config tree, and input sizes
# ----------------------------------------------------------------------------------------------------

SWIN_TINY = ROOT / 'configs' / 'swin_tiny_patch4_window7_224.yaml'


@pytest.mark.parametrize('img_size, reason', [(84, 'odd side'), (200, 'not a multiple of the window'),
                                              (16, 'too small')])
def test_an_impossible_input_size_is_a_clear_build_error(img_size, reason):
    with pytest.raises(ValueError, match=f'img_size {img_size}') as error:
        build_model(load_config(SWIN_TINY, 'DATA.IMG_SIZE', img_size))
    assert reason in str(error.value)


def test_a_wrong_input_size_is_a_clear_forward_error():
    model = build_model(load_config(ROOT / 'configs' / 'demo' / 'acmix_swin_demo.yaml'))
    with pytest.raises(ValueError, match='built for img_size 32'):
        model(torch.randn(1, 3, 64, 64))


def test_amixer_pads_sizes_that_swin_refuses():
    kwargs = {**load_golden(GOLDEN / 'amixer_swin_small_geometry.pt')['reference_kwargs'], 'img_size': 40}
    with pytest.raises(ValueError, match='img_size 40'):
        from_reference('swin', {key: kwargs[key] for key in ('img_size', 'patch_size', 'embed_dim', 'depths',
                                                            'num_heads', 'num_classes')})
    model = from_reference('amixer_swin', kwargs).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 40, 40))).all()


def test_build_model_reads_the_config_tree():
    config = load_config(ROOT / 'configs' / 'acmix_swin_tiny_patch4_window7_224.yaml', 'MODEL.TYPE', 'swin_acmix',
                         'MODEL.NUM_CLASSES', 0, 'TRAIN.USE_CHECKPOINT', True)
    with torch.device('meta'):
        model = build_model(config)
    assert isinstance(model.layers[0].blocks[0].attn, ACmixAttention)
    assert model.head.out_features == 1000
    assert all(stage.grad_checkpointing for stage in model.layers)
    with pytest.raises(ValueError, match='unknown MODEL.TYPE'):
        build_model(load_config(SWIN_TINY, 'MODEL.TYPE', 'vit'))


@pytest.mark.parametrize('name', ['acmix_swin_demo', 'amixer_swin_demo'])
def test_demo_configs_train(name):
    config = load_config(ROOT / 'configs' / 'demo' / f'{name}.yaml')
    assert (config.DATA.IMG_SIZE, config.MODEL.NUM_CLASSES, config.AUG.HFLIP) == (32, 10, 0.0)
    model = build_model(config).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(32, 3, 32, 32)), torch.arange(32) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# Throughput benchmark
# ----------------------------------------------------------------------------------------------------

def test_benchmark_drop_path_option_sets_the_rate_of_every_model():
    from tools.benchmark import create
    ours = 'configs/demo/amixer_swin_demo.yaml'
    assert create(ours).layers[-1].blocks[-1].drop_path == pytest.approx(0.05)  # the yaml's own
    assert create(ours, 0.25).layers[-1].blocks[-1].drop_path == pytest.approx(0.25)
    assert create('test_vit', 0.25).blocks[-1].drop_path1.drop_prob == pytest.approx(0.25)  # a timm peer


def test_throughput_runner_takes_a_compiled_forward():
    # torch.compile's module has no truth value (len() raises): a runner must still take it as the forward
    from utils import ThroughputRunner
    model = torch.nn.Linear(4, 2)
    compiled = torch.compile(model)
    batches = dict.fromkeys(('inference', 'training'), (torch.zeros(1, 4), torch.zeros(1, dtype=torch.long)))
    runner = ThroughputRunner(model, torch.optim.SGD(model.parameters()), batches, forward=compiled)
    assert runner.forward is compiled
    assert ThroughputRunner(model, torch.optim.SGD(model.parameters()), batches).forward is model


def test_benchmark_memory_sites_at_the_peak_of_an_allocator_trace():
    from tools.benchmark import peak_sites

    def frame(filename, line, name):
        return {'filename': filename, 'line': line, 'name': name}

    attention = [frame('/lib/torch/nn/functional.py', 5, 'linear'), frame('/repo/models/swin.py', 140, 'attend')]
    mlp = [frame('/env/timm/models/vision_transformer.py', 251, 'forward')]
    backward = [frame('??', 0, 'at::native::empty_cuda'),
                frame('??', 0, 'torch::autograd::generated::ConvolutionBackward0::apply(variable_list&&)')]
    trace = [
        {'action': 'free_requested', 'addr': 9, 'size': 1000},  # allocated before the trace: not counted
        {'action': 'alloc', 'addr': 1, 'size': 100, 'frames': attention},
        {'action': 'alloc', 'addr': 2, 'size': 50, 'frames': mlp},
        {'action': 'alloc', 'addr': 3, 'size': 30, 'frames': attention},
        {'action': 'free_requested', 'addr': 1, 'size': 100},
        {'action': 'free_completed', 'addr': 1, 'size': 100},
        {'action': 'alloc', 'addr': 4, 'size': 120, 'frames': backward},  # 200 live: the peak
        {'action': 'free_requested', 'addr': 4, 'size': 120},
        {'action': 'alloc', 'addr': 5, 'size': 60, 'frames': []},
    ]
    assert peak_sites(trace, rows=5) == (200, [('ConvolutionBackward0', 120),
                                               ('models/vision_transformer.py:251 forward', 50),
                                               ('models/swin.py:140 attend', 30)])
    assert peak_sites(trace, rows=1) == (200, [('ConvolutionBackward0', 120)])
    assert peak_sites([], rows=3) == (0, [])


def test_benchmark_table_shows_peak_memory_when_measured():
    from tools.benchmark import markdown_table
    row = {'model': 'a', 'peer': 'b', 'infer_batch': 16, 'train_batch': 8, 'inference_images_s': 4.,
           'peer_inference_images_s': 2., 'inference_ratio': 2., 'training_images_s': 1., 'peer_training_images_s': 2.,
           'training_ratio': .5}
    on_cpu = markdown_table([{**row, 'training_peak_gib': None, 'peer_training_peak_gib': None}])
    assert 'peak' not in on_cpu
    assert on_cpu.splitlines()[-1] == '| a | b | 16/8 | 4.00 | 2.00 | 2.00x | 1.00 | 2.00 | 0.50x |'
    on_gpu = markdown_table([{**row, 'training_peak_gib': 3.5, 'peer_training_peak_gib': 3.25}])
    assert '| training peak GiB | peer |' in on_gpu.splitlines()[0]
    assert on_gpu.splitlines()[-1].endswith('| 0.50x | 3.50 | 3.25 |')


def test_benchmark_reports_models_next_to_their_peers(tmp_path):
    acmix, amixer = 'configs/demo/acmix_swin_demo.yaml', 'configs/demo/amixer_swin_demo.yaml'
    result = run_tool('tools/benchmark.py', f'{acmix}:{amixer}@3', amixer, '--device', 'cpu', '--infer-batch', '2',
                      '--train-batch', '2', '--warmup', '0', '--rounds', '1', '--json', str(tmp_path / 'bench.json'),
                      '--markdown', str(tmp_path / 'bench.md'), '--profile', '4')
    assert result.returncode == 0, result.stderr
    assert '| model | peer | batch | inference img/s |' in result.stdout
    assert f'| {acmix} | {amixer} | 3 |' in result.stdout and f'| {amixer} | - | 2 |' in result.stdout
    report = json.loads((tmp_path / 'bench.json').read_text())
    assert report['settings']['infer_batch'] == report['settings']['train_batch'] == 2
    paired, alone = report['results']
    assert (paired['infer_batch'], paired['train_batch'], alone['infer_batch']) == (3, 3, 2)
    for mode in ('inference', 'training'):
        assert paired[f'{mode}_images_s'] > 0 and paired[f'peer_{mode}_images_s'] > 0
        assert paired[f'{mode}_ratio'] == pytest.approx(paired[f'{mode}_images_s'] / paired[f'peer_{mode}_images_s'])
        assert alone[f'{mode}_images_s'] > 0 and alone[f'{mode}_ratio'] is None
    markdown = (tmp_path / 'bench.md').read_text()
    assert f'| {acmix} | {amixer} | 3 |' in markdown
    # one profile per model and mode: the paired models and the one alone, inference and training
    assert markdown.count('### ') == 6 and f'### {acmix}, one training step' in markdown
