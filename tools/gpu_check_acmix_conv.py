"""ACmix's Triton group convolution on a GPU: its errors, and its speed next to the dense and cuDNN grouped ways.

    python tools/gpu_check_acmix_conv.py                                 # a CUDA GPU: well within a minute
    TRITON_INTERPRET=1 python tools/gpu_check_acmix_conv.py --small      # tiny shapes, CPU, Triton's interpreter

At ACmix-S's four stage shapes (batch 128; 56x56 with 3 heads, 28x28 with 6, 14x14 with 12, 7x7 with 24;
32 groups of 9 input channels, `heads` outputs a group), through models.acmix.group_conv3x3:

1. Errors of the kernel's output and of its input, weight and bias gradients against F.conv2d(groups=32) and
   autograd, as max |error| / max |reference|: in float32 with TF32 off, and in bfloat16 (under autocast, as
   in training) against float32 on the same rounded operands, next to cuDNN's own bfloat16 errors there.
2. Speed in bfloat16 under autocast: forward, and forward + backward, of CONV_IMPL 'triton', 'dense' and
   'grouped' (median ms over 20 runs after 5 warm-up ones, CUDA events), the memory one forward + backward
   allocates beyond its inputs, and the total over ACmix-S's 24 layers.

The interpreter's tl.dot cannot take bfloat16 (triton-lang/triton#11584): there, float16 stands in for it.
A failing check prints its traceback, and the script goes on with the next.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import acmix  # noqa: E402
from utils import median_milliseconds  # noqa: E402

# ACmix-S (Swin-S geometry): (map side, heads, blocks) per stage; head_dim = 32 groups everywhere
STAGES = ((56, 3, 2), (28, 6, 2), (14, 12, 18), (7, 24, 2))
SMALL_STAGES = ((7, 3, 2), (5, 6, 2), (3, 12, 18), (2, 24, 2))
IMPLS = ('triton', 'dense', 'grouped')


def make_inputs(batch: int, side: int, heads: int, groups: int, device: torch.device) -> dict:
    """The convolution's operands (all float32) as ACmix's unfolded branch has them: taps, weight, bias."""
    gen = torch.Generator(device).manual_seed(0)
    shapes = {'x': (batch, side, side, groups * 9), 'weight': (groups * heads, 9, 3, 3), 'bias': (groups * heads,),
              'grad': (batch, side, side, groups * heads)}
    return {name: torch.randn(shape, generator=gen, device=device) for name, shape in shapes.items()}


def run(impl: str, inputs: dict, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and gradients (taps, weight, bias) of group_conv3x3 the `impl` way, the taps in `dtype` and,
    below float32, under autocast as in training."""
    device = inputs['x'].device
    acmix.CONV_IMPL[device.type] = impl
    x = inputs['x'].to(dtype, copy=True).requires_grad_()
    weight, bias = (inputs[name].clone().requires_grad_() for name in ('weight', 'bias'))
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = acmix.group_conv3x3(x, weight, bias, x.shape[-1] // 9)
    out.backward(inputs['grad'].to(out.dtype))
    return out.detach(), [x.grad, weight.grad, bias.grad]


def reference(inputs: dict, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same in float32 from the operands rounded to `dtype`: F.conv2d(groups=...) and autograd."""
    x, weight = (inputs[name].to(dtype).float() for name in ('x', 'weight'))
    x, weight, bias = (t.clone().requires_grad_() for t in (x, weight, inputs['bias']))
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1, groups=x.shape[-1] // 9)
    out = out.permute(0, 2, 3, 1)
    out.backward(inputs['grad'].to(dtype).float())
    return out.detach(), [x.grad, weight.grad, bias.grad]


def relative_errors(ours: tuple, expected: tuple) -> str:
    pairs = zip(('out', 'grad_x', 'grad_w', 'grad_b'), [ours[0], *ours[1]], [expected[0], *expected[1]])
    return '  '.join(f'{name} {((a.float() - b).abs().max() / b.abs().max()).item():.1e}' for name, a, b in pairs)


def check_errors(stages: tuple, batch: int, groups: int, device: torch.device, half: torch.dtype) -> None:
    print('\n## Errors: max |error| / max |reference|, against float32 F.conv2d(groups) on the same rounded operands')
    for dtype in (torch.float32, half):
        for side, heads, _ in stages:
            label = f'{str(dtype)[6:]:8} {side}x{side}, {heads:2} heads'
            try:
                inputs = make_inputs(batch, side, heads, groups, device)
                expected = reference(inputs, dtype)
                print(f'{label}  triton   {relative_errors(run("triton", inputs, dtype), expected)}', flush=True)
                if dtype != torch.float32:
                    print(f'{label}  grouped  {relative_errors(run("grouped", inputs, dtype), expected)}', flush=True)
            except Exception:  # noqa: BLE001 (report it, go on with the next check)
                print(f'{label}  FAILED')
                traceback.print_exc()


def extra_peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Memory one call allocates beyond what was allocated before it (0 off CUDA: not counted there)."""
    if device.type != 'cuda':
        return 0.
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def check_speed(stages: tuple, batch: int, groups: int, device: torch.device, half: torch.dtype,
                warmup: int, reps: int) -> None:
    print(f'\n## Speed, {str(half)[6:]} under autocast, batch {batch}: median ms; memory a forward + backward '
          'allocates beyond its inputs\n')
    print('| stage | way | forward ms | forward + backward ms | extra MiB |\n|---|---|---|---|---|')
    per_step = {impl: 0. for impl in IMPLS}  # forward + backward over all of ACmix-S's layers
    for side, heads, blocks in stages:
        inputs = make_inputs(batch, side, heads, groups, device)
        x = inputs['x'].to(half).requires_grad_()
        weight, bias = (inputs[name].clone().requires_grad_() for name in ('weight', 'bias'))
        grad = inputs['grad'].to(half)
        for impl in IMPLS:
            def forward() -> torch.Tensor:
                with torch.autocast(device.type, dtype=half):
                    return acmix.group_conv3x3(x, weight, bias, groups)

            def forward_backward() -> None:
                x.grad = weight.grad = bias.grad = None
                forward().backward(grad)

            try:
                acmix.CONV_IMPL[device.type] = impl
                with torch.no_grad():
                    forward_ms = median_milliseconds(forward, device, reps, warmup)
                step_ms = median_milliseconds(forward_backward, device, reps, warmup)
                extra = extra_peak_mib(forward_backward, device)
                per_step[impl] += blocks * step_ms
                print(f'| {side}x{side}, {heads} heads | {impl} | {forward_ms:.3f} | {step_ms:.3f} | {extra:.0f} |',
                      flush=True)
            except Exception:  # noqa: BLE001 (report it, go on with the next measurement)
                per_step[impl] = float('nan')
                print(f'| {side}x{side}, {heads} heads | {impl} | FAILED | | |')
                traceback.print_exc()
        del inputs, x, weight, bias, grad
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    total = ', '.join(f'{impl} {ms:.2f} ms' for impl, ms in per_step.items())
    print(f'\nACmix-S, forward + backward of all {sum(s[2] for s in stages)} layers\' convolutions: {total}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--small', action='store_true',
                        help='batch 2, 4 groups, maps of 7, 5, 3 and 2: for a try in Triton\'s interpreter')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    interpreted = os.environ.get('TRITON_INTERPRET') == '1'
    if device.type == 'cpu' and not (args.small and interpreted):
        print('no CUDA device: run with TRITON_INTERPRET=1 and --small to try it in Triton\'s interpreter')
        return 2
    import triton  # noqa: PLC0415 (reported, not needed before)

    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU, Triton interpreter'
    print(f'# {name}; torch {torch.__version__}, triton {triton.__version__}')
    # float32 references exact to float32's precision: TF32 rounds operands to 10 mantissa bits
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # as main.py trains
    half = torch.float16 if interpreted else torch.bfloat16
    stages, batch, groups = (SMALL_STAGES, 2, 4) if args.small else (STAGES, 128, 32)
    begin = time.perf_counter()
    check_errors(stages, batch, groups, device, half)
    warmup, reps = (1, 2) if args.small else (5, 20)
    check_speed(stages, batch, groups, device, half, warmup, reps)
    print(f'\n{time.perf_counter() - begin:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
