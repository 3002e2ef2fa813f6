"""Check and time AMixer's fused Triton mixing (models/amixer_mix.py) against SourceSoftmaxMix on a GPU.

    python tools/gpu_check_amixer_mix.py [--batch 128] [--budget 55] [--small] [--sweep]

At AMixer-T's four stage shapes (the first two with their shifted-window masks) and AMixer-DeiT-S's:
  1. max errors, forward and backward, of the fused kernels against SourceSoftmaxMix in float32 (TF32
     off), and of both in bfloat16 (autocast) against that float32 result;
  2. median times (CUDA events, 20 runs after warm-up) of forward+backward and of forward alone,
     triton against torch in bfloat16, as a table.
With --sweep instead, the kernels' forward+backward in bfloat16 with each tiling of SWEEP (entries of
models.amixer_mix.TILES), as a table, and the fastest per shape as a TILES literal; a tiling whose errors
against SourceSoftmaxMix in float32 exceed twice the default tiling's is not timed (each tiling compiles
its kernels: give it --budget 300).
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


def relative_errors(ours, reference) -> list[float]:
    """Per output and gradient, the max error relative to the largest reference entry."""
    return [(a - b).abs().max().item() / b.abs().max().item() for a, b in zip(ours, reference)]


def check(shape: Shape, batch: int, device, half) -> str:
    """Max errors relative to the largest float32 reference entry, per output and gradient."""
    import torch
    tensors = inputs(shape, batch, device)
    reference = results('torch', shape, tensors, torch.float32)
    lines = []
    for implementation, dtype in (('triton', torch.float32), ('triton', half), ('torch', half)):
        ours = results(implementation, shape, tensors, dtype)
        errors = relative_errors(ours, reference)
        lines.append(f'{implementation:6s} {str(dtype)[6:]:8s} ' + '  '.join(
            f'{name} {error:.1e}' for name, error in zip(('out', 'd policy', 'd bank', 'd values'), errors)))
    return '\n    '.join(['relative max errors against torch float32:'] + lines)


def steps(implementation: str, shape: Shape, tensors, half) -> tuple[Callable[[], None], Callable[[], None]]:
    """A training step (forward+backward) and an inference step (forward, no grad) of the mixing, in `half`."""
    import torch
    policy, bank, values, grad, mask = tensors
    grad = grad.to(half)

    def train():
        with torch.autocast(values.device.type, dtype=half):
            out = mix(implementation, policy, bank, values, mask, shape.heads)
        torch.autograd.grad(out, (policy, bank, values), grad)

    def infer():
        with torch.no_grad(), torch.autocast(values.device.type, dtype=half):
            mix(implementation, policy, bank, values, mask, shape.heads)

    return train, infer


def timings(shape: Shape, batch: int, device, half, reps: int) -> dict[str, float]:
    """Median ms of forward+backward and of forward alone (no grad), per implementation, autocast to `half`."""
    import torch

    from utils import median_milliseconds
    tensors = inputs(shape, batch, device)
    times = {}
    for implementation in ('triton', 'torch'):
        train, infer = steps(implementation, shape, tensors, half)
        begin = time.perf_counter()
        train()
        infer()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times[f'{implementation} first call s'] = time.perf_counter() - begin  # Triton compiles here
        times[f'{implementation} train'] = median_milliseconds(train, device, reps)
        times[f'{implementation} infer'] = median_milliseconds(infer, device, reps)
    return times


# --sweep's candidate tilings: entries of models.amixer_mix.TILES, each changing the default (GROUP 16, BS 16,
# BT 16, 8 warps, Triton's default stages) in one or two places
SWEEP = [{}, dict(num_warps=4), dict(num_stages=3), dict(BT=32), dict(BT=32, num_warps=4), dict(BT=64),
         dict(BS=32), dict(GROUP=32), dict(GROUP=32, BT=32)]


def tiling(tiles: dict[str, int]) -> str:
    return ', '.join(f'{key} {value}' for key, value in tiles.items()) or 'default'


def sweep(shape: Shape, batch: int, device, half, reps: int) -> dict[str, float | str]:
    """Per tiling of SWEEP, the median ms of the kernels' forward+backward in `half`, or why it has none."""
    import torch

    from models import amixer_mix
    from utils import median_milliseconds
    tensors = inputs(shape, batch, device)
    reference = results('torch', shape, tensors, torch.float32)
    key = (shape.tokens, shape.banks, shape.head_dim)
    times, default_error = {}, None
    try:
        for tiles in SWEEP:
            amixer_mix.TILES[key] = tiles
            try:
                ours = results('triton', shape, tensors, half)
            except Exception as error:  # e.g. Triton's OutOfResources: the tiles need more than the GPU has
                times[tiling(tiles)] = type(error).__name__
                continue
            error = max(relative_errors(ours, reference))
            default_error = error if default_error is None else default_error
            if error > 2 * default_error:
                times[tiling(tiles)] = f'error {error:.1e}'
                continue
            times[tiling(tiles)] = median_milliseconds(steps('triton', shape, tensors, half)[0], device, reps)
    finally:
        amixer_mix.TILES.pop(key, None)
    return times


def print_sweep(table: list[tuple[Shape, dict[str, float | str]]], half) -> None:
    """The sweep's table, and as a TILES literal the fastest tiling of each shape that beats the default
    by 3% or more (less is within the spread of repeated timings)."""
    labels = [tiling(tiles) for tiles in SWEEP]
    print(f'\n{str(half)[6:]}, median ms of forward+backward per tiling (models.amixer_mix.TILES)')
    print('| shape | ' + ' | '.join(labels) + ' |\n| --- |' + ' ---: |' * len(labels))
    fastest = {}
    for shape, times in table:
        cells = [f'{times[label]:.3f}' if isinstance(times.get(label), float) else times.get(label, '-')
                 for label in labels]
        print(f'| {shape.name} | ' + ' | '.join(cells) + ' |')
        timed = [(ms, tiles) for tiles in SWEEP if isinstance(ms := times.get(tiling(tiles)), float)]
        best_ms, best = min(timed, key=lambda item: item[0], default=(None, {}))
        if best and isinstance(times.get('default'), float) and best_ms <= 0.97 * times['default']:
            fastest[shape.tokens, shape.banks, shape.head_dim] = best
    print(f'\nTILES = {fastest!r}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=128, help='images (default 128)')
    parser.add_argument('--budget', type=float, default=55., help='start nothing after this many seconds (default 55)')
    parser.add_argument('--small', action='store_true', help="tiny shapes on the CPU, in Triton's interpreter")
    parser.add_argument('--sweep', action='store_true', help="time the kernels' candidate tilings instead")
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

    if args.sweep:
        for shape in shapes:
            times = attempt(f'{shape.name}: sweep', lambda: sweep(shape, batch, device, half, reps))
            if times:
                table.append((shape, times))
                print(f'{shape.name}: {times}', flush=True)
        print_sweep(table, half)
        print(f'{time.perf_counter() - start:.1f} s in all, {failed} failed')
        return 1 if failed else 0

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
