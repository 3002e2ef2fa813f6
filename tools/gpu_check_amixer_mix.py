"""Check and time AMixer's fused Triton mixing (models/amixer_mix.py) against SourceSoftmaxMix on a GPU.

    python tools/gpu_check_amixer_mix.py [--batch 128] [--budget 55] [--small]

At AMixer-T's four stage shapes (the first two with their shifted-window masks) and AMixer-DeiT-S's:
  1. max errors, forward and backward, of the fused kernels against SourceSoftmaxMix in float32 (TF32
     off), and of both in bfloat16 (autocast) against that float32 result;
  2. median times (CUDA events, 20 runs after warm-up) of forward+backward and of forward alone,
     triton against torch in bfloat16, as a table.
Each check that raises is reported and the rest go on; what has not started after --budget seconds is
listed as skipped. --small runs tiny shapes on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set
here), to exercise the script without a GPU, in float16 for bfloat16 (the interpreter's dot reads
bfloat16 as integers); its times mean nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Shape:
    name: str
    size: int  # the stage's map side
    window: int
    heads: int
    banks: int
    head_dim: int
    shifted: bool

    @property
    def tokens(self) -> int:
        return self.window ** 2


# configs/amixer_t.yaml: a 56x56 map at 224px, heads 3/6/12/24, windows 7/7/14/7, int(1.5 * heads) banks,
# head_dim 32; shifted windows where a window is smaller than the map. configs/amixer_deit_s.yaml: 14x14
# patches in one window, 8 heads of 48, 16 banks.
SHAPES = [Shape('AMixer-T stage 1', 56, 7, 3, 4, 32, True), Shape('AMixer-T stage 2', 28, 7, 6, 9, 32, True),
          Shape('AMixer-T stage 3', 14, 14, 12, 18, 32, False), Shape('AMixer-T stage 4', 7, 7, 24, 36, 32, False),
          Shape('AMixer-DeiT-S', 14, 14, 8, 16, 48, False)]
SMALL_SHAPES = [Shape('small, shifted', 8, 4, 2, 3, 8, True), Shape('small, 6x6 window', 6, 6, 2, 16, 48, False)]


def inputs(shape: Shape, batch: int, device):
    """policy (N, b, banks), bank (N, N, banks), values and an output gradient (b, N, head_dim), the mask."""
    import torch
    from models.swin import shifted_window_mask
    N, windows = shape.tokens, (shape.size // shape.window) ** 2
    rows = batch * windows * shape.heads
    generator = torch.Generator(device).manual_seed(0)

    def randn(*size, scale=1.):
        return (torch.randn(*size, generator=generator, device=device) * scale).requires_grad_()

    # logits of a few units, as a trained model's: policy . bank over the banks
    policy, bank = randn(N, rows, shape.banks), randn(N, N, shape.banks, scale=shape.banks ** -0.5)
    values, grad = randn(rows, N, shape.head_dim), randn(rows, N, shape.head_dim).detach()
    mask = None
    if shape.shifted:  # as the Swin block passes it: -inf where the reference has -100
        mask = shifted_window_mask(shape.size, shape.window, shape.window // 2).to(device)
        mask = mask.masked_fill(mask < 0, float('-inf'))
    return policy, bank, values, grad, mask


def mix(implementation: str, policy, bank, values, mask, heads: int):
    """The model's mixing call with models.amixer.CUDA_MIXING set to `implementation`."""
    import models.amixer as amixer
    amixer.CUDA_MIXING = implementation
    return amixer.mix_sources(policy, bank, values, mask, heads, shift=True)


def results(implementation: str, shape: Shape, tensors, dtype):
    """Output and gradients of policy, bank, values, with autocast to `dtype` unless float32."""
    import torch
    policy, bank, values, grad, mask = tensors
    device = values.device.type
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        out = mix(implementation, policy, bank, values, mask, shape.heads)
    grads = torch.autograd.grad(out, (policy, bank, values), grad.to(out.dtype))
    return [out.float()] + [g.float() for g in grads]


def check(shape: Shape, batch: int, device, half) -> str:
    """Max errors relative to the largest float32 reference entry, per output and gradient."""
    import torch
    tensors = inputs(shape, batch, device)
    reference = results('torch', shape, tensors, torch.float32)
    lines = []
    for implementation, dtype in (('triton', torch.float32), ('triton', half), ('torch', half)):
        ours = results(implementation, shape, tensors, dtype)
        errors = [(a - b).abs().max().item() / b.abs().max().item() for a, b in zip(ours, reference)]
        lines.append(f'{implementation:6s} {str(dtype)[6:]:8s} ' + '  '.join(
            f'{name} {error:.1e}' for name, error in zip(('out', 'd policy', 'd bank', 'd values'), errors)))
    return '\n    '.join(['relative max errors against torch float32:'] + lines)


def timings(shape: Shape, batch: int, device, half, reps: int) -> dict[str, float]:
    """Median ms of forward+backward and of forward alone (no grad), per implementation, autocast to `half`."""
    import torch

    from utils import median_milliseconds
    policy, bank, values, grad, mask = inputs(shape, batch, device)
    grad = grad.to(half)
    times = {}
    for implementation in ('triton', 'torch'):
        def train():
            with torch.autocast(device.type, dtype=half):
                out = mix(implementation, policy, bank, values, mask, shape.heads)
            torch.autograd.grad(out, (policy, bank, values), grad)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, dtype=half):
                mix(implementation, policy, bank, values, mask, shape.heads)

        begin = time.perf_counter()
        train()
        infer()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times[f'{implementation} first call s'] = time.perf_counter() - begin  # Triton compiles here
        times[f'{implementation} train'] = median_milliseconds(train, device, reps)
        times[f'{implementation} infer'] = median_milliseconds(infer, device, reps)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=128, help='images (default 128)')
    parser.add_argument('--budget', type=float, default=55., help='start nothing after this many seconds (default 55)')
    parser.add_argument('--small', action='store_true', help="tiny shapes on the CPU, in Triton's interpreter")
    args = parser.parse_args(argv)
    if args.small:
        os.environ['TRITON_INTERPRET'] = '1'  # before Triton is imported
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device('cpu' if args.small else 'cuda')
    shapes, batch, reps = (SMALL_SHAPES, 1, 3) if args.small else (SHAPES, args.batch, 20)
    half = torch.float16 if args.small else torch.bfloat16
    print(f'device: {torch.cuda.get_device_name() if device.type == "cuda" else "cpu, Triton interpreter"}; '
          f'batch {batch}; torch {torch.__version__}', flush=True)
    start = time.perf_counter()
    table, failed = [], 0

    def attempt(label: str, work: Callable[[], object]):
        nonlocal failed
        if time.perf_counter() - start > args.budget:
            print(f'{label}: skipped (past the {args.budget:g} s budget)', flush=True)
            return None
        try:
            return work()
        except Exception:  # report it and go on with the rest
            failed += 1
            print(f'{label}: FAILED\n{traceback.format_exc(limit=-3)}', flush=True)
            return None
        finally:
            if device.type == 'cuda':
                torch.cuda.empty_cache()

    # 16-bit times first (they compile those kernels), then the checks
    for shape in shapes:
        times = attempt(f'{shape.name}: times', lambda: timings(shape, batch, device, half, reps))
        if times:
            table.append((shape, times))
            print(f'{shape.name}: {times}', flush=True)
    for shape in shapes:
        report = attempt(f'{shape.name}: check', lambda: check(shape, batch, device, half))
        if report:
            print(f'{shape.name} (N {shape.tokens}, {shape.banks} banks, head_dim {shape.head_dim}'
                  f'{", masked" if shape.shifted else ""}): {report}', flush=True)

    print(f'\n{str(half)[6:]}, median ms (train: forward+backward; infer: forward, no grad)')
    print('| shape | triton train | torch train | torch/triton | triton infer | torch infer | torch/triton |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for shape, t in table:
        print(f"| {shape.name} | {t['triton train']:.3f} | {t['torch train']:.3f} | "
              f"{t['torch train'] / t['triton train']:.2f}x | {t['triton infer']:.3f} | {t['torch infer']:.3f} | "
              f"{t['torch infer'] / t['triton infer']:.2f}x |")
    print(f'{time.perf_counter() - start:.1f} s in all, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
