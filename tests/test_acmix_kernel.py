"""ACmix's Triton group convolution (models/acmix_conv.py), run in Triton's interpreter on the CPU.

The kernels run once, in a subprocess with TRITON_INTERPRET=1 (it must be set before the kernels are
defined), which saves their inputs and results: this file run as a script. The expected values are computed
here, from those inputs, with F.conv2d(groups=...) and autograd, or with the model on its CPU path.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import acmix, from_reference

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_KWARGS = torch.load(ROOT / 'tests' / 'data' / 'golden' / 'acmix_swin_small_geometry.pt',
                           weights_only=True)['reference_kwargs']
# (batch, height, width, groups, inputs per group, outputs per group, bias, dtype): 7 blocks of positions
# and 7 chunks of the weight gradient, the last partial; 24 outputs a group (padded to 32); a partial block
# of groups with a per-position bias map (ACmix's folded branch); a map one column wide (side taps outside);
# a float16 map with float32 weights, as under autocast (the interpreter's tl.dot cannot take bfloat16:
# triton-lang/triton#11584)
CASES = {'3_outputs': (2, 9, 11, 3, 9, 3, 'channel', torch.float32),
         '24_outputs': (3, 4, 3, 2, 9, 24, 'channel', torch.float32),
         'bias_map': (2, 3, 6, 5, 6, 2, 'map', torch.float32),
         'one_column': (2, 2, 1, 4, 12, 9, None, torch.float32),
         'float16': (2, 4, 5, 3, 9, 6, 'channel', torch.float16)}
# float32 results to ~1e-5; float16 ones are rounded to float16 (half an ulp: 2**-11 relative)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}
# The golden file's geometry (all four stages: 1 and 2 heads fold the fc, 4 and 8 do not) on 16x16 images,
# small enough for the interpreter; the golden weights fit 64x64 images only, so the weights are random.
MODEL_KWARGS = {**GOLDEN_KWARGS, 'img_size': 16, 'drop_path_rate': 0.}


def case_inputs(case: tuple) -> dict:
    B, H, W, G, CI, CO, bias, dtype = case
    bias_shape = {'channel': (G * CO,), 'map': (H, W, G * CO), None: None}[bias]
    return {'x': torch.randn(B, H, W, G * CI).to(dtype), 'weight': torch.randn(G * CO, CI, 3, 3),
            'bias': None if bias_shape is None else torch.randn(bias_shape),
            'grad': torch.randn(B, H, W, G * CO).to(dtype)}


def model_with_random_weights() -> torch.nn.Module:
    model = from_reference('acmix_swin', MODEL_KWARGS).train()
    with torch.no_grad():
        for param in model.parameters():  # off the shift-kernel init, so that every weight matters
            param.add_(0.1 * torch.randn_like(param))
    return model


def run_kernels(path: str) -> None:
    """In Triton's interpreter: the kernel on every case and the model with the kernel, saved to `path`."""
    from models.acmix_conv import group_conv3x3

    torch.manual_seed(0)
    results = {}
    for name, case in CASES.items():
        inputs = case_inputs(case)
        leaves = [inputs[key].requires_grad_() for key in ('x', 'weight', 'bias') if inputs[key] is not None]
        out = group_conv3x3(inputs['x'], inputs['weight'], inputs['bias'])
        grads = torch.autograd.grad(out, leaves, inputs['grad'])
        results[name] = {'inputs': inputs, 'out': out.detach(), 'grads': grads}
    model = model_with_random_weights()
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    acmix.CONV_IMPL['cpu'] = 'triton'
    logits = model(images)
    logits.square().mean().backward()
    results['model'] = {'state': model.state_dict(), 'images': images.detach(), 'logits': logits.detach(),
                        'grads': {'images': images.grad, **{n: p.grad for n, p in model.named_parameters()}}}
    torch.save(results, path)


@pytest.fixture(scope='module')
def interpreted(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp('acmix_kernel') / 'results.pt'
    env = {**os.environ, 'TRITON_INTERPRET': '1', 'PYTHONPATH': str(ROOT)}
    result = subprocess.run([sys.executable, __file__, str(path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize('name', CASES)
def test_kernel_equals_the_group_convolution_and_its_gradients(interpreted, name):
    ours = interpreted[name]
    inputs = ours['inputs']
    dtype = inputs['x'].dtype
    # in float32, from the operands as the kernel multiplies them: the weight rounded to the map's dtype
    inputs['weight'] = inputs['weight'].to(dtype).float()
    x, weight, bias = (inputs[key] if inputs[key] is None else inputs[key].requires_grad_()
                       for key in ('x', 'weight', 'bias'))
    groups = x.shape[-1] // weight.shape[1]
    expected = F.conv2d(x.float().permute(0, 3, 1, 2), weight, padding=1, groups=groups)
    expected = expected.permute(0, 2, 3, 1)
    if bias is not None:
        expected = expected + bias
    tolerance = TOLERANCE[dtype]
    assert ours['out'].dtype == dtype
    torch.testing.assert_close(ours['out'].float(), expected, rtol=tolerance, atol=tolerance)
    leaves = [leaf for leaf in (x, weight, bias) if leaf is not None]
    for key, a, b in zip(('x', 'weight', 'bias'), ours['grads'],
                         torch.autograd.grad(expected, leaves, inputs['grad'].float())):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=lambda m: f'grad of {key}: {m}')


def test_model_with_the_kernel_equals_the_model_without(interpreted):
    ours = interpreted['model']
    model = from_reference('acmix_swin', MODEL_KWARGS).train()
    model.load_state_dict(ours['state'])
    images = ours['images'].clone().requires_grad_()
    logits = model(images)  # the CPU path: F.conv2d's grouped convolution
    logits.square().mean().backward()
    torch.testing.assert_close(ours['logits'], logits, rtol=1e-5, atol=1e-5)
    expected = {'images': images.grad, **{n: p.grad for n, p in model.named_parameters()}}
    assert ours['grads'].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(ours['grads'][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f'{name}: {m}')


def test_bfloat16_kernels_compile_for_hopper_without_spilling(tmp_path):
    """No GPU needed: Triton compiles the kernels ACmix runs in training for sm_90 (H100, H200), and the
    compiled code keeps its values in registers (no stack: spills would cost memory traffic)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from models import acmix_conv

    sizes = {'M': 'i32', 'H': 'i32', 'W': 'i32', 'G': 'i32', 'CI': 'i32', 'CO': 'i32'}
    blocks = {'BLOCK_M': acmix_conv._BLOCK_M, 'BLOCK_G': acmix_conv._BLOCK_G, 'PRECISION': 'ieee'}
    conv = {'x_ptr': '*bf16', 'w_ptr': '*fp32', 'b_ptr': '*fp32', 'y_ptr': '*bf16', **sizes,
            'b_stride_h': 'i32', 'b_stride_w': 'i32'}
    weight_grad = {'x_ptr': '*bf16', 'gy_ptr': '*bf16', 'part_ptr': '*fp32', **sizes}
    # padded widths: 9 inputs -> 16; 3, 6, 12 outputs -> 16, 24 -> 32; the input gradient swaps them
    variants = [(acmix_conv._conv_kernel, conv, {'CI_PAD': 16, 'CO_PAD': 32, 'HAS_BIAS': True}),
                (acmix_conv._conv_kernel, conv, {'CI_PAD': 32, 'CO_PAD': 16, 'HAS_BIAS': False}),
                (acmix_conv._weight_grad_kernel, weight_grad, {'CI_PAD': 16, 'CO_PAD': 32})]
    cuobjdump = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'cuobjdump'
    for kernel, signature, constants in variants:
        constexprs = {**constants, **blocks}
        source = ASTSource(kernel, {**signature, **{name: 'constexpr' for name in constexprs}}, constexprs)
        compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32), options=acmix_conv._OPTIONS)
        cubin = tmp_path / 'kernel.cubin'
        cubin.write_bytes(compiled.asm['cubin'])
        usage = subprocess.run([str(cuobjdump), '--dump-resource-usage', str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        assert ' STACK:0 ' in usage, f'{kernel.__name__} {constants}: {usage}'


@pytest.mark.parametrize('how', ['dense', 'bogus'])
def test_conv_impl_chooses_how_the_group_convolution_runs(monkeypatch, how):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 5, 12, dtype=torch.float64), torch.randn(8, 3, 3, 3, dtype=torch.float64), \
        torch.randn(8, dtype=torch.float64)
    grouped = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1, groups=4).permute(0, 2, 3, 1)
    monkeypatch.setitem(acmix.CONV_IMPL, 'cpu', how)
    if how == 'bogus':
        with pytest.raises(ValueError, match="CONV_IMPL\\['cpu'\\] is 'bogus'"):
            acmix.group_conv3x3(x, weight, bias, 4)
    else:
        torch.testing.assert_close(acmix.group_conv3x3(x, weight, bias, 4), grouped)


if __name__ == '__main__':
    run_kernels(sys.argv[1])
