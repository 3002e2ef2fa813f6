"""ACmix's 3x3 group convolution on channels-last maps, as Triton kernels (forward, input and weight gradients).

ACmix's groups are narrow (9 input channels and 3 to 24 output channels per group, head_dim = 32 groups),
where cuDNN's grouped kernels are slow and the equal dense convolution does `groups` times the work. These
kernels read the (B, H, W, C) map as it lies, a block of positions times a block of groups per program, so
each position's channels of the block come in one contiguous run; every kernel tap is a batched (over
groups) tl.dot, with padding of the narrow per-group widths to 16 (tl.dot's least size), and fp32
accumulation. The work is memory-bound, so the padded multiply-adds cost little.

The input gradient is the same convolution, of the output gradient with the flipped, transposed kernel.
The weight gradient sums over positions in a fixed number of chunks, one a program (no atomics, so it is
deterministic), and the chunks' partial sums are added up in torch.

Importing this module imports Triton: import it only where the kernels run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Compile options; FMA contraction is Triton's default, set so that Triton 3.9 does not warn about it unset.
_OPTIONS = {'num_warps': 4, 'enable_fp_fusion': True}
# Block sizes, fixed (no autotuning: each config costs a compile on every fresh machine). tl.dot over a
# batch of groups gives each warp a group of its own, so a block holds as many groups as warps. 32 positions
# a block (the weight gradient's reduction length per tl.dot too): compiled for sm_90, the bfloat16 kernels
# take 128 to 160 registers a thread without spills; with 64 they spilled.
_BLOCK_G = _OPTIONS['num_warps']
_BLOCK_M = 32
# chunks of positions the weight gradient is split into: enough programs to fill a GPU, few partial sums
_WEIGHT_CHUNKS = 32


@triton.jit
def _inside(m_ok, h, w, dy, dx, H, W):
    """Which positions (rows h, columns w) have their (dy, dx) neighbour inside the map."""
    return m_ok & (h + dy >= 0) & (h + dy < H) & (w + dx >= 0) & (w + dx < W)


@triton.jit
def _conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, G, CI, CO, b_stride_h, b_stride_w,
                 CI_PAD: tl.constexpr, CO_PAD: tl.constexpr,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """y[m, g, o] = sum over taps t and inputs i of x[m + shift(t), g, i] * w[t, g, i, o] (+ bias[h, w, g, o]).

    x: (M, G, CI), w: (9, G, CI, CO), y: (M, G, CO), all contiguous; m runs over (B, H, W) positions.
    Tiles are (groups, positions, channels); tap t = 3 * (dy + 1) + (dx + 1) reads position m + dy * W + dx.
    """
    # the group blocks of one position block run side by side: they share the memory sectors of its rows
    group_blocks = tl.cdiv(G, BLOCK_G)
    first = tl.program_id(0) // group_blocks * BLOCK_M
    g = tl.program_id(0) % group_blocks * BLOCK_G + tl.arange(0, BLOCK_G)
    r = tl.arange(0, BLOCK_M)
    i = tl.arange(0, CI_PAD)
    o = tl.arange(0, CO_PAD)
    m = first + r
    m_ok, h, w = m < M, (m // W) % H, m % W
    g_ok = (g < G)[:, None, None]
    # 32-bit offsets from the block's first position (fewer registers than 64-bit pointers)
    x_first = x_ptr + tl.cast(first, tl.int64) * (G * CI)
    x_offset = r[None, :, None] * (G * CI) + (g * CI)[:, None, None] + i[None, None, :]
    x_ok = g_ok & (i < CI)[None, None, :]
    w_offset = (g * (CI * CO))[:, None, None] + (i * CO)[None, :, None] + o[None, None, :]
    w_ok = g_ok & (i < CI)[None, :, None] & (o < CO)[None, None, :]
    acc = tl.zeros((BLOCK_G, BLOCK_M, CO_PAD), dtype=tl.float32)
    for t in range(9):
        dy, dx = t // 3 - 1, t % 3 - 1
        inside = _inside(m_ok, h, w, dy, dx, H, W)
        x = tl.load(x_first + (x_offset + (dy * W + dx) * (G * CI)), mask=x_ok & inside[None, :, None], other=0.)
        taps = tl.load(w_ptr + (w_offset + t * (G * CI * CO)), mask=w_ok, other=0.).to(x.dtype)
        acc = tl.dot(x, taps, acc, input_precision=PRECISION)
    y_channel = (g * CO)[:, None, None] + o[None, None, :]
    y_ok = g_ok & m_ok[None, :, None] & (o < CO)[None, None, :]
    if HAS_BIAS:
        spatial = h * b_stride_h + w * b_stride_w
        acc += tl.load(b_ptr + spatial[None, :, None] + y_channel, mask=y_ok, other=0.).to(tl.float32)
    y_ptrs = y_ptr + tl.cast(first, tl.int64) * (G * CO) + (r[None, :, None] * (G * CO) + y_channel)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def _weight_grad_kernel(x_ptr, gy_ptr, part_ptr, M, H, W, G, CI, CO, CI_PAD: tl.constexpr, CO_PAD: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """part[chunk, t, g, o, i] = sum over the chunk's positions m of gy[m, g, o] * x[m + shift(t), g, i].

    Program (tap t + 9 * group block, chunk): the 9 taps and the group blocks of a chunk, which read the same
    positions, run side by side. The chunks split the M positions evenly, in whole blocks.
    """
    t, chunk = tl.program_id(0) % 9, tl.program_id(1)
    dy, dx = t // 3 - 1, t % 3 - 1
    g = tl.program_id(0) // 9 * BLOCK_G + tl.arange(0, BLOCK_G)
    i = tl.arange(0, CI_PAD)
    o = tl.arange(0, CO_PAD)
    g_ok = (g < G)[:, None, None]
    r = tl.arange(0, BLOCK_M)
    # 32-bit offsets from each block's first position (fewer registers than 64-bit pointers)
    x_offset = (r[None, :, None] + dy * W + dx) * (G * CI) + (g * CI)[:, None, None] + i[None, None, :]
    x_ok = g_ok & (i < CI)[None, None, :]
    gy_offset = r[None, :, None] * (G * CO) + (g * CO)[:, None, None] + o[None, None, :]
    gy_ok = g_ok & (o < CO)[None, None, :]
    chunk_size = tl.cdiv(tl.cdiv(M, tl.num_programs(1)), BLOCK_M) * BLOCK_M
    acc = tl.zeros((BLOCK_G, CO_PAD, CI_PAD), dtype=tl.float32)
    for first in range(chunk * chunk_size, tl.minimum(M, (chunk + 1) * chunk_size), BLOCK_M):
        m = first + r
        m_ok = m < M
        gy_first = gy_ptr + tl.cast(first, tl.int64) * (G * CO)
        gy = tl.load(gy_first + gy_offset, mask=gy_ok & m_ok[None, :, None], other=0.)
        inside = _inside(m_ok, (m // W) % H, m % W, dy, dx, H, W)
        x_first = x_ptr + tl.cast(first, tl.int64) * (G * CI)
        x = tl.load(x_first + x_offset, mask=x_ok & inside[None, :, None], other=0.)
        acc = tl.dot(tl.permute(gy, (0, 2, 1)), x, acc, input_precision=PRECISION)
    part = part_ptr + ((chunk * 9 + t) * G * CO * CI).to(tl.int64)
    part_offset = (g * (CO * CI))[:, None, None] + (o * CI)[None, :, None] + i[None, None, :]
    tl.store(part + part_offset, acc, mask=g_ok & (o < CO)[None, :, None] & (i < CI)[None, None, :])


def _pad(n: int) -> int:
    """A per-group width as a tile side: a power of two, at least tl.dot's 16."""
    return max(16, triton.next_power_of_2(n))


def _precision(dtype: torch.dtype) -> str:
    """float32 products as the cuDNN convolution they replace would take them: TF32 only where allowed."""
    return 'tf32' if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else 'ieee'


def _conv(x: Tensor, taps: Tensor, bias: Tensor | None) -> Tensor:
    """Convolution of a contiguous (B, H, W, G * CI) map with taps (9, G, CI, CO): (B, H, W, G * CO) in x's dtype."""
    B, H, W, _ = x.shape
    _, G, CI, CO = taps.shape
    y = x.new_empty(B, H, W, G * CO)
    M = B * H * W
    if bias is None:
        b, b_stride_h, b_stride_w = y, 0, 0  # never read
    else:
        b = bias.expand(H, W, G * CO)
        b_stride_h, b_stride_w, channel_stride = b.stride()
        if channel_stride != 1:
            b = b.contiguous()
            b_stride_h, b_stride_w = b.stride()[:2]
    grid = (triton.cdiv(M, _BLOCK_M) * triton.cdiv(G, _BLOCK_G),)
    _conv_kernel[grid](x, taps, b, y, M, H, W, G, CI, CO, b_stride_h, b_stride_w, CI_PAD=_pad(CI), CO_PAD=_pad(CO),
                       HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype), BLOCK_M=_BLOCK_M, BLOCK_G=_BLOCK_G,
                       **_OPTIONS)
    return y


def _weight_grad(x: Tensor, grad_y: Tensor, G: int) -> Tensor:
    """(9, G, CO, CI) fp32 gradient of the taps, from the contiguous input map and output gradient."""
    B, H, W, C_in = x.shape
    CI, CO = C_in // G, grad_y.shape[-1] // G
    M = B * H * W
    chunks = min(_WEIGHT_CHUNKS, triton.cdiv(M, _BLOCK_M))
    part = torch.empty(chunks, 9, G, CO, CI, device=x.device, dtype=torch.float32)
    _weight_grad_kernel[(9 * triton.cdiv(G, _BLOCK_G), chunks)](
        x, grad_y, part, M, H, W, G, CI, CO, CI_PAD=_pad(CI), CO_PAD=_pad(CO), PRECISION=_precision(x.dtype),
        BLOCK_M=_BLOCK_M, BLOCK_G=_BLOCK_G, **_OPTIONS)
    return part.sum(0)


class _GroupConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x = x.contiguous()
        G = x.shape[-1] // weight.shape[1]
        CO, CI = weight.shape[0] // G, weight.shape[1]
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        # (G * CO, CI, 3, 3) -> taps (9, G, CI, CO): tap t = 3 * row + column, as the kernel indexes them
        taps = weight.reshape(G, CO, CI, 9).permute(3, 0, 2, 1).contiguous()
        return _conv(x, taps, bias)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype).contiguous()
        G = x.shape[-1] // weight.shape[1]
        CO, CI = weight.shape[0] // G, weight.shape[1]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # each input feeds output m - shift(t) through tap t: the kernel flipped, inputs and outputs swapped
            flipped = weight.reshape(G, CO, CI, 9).flip(-1).permute(3, 0, 1, 2).contiguous()
            grad_x = _conv(grad_y, flipped, None)
        if ctx.needs_input_grad[1]:
            taps = _weight_grad(x, grad_y, G)  # 9, G, CO, CI
            grad_weight = taps.permute(1, 2, 3, 0).reshape(G * CO, CI, 3, 3).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            # (H, W, C) in the bias's dtype (torch sums half precision in fp32); the caller's expand sums it further
            grad_bias = grad_y.sum(0, dtype=ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias


def group_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """3x3 group convolution, padding 1, of a channels-last map: F.conv2d(x, weight, padding=1, groups=G)
    with x and the result in (B, H, W, C) layout, G = x's channels / weight.shape[1].

    `bias` broadcasts to (H, W, C_out): a per-channel (C_out,) bias or a per-position map. Accumulates in
    fp32; the result has x's dtype, the weight gradient the weight's dtype.
    """
    if bias is not None:
        bias = bias.expand(*x.shape[1:3], weight.shape[0])  # the backward's grad_bias sums back to its shape
    return _GroupConv3x3.apply(x, weight, bias)
