"""AMixer's mixing as fused Triton kernels: SourceSoftmaxMix's maths without its weights in memory.

For each row b of (image, window, head) and each target t, mixed[b, t] = sum over sources s of
softmax_s(logits[s, b, t]) * values[b, s], with logits[s, b, t] = policy[s, b] . bank[s, t] (+ the
shifted-window mask). As in flash attention, a program walks the sources of one tile of targets,
computes each tile of logits where it is used, keeps a running max and sum per target (the softmax's
normalisation runs over the sources, the first index of the logits), and saves only their log-sum-exp
for the backward, which recomputes the weights from it.

The bank, (sources, targets, banks), is the same for every row. So that its tiles are loaded once for
many rows, a program takes GROUP rows at once: the logits are a matmul over the banks batched over the
sources, the mixing a matmul over the sources batched over the rows (three-dimensional tl.dot). The
backward runs as two kernels: one per (rows, source tile) for the gradients of the values and the
policy, whose sums run over the targets inside it; one per (source tile, target tile) for the bank's,
whose sum over all rows runs inside it over a share of the groups, the shares added atomically.

Numerics as SourceSoftmaxMix's under autocast: the matmuls take their inputs in the autocast dtype
(the weights too) and accumulate in float32; the softmax and its statistics are float32. float32 inputs
multiply in IEEE float32 unless torch allows TF32 for matmuls.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .swin import matmul_dtype

BANK_GRAD_PROGRAMS = 1024  # about how many programs the bank's gradient spreads over, for a GPU's worth of work
MIN_GROUPS_PER_SHARE = 4  # ... each summing over at least this many groups before its atomic add


@triton.jit
def _group_rows(group, period, repeats, GROUP: tl.constexpr):
    """The rows of a group: the same phase of GROUP consecutive repeats of `period` rows (the mask's period,
    windows * heads, or 1 without a mask), so that they share their mask. Returns the rows, which of them
    exist, and the phase."""
    phase = group % period
    repeat = (group // period) * GROUP + tl.arange(0, GROUP)
    return repeat * period + phase, repeat < repeats, phase


@triton.jit
def _load_policy(policy, rows, rows_ok, s, n_rows, N, K, KP: tl.constexpr):
    """policy[s, rows] as (sources, GROUP, KP), zero past the banks: a (N, n_rows, K) tensor."""
    k = tl.arange(0, KP)
    offsets = (s[:, None, None] * n_rows + rows[None, :, None]) * K + k[None, None, :]
    ok = (s < N)[:, None, None] & rows_ok[None, :, None] & (k < K)[None, None, :]
    return tl.load(policy + offsets, mask=ok, other=0.)


@triton.jit
def _load_bank(bank, s, t, N, K, KP: tl.constexpr):
    """bank[s, t] as (sources, KP, targets), zero past the banks: a (N, N, K) tensor."""
    k = tl.arange(0, KP)
    offsets = (s[:, None, None] * N + t[None, None, :]) * K + k[None, :, None]
    ok = (s < N)[:, None, None] & (k < K)[None, :, None] & (t < N)[None, None, :]
    return tl.load(bank + offsets, mask=ok, other=0.)


@triton.jit
def _load_rows(x, rows, rows_ok, i, N, D, DP: tl.constexpr):
    """x[rows, i] as (GROUP, len(i), DP), zero past N and D: a (n_rows, N, D) tensor."""
    d = tl.arange(0, DP)
    offsets = (rows[:, None, None] * N + i[None, :, None]) * D + d[None, None, :]
    ok = rows_ok[:, None, None] & (i < N)[None, :, None] & (d < D)[None, None, :]
    return tl.load(x + offsets, mask=ok, other=0.)


@triton.jit
def _load_stats(x, rows, rows_ok, t, N):
    """x[rows, t] as (GROUP, targets), zero past N: a (n_rows, N) tensor."""
    return tl.load(x + rows[:, None] * N + t[None, :], mask=rows_ok[:, None] & (t < N)[None, :], other=0.)


@triton.jit
def _logits(policy_tile, bank_tile, mask, mask_row, s, t, N, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """(sources, GROUP, targets) logits of a policy and a bank tile, masked; -inf past the last source."""
    logits = tl.dot(policy_tile, bank_tile, input_precision=PRECISION)
    if HAS_MASK:  # mask[mask_row, t, s] of a (windows, N, N) tensor
        ok = (s < N)[:, None] & (t < N)[None, :]
        logits += tl.load(mask + (mask_row * N + t[None, :]) * N + s[:, None], mask=ok, other=0.)[:, None, :]
    return tl.where((s < N)[:, None, None], logits, float('-inf'))


@triton.jit
def _logit_grads(logits, lse, delta, values_tile, grad_tile, PRECISION: tl.constexpr):
    """The weights and the logits' gradient as (GROUP, sources, targets), from (sources, GROUP, targets)
    logits, the forward's log-sum-exp and delta = mixed . grad, both (GROUP, targets)."""
    weights = tl.permute(tl.exp(logits - lse[None, :, :]), (1, 0, 2))
    grad_weights = tl.dot(values_tile, tl.permute(grad_tile, (0, 2, 1)), input_precision=PRECISION)
    return weights, weights * (grad_weights - delta[:, None, :])


@triton.jit
def _forward_kernel(policy, bank, values, mask, mixed, lse, n_rows, period, heads, N: tl.constexpr, K: tl.constexpr,
                    D: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr,
                    BS: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, DP: tl.constexpr):
    rows, rows_ok, phase = _group_rows(tl.program_id(0), period, n_rows // period, GROUP)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    dtype = values.dtype.element_ty
    top = tl.full((GROUP, BT), float('-inf'), tl.float32)  # the running max over sources, per target
    total = tl.zeros((GROUP, BT), tl.float32)  # the running sum of exp(logits - top)
    acc = tl.zeros((GROUP, BT, DP), tl.float32)
    for s0 in range(0, N, BS):
        s = s0 + tl.arange(0, BS)
        logits = _logits(_load_policy(policy, rows, rows_ok, s, n_rows, N, K, KP), _load_bank(bank, s, t, N, K, KP),
                         mask, phase // heads, s, t, N, HAS_MASK, PRECISION)
        new_top = tl.maximum(top, tl.max(logits, axis=0))
        # where all sources so far are masked out, shift by 0: -inf - -inf would be nan, and all weights are 0
        shift = tl.where(new_top == float('-inf'), 0., new_top)
        scale = tl.exp(top - shift)
        weights = tl.exp(logits - shift[None, :, :])
        total = total * scale + tl.sum(weights, axis=0)
        products = tl.dot(tl.permute(weights.to(dtype), (1, 2, 0)), _load_rows(values, rows, rows_ok, s, N, D, DP),
                          input_precision=PRECISION)
        acc = acc * scale[:, :, None] + products
        top = new_top
    d = tl.arange(0, DP)
    out = (rows[:, None, None] * N + t[None, :, None]) * D + d[None, None, :]
    ok = rows_ok[:, None, None] & (t < N)[None, :, None] & (d < D)[None, None, :]
    tl.store(mixed + out, (acc / total[:, :, None]).to(dtype), mask=ok)
    tl.store(lse + rows[:, None] * N + t[None, :], top + tl.log(total), mask=rows_ok[:, None] & (t < N)[None, :])


@triton.jit
def _delta_kernel(mixed, grad, delta, n, D, BLOCK: tl.constexpr, DP: tl.constexpr):
    """delta = (mixed * grad).sum(-1) in float32, over n rows of D."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, DP)
    ok = (i < n)[:, None] & (d < D)[None, :]
    offsets = i[:, None].to(tl.int64) * D + d[None, :]
    products = (tl.load(mixed + offsets, mask=ok, other=0.).to(tl.float32)
                * tl.load(grad + offsets, mask=ok, other=0.).to(tl.float32))
    tl.store(delta + i, tl.sum(products, axis=1), mask=i < n)


@triton.jit
def _policy_values_grad_kernel(policy, bank, values, mask, lse, delta, grad, grad_policy, grad_values,
                               n_rows, period, heads, N: tl.constexpr, K: tl.constexpr, D: tl.constexpr,
                               HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr,
                               BS: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, DP: tl.constexpr):
    rows, rows_ok, phase = _group_rows(tl.program_id(0), period, n_rows // period, GROUP)
    s = tl.program_id(1) * BS + tl.arange(0, BS)
    dtype = values.dtype.element_ty
    policy_tile = _load_policy(policy, rows, rows_ok, s, n_rows, N, K, KP)
    values_tile = _load_rows(values, rows, rows_ok, s, N, D, DP)
    acc_policy = tl.zeros((BS, GROUP, KP), tl.float32)
    acc_values = tl.zeros((GROUP, BS, DP), tl.float32)
    for t0 in range(0, N, BT):
        t = t0 + tl.arange(0, BT)
        bank_tile = _load_bank(bank, s, t, N, K, KP)
        logits = _logits(policy_tile, bank_tile, mask, phase // heads, s, t, N, HAS_MASK, PRECISION)
        grad_tile = _load_rows(grad, rows, rows_ok, t, N, D, DP).to(dtype)
        weights, grad_logits = _logit_grads(logits, _load_stats(lse, rows, rows_ok, t, N),
                                            _load_stats(delta, rows, rows_ok, t, N), values_tile, grad_tile, PRECISION)
        acc_values += tl.dot(weights.to(dtype), grad_tile, input_precision=PRECISION)
        acc_policy += tl.dot(tl.permute(grad_logits.to(dtype), (1, 0, 2)), tl.permute(bank_tile, (0, 2, 1)),
                             input_precision=PRECISION)
    k = tl.arange(0, KP)
    out = (s[:, None, None] * n_rows + rows[None, :, None]) * K + k[None, None, :]
    ok = (s < N)[:, None, None] & rows_ok[None, :, None] & (k < K)[None, None, :]
    tl.store(grad_policy + out, acc_policy.to(dtype), mask=ok)
    d = tl.arange(0, DP)
    out = (rows[:, None, None] * N + s[None, :, None]) * D + d[None, None, :]
    ok = rows_ok[:, None, None] & (s < N)[None, :, None] & (d < D)[None, None, :]
    tl.store(grad_values + out, acc_values.to(dtype), mask=ok)


@triton.jit
def _bank_grad_kernel(policy, bank, values, mask, lse, delta, grad, grad_bank, n_groups, n_rows, period, heads,
                      N: tl.constexpr, K: tl.constexpr, D: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr,
                      BS: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, DP: tl.constexpr):
    s = tl.program_id(0) * BS + tl.arange(0, BS)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    dtype = values.dtype.element_ty
    bank_tile = _load_bank(bank, s, t, N, K, KP)
    acc = tl.zeros((BS, BT, KP), tl.float32)
    for group in range(tl.program_id(2), n_groups, tl.num_programs(2)):
        rows, rows_ok, phase = _group_rows(group, period, n_rows // period, GROUP)
        policy_tile = _load_policy(policy, rows, rows_ok, s, n_rows, N, K, KP)
        logits = _logits(policy_tile, bank_tile, mask, phase // heads, s, t, N, HAS_MASK, PRECISION)
        _, grad_logits = _logit_grads(logits, _load_stats(lse, rows, rows_ok, t, N),
                                      _load_stats(delta, rows, rows_ok, t, N),
                                      _load_rows(values, rows, rows_ok, s, N, D, DP),
                                      _load_rows(grad, rows, rows_ok, t, N, D, DP).to(dtype), PRECISION)
        acc += tl.dot(tl.permute(grad_logits.to(dtype), (1, 2, 0)), policy_tile, input_precision=PRECISION)
    k = tl.arange(0, KP)
    out = (s[:, None, None] * N + t[None, :, None]) * K + k[None, None, :]
    ok = (s < N)[:, None, None] & (t < N)[None, :, None] & (k < K)[None, None, :]
    tl.atomic_add(grad_bank + out, acc, mask=ok)


def _padded(n: int) -> int:
    """n as a power of two, at least 16: the dots' smallest reduction length for 16-bit inputs."""
    return max(16, triton.next_power_of_2(n))


# Tile sizes and launch options (GROUP, BS, BT, num_warps, num_stages) that replace _tiles' own for 16-bit
# inputs of a (tokens, banks, head_dim) shape: for instance the fastest that tools/gpu_check_amixer_mix.py
# --sweep finds on a GPU. Each must be a power of two; GROUP, BS and BT at least 16 (the dots' smallest sides).
TILES: dict[tuple[int, int, int], dict[str, int]] = {}


def _tiles(N: int, K: int, D: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and launch options for (N, banks, head_dim): by default groups of 16 rows (GROUP, sharing
    each bank tile; also the reduction length of the bank's gradient matmul) and 16 x 16 source x target
    tiles (BS, BT), the smallest the dots take, over 8 warps; for 16-bit inputs TILES may replace them.
    float32 goes unpipelined: its dots' operands, staged in shared memory, would not fit.

    In 16 bits on sm_90 the default tiles fit their registers at 16 banks and head_dim 32; the backward
    spills a little from 32 banks or head_dim 48 up.
    """
    tiles = dict(GROUP=16, BS=16, BT=16, num_warps=8)
    if dtype == torch.float32:
        tiles['num_stages'] = 1
    else:
        tiles.update(TILES.get((N, K, D), {}))
    return dict(N=N, K=K, D=D, KP=_padded(K), DP=_padded(D), **tiles)


class FusedSourceSoftmaxMix(torch.autograd.Function):
    """SourceSoftmaxMix in the kernels above: policy (N, b, K), bank (N, N, K), values (b, N, d) -> (b, N, d).

    `mask`, if given, is (windows, N, N), indexed [window, target, source] and added to the logits of
    row b from window (b // heads) % windows: the rows run (image, window, head).
    """

    @staticmethod
    def forward(ctx, policy: Tensor, bank: Tensor, values: Tensor, mask: Tensor | None, heads: int) -> Tensor:
        dtype = matmul_dtype(values)
        policy, bank, values = (t.to(dtype).contiguous() for t in (policy, bank, values))
        N, n_rows, K = policy.shape
        D = values.shape[-1]
        period = 1 if mask is None else mask.shape[0] * heads
        if max(policy.numel(), values.numel()) >= 2 ** 31:
            raise ValueError(f'{n_rows} rows of {N} tokens are too many for the kernels\' int32 offsets')
        if mask is not None:
            mask = mask.to(torch.float32).contiguous()
            if mask.shape != (mask.shape[0], N, N) or n_rows % period:
                raise ValueError(f'mask {tuple(mask.shape)} does not fit {n_rows} rows of {heads} heads and {N} tokens')
        ctx.sizes = (n_rows, period, heads)
        precision = 'tf32' if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else 'ieee'
        ctx.meta = dict(HAS_MASK=mask is not None, PRECISION=precision, **_tiles(N, K, D, dtype))
        ctx.n_groups = period * triton.cdiv(n_rows // period, ctx.meta['GROUP'])
        mixed = torch.empty_like(values)
        lse = torch.empty(n_rows, N, device=values.device, dtype=torch.float32)
        grid = (ctx.n_groups, triton.cdiv(N, ctx.meta['BT']))
        _forward_kernel[grid](policy, bank, values, mask, mixed, lse, *ctx.sizes, **ctx.meta)
        ctx.save_for_backward(policy, bank, values, mask, mixed, lse)
        return mixed

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        policy, bank, values, mask, mixed, lse = ctx.saved_tensors
        n_rows, N, D = values.shape
        grad = grad.contiguous()
        delta = torch.empty(n_rows, N, device=grad.device, dtype=torch.float32)
        _delta_kernel[(triton.cdiv(n_rows * N, 64),)](mixed, grad, delta, n_rows * N, D, BLOCK=64, DP=_padded(D))
        grad_policy, grad_values = torch.empty_like(policy), torch.empty_like(values)
        grad_bank = torch.zeros(bank.shape, device=bank.device, dtype=torch.float32)  # atomic sums
        s_tiles, t_tiles = triton.cdiv(N, ctx.meta['BS']), triton.cdiv(N, ctx.meta['BT'])
        _policy_values_grad_kernel[(ctx.n_groups, s_tiles)](policy, bank, values, mask, lse, delta, grad, grad_policy,
                                                            grad_values, *ctx.sizes, **ctx.meta)
        shares = max(1, min(triton.cdiv(ctx.n_groups, MIN_GROUPS_PER_SHARE), BANK_GRAD_PROGRAMS // (s_tiles * t_tiles)))
        _bank_grad_kernel[(s_tiles, t_tiles, shares)](policy, bank, values, mask, lse, delta, grad, grad_bank,
                                                      ctx.n_groups, *ctx.sizes, **ctx.meta)
        return grad_policy, grad_bank, grad_values, None, None
