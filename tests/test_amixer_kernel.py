"""The fused Triton mixing (models/amixer_mix.py), run in Triton's interpreter on the CPU.

TRITON_INTERPRET=1 must be set before Triton is imported, so the kernels run in worker processes (this
file run as a script). The expected values are computed here, without Triton: by autograd over the plain
ops in float64 for the kernel, by the models' own CPU path (SourceSoftmaxMix) for the models.
"""
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / 'tests' / 'data' / 'golden'

# name: tokens, banks, head_dim, windows, heads, images, masked. Rows are (image, window, head); 16 rows
# make a group: partial groups, several groups, and (masked, 5 groups) a bank gradient summed in two shares.
CASES = {
    'n49-k4-d32': (49, 4, 32, 1, 4, 5, False),
    'n36-k4-d32': (36, 4, 32, 1, 3, 1, False),
    'n49-k16-d48-masked': (49, 16, 48, 2, 1, 2, True),
    'n36-k16-d48-masked': (36, 16, 48, 5, 1, 1, True),
}
AUTOCAST_CASE = 'n36-k16-d48-masked'
# Tilings for 16-bit inputs (models.amixer_mix.TILES) beside the default 16s, each run on the masked case and on
# one whose 20 rows make whole and partial groups: the kernels must be right with any of them
HALF_TILES = {
    'default tiles': {},
    'GROUP 32, BS 32, BT 16': dict(GROUP=32, BS=32, BT=16, num_warps=4),
    'BT 64, BS 16': dict(BT=64, num_stages=2),
}
HALF_CASES = [AUTOCAST_CASE, 'n49-k4-d32']
MODELS = ['amixer_deit_small_geometry', 'amixer_swin_small_geometry']  # AMixer-Swin's has shifted windows


def case_tensors(name):
    """policy (N, b, K), bank (N, N, K), values (b, N, d), mask (windows, N, N) or None, heads, grad (b, N, d)."""
    tokens, banks, head_dim, windows, heads, images, masked = CASES[name]
    generator = torch.Generator().manual_seed(sorted(CASES).index(name))
    rows = images * windows * heads
    policy = torch.randn(tokens, rows, banks, generator=generator)
    bank = torch.randn(tokens, tokens, banks, generator=generator)
    values = torch.randn(rows, tokens, head_dim, generator=generator)
    grad = torch.randn(rows, tokens, head_dim, generator=generator)
    mask = None
    if masked:  # -inf in about half the places, never on the diagonal: every target keeps itself as a source
        mask = torch.where(torch.rand(windows, tokens, tokens, generator=generator) < 0.5, float('-inf'), 0.)
        mask[:, torch.arange(tokens), torch.arange(tokens)] = 0.
    return policy, bank, values, mask, heads, grad


def golden_model(name):
    """The golden file's model with its weights, and its first input image."""
    from models import from_reference, to_project_layout
    golden = torch.load(GOLDEN / f'{name}.pt', weights_only=True)
    model = from_reference(golden['family'], golden['reference_kwargs']).eval()
    model.load_state_dict(to_project_layout(golden['state_dict']))
    return model, golden['input'][:1]


def model_step(name):
    """The output and every parameter's gradient of one backward pass, and the fused mixing's call count."""
    from models.amixer_mix import FusedSourceSoftmaxMix
    model, image = golden_model(name)
    with mock.patch.object(FusedSourceSoftmaxMix, 'forward', wraps=FusedSourceSoftmaxMix.forward) as forward:
        out = model(image)
        out.square().sum().backward()
    return {'output': out.detach(), 'calls': forward.call_count,
            'grads': {key: param.grad for key, param in model.named_parameters()}}


def kernel_step(name, autocast=None):
    """The kernels' output and gradients, and the tiles and launch options they ran with."""
    from models import amixer_mix
    policy, bank, values, mask, heads, grad = case_tensors(name)
    inputs = [t.requires_grad_() for t in (policy, bank, values)]
    tiles, choose = [], amixer_mix._tiles
    with mock.patch.object(amixer_mix, '_tiles', lambda *args: tiles.append(choose(*args)) or tiles[-1]), \
            torch.autocast('cpu', dtype=autocast, enabled=autocast is not None):
        mixed = amixer_mix.FusedSourceSoftmaxMix.apply(*inputs, mask, heads)
    return {'mixed': mixed.detach(), 'grads': torch.autograd.grad(mixed, inputs, grad.to(mixed.dtype)),
            'tiles': tiles[0]}


@pytest.fixture(scope='module')
def interpreted(tmp_path_factory):
    """What the workers computed in Triton's interpreter: two processes at once (kernel cases, models)."""
    out = tmp_path_factory.mktemp('interpreted')
    env = {**os.environ, 'TRITON_INTERPRET': '1', 'PYTHONPATH': str(ROOT)}
    workers = {part: subprocess.Popen([sys.executable, __file__, part, str(out / f'{part}.pt')], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for part in ('kernel', 'models')}
    results = {}
    for part, worker in workers.items():
        log, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, log[-5000:]
        results[part] = torch.load(out / f'{part}.pt', weights_only=True)
    return results


def plain_mixing(policy, bank, values, mask, heads):
    """The mixing as autograd's plain ops: softmax over the sources (dim 0) of the masked logits."""
    logits = torch.bmm(policy, bank.transpose(1, 2))  # (sources, rows, targets)
    if mask is not None:  # rows run (image, window, head); the mask is indexed [window, target, source]
        windows = mask.shape[0]
        logits = logits.view(policy.shape[0], -1, windows, heads, policy.shape[0])
        logits = (logits + mask.permute(2, 0, 1)[:, None, :, None, :]).flatten(1, 3)
    return torch.bmm(logits.softmax(dim=0).permute(1, 2, 0), values)


def assert_near(ours, expected, relative, name):
    """|ours - expected| <= relative * max |expected|, everywhere."""
    error = (ours.double() - expected.double()).abs().max().item()
    assert error <= relative * expected.abs().max().item(), f'{name}: max error {error:.2e}'


@pytest.mark.parametrize('name', sorted(CASES))
def test_fused_mixing_equals_the_plain_maths_forward_and_backward(interpreted, name):
    policy, bank, values, mask, heads, grad = case_tensors(name)
    exact = [t.double().requires_grad_() for t in (policy, bank, values)]
    mixed = plain_mixing(*exact, None if mask is None else mask.double(), heads)
    expected = [mixed.detach(), *torch.autograd.grad(mixed, exact, grad.double())]
    ours = interpreted['kernel'][name]
    for label, a, b in zip(('mixed', 'policy grad', 'bank grad', 'values grad'), [ours['mixed'], *ours['grads']],
                           expected):
        assert a.dtype == torch.float32 and a.shape == b.shape, label
        assert_near(a, b, 1e-5, label)


@pytest.mark.parametrize('tiles', sorted(HALF_TILES))
@pytest.mark.parametrize('name', HALF_CASES)
def test_fused_mixing_under_float16_autocast(interpreted, name, tiles):
    # 16-bit matmul inputs (float16: the interpreter's dot reads bfloat16 as integers), float32 softmax:
    # about float16's rounding (2**-11) off the exact result, as SourceSoftmaxMix under autocast
    policy, bank, values, mask, heads, grad = case_tensors(name)
    exact = [t.double().requires_grad_() for t in (policy, bank, values)]
    mixed = plain_mixing(*exact, None if mask is None else mask.double(), heads)
    expected = [mixed.detach(), *torch.autograd.grad(mixed, exact, grad.double())]
    ours = interpreted['kernel'][f'{name}@float16, {tiles}']
    assert ours['tiles'].items() >= {'GROUP': 16, 'BS': 16, 'BT': 16, **HALF_TILES[tiles]}.items()
    assert ours['mixed'].dtype == torch.float16
    for label, a, b in zip(('mixed', 'policy grad', 'bank grad', 'values grad'), [ours['mixed'], *ours['grads']],
                           expected):
        assert a.shape == b.shape, label
        assert_near(a, b, 3e-3, label)


@pytest.mark.parametrize('name', MODELS)
def test_amixer_models_with_the_fused_mixing_equal_the_models_without_it(interpreted, name):
    from models.amixer import AdaptiveWeightMixing
    ours = interpreted['models'][name]
    model, image = golden_model(name)  # here without Triton's interpreter: SourceSoftmaxMix
    out = model(image)
    out.square().sum().backward()
    blocks = sum(isinstance(module, AdaptiveWeightMixing) for module in model.modules())
    assert ours['calls'] == blocks  # every block mixed in the kernels
    assert_near(ours['output'], out.detach(), 1e-5, 'output')
    assert ours['grads'].keys() == dict(model.named_parameters()).keys()
    for key, param in model.named_parameters():
        assert_near(ours['grads'][key], param.grad, 1e-5, key)


def test_an_unknown_cuda_mixing_is_a_clear_error(monkeypatch):
    import models.amixer as amixer
    monkeypatch.setattr(amixer, 'CUDA_MIXING', 'cuda')
    policy, bank, values, mask, heads, _ = case_tensors('n36-k4-d32')
    with pytest.raises(ValueError, match="CUDA_MIXING must be 'triton' or 'torch', not 'cuda'"):
        amixer.mix_sources(policy, bank, values, mask, heads, True)


if __name__ == '__main__':  # a worker: python tests/test_amixer_kernel.py kernel|models OUT, under TRITON_INTERPRET=1
    part, path = sys.argv[1:]
    assert os.environ.get('TRITON_INTERPRET') == '1', 'run under TRITON_INTERPRET=1'
    if part == 'kernel':
        from models import amixer_mix
        results = {name: kernel_step(name) for name in CASES}
        for name in HALF_CASES:
            tokens, banks, head_dim, *_ = CASES[name]
            for label, tiles in HALF_TILES.items():
                amixer_mix.TILES[tokens, banks, head_dim] = tiles
                results[f'{name}@float16, {label}'] = kernel_step(name, torch.float16)
    else:
        results = {name: model_step(name) for name in MODELS}
    torch.save(results, path)
