"""ACmix token mixer: one set of 1x1 projections feeding both window attention and a convolution.

The query/key/value projections of window attention are shared with a convolution path: a fully
connected layer maps the 3 x heads projected features of each head channel to the 9 inputs of a 3x3
kernel, and a group convolution (initialised as shifts) aggregates them. Both paths run on the same,
cyclically shifted map and are mixed as rate1 * attention + rate2 * convolution.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .swin import SwinTransformer, WindowAttention, matmul_dtype


class ACmixAttention(WindowAttention):
    """Window attention plus ACmix's convolution path; parameter names are the released checkpoints'."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.):
        super().__init__(dim, num_heads, window_size, qkv_bias, qk_scale, proj_drop)
        head_dim = dim // num_heads
        self.fc = nn.Conv2d(3 * num_heads, 9, kernel_size=1)
        # no bias: the reference's init sets it to None
        self.dep_conv = nn.Conv2d(9 * head_dim, dim, kernel_size=3, padding=1, groups=head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        # every output channel starts as the sum of its 9 inputs, input i shifted to kernel tap i
        shifts = torch.eye(9).view(9, 3, 3)
        with torch.no_grad():
            self.dep_conv.weight.copy_(shifts.expand(dim, 9, 3, 3))

    def forward(self, x: Tensor, mask: Tensor | None, ape: Tensor | None = None) -> Tensor:
        """`ape` is unused: ACmix has no policy to position-embed."""
        B, H, W, C = x.shape
        heads, head_dim = self.num_heads, C // self.num_heads
        dtype = matmul_dtype(self.qkv.weight)

        def head_channel_major(t: Tensor | None) -> Tensor | None:
            """qkv's weight or bias, its output rows reordered from (3 * heads, head_dim) to (head_dim, 3 * heads)
            and cast to `dtype` in the same copy (autocast would cast the reordered copy once more)."""
            if t is None:
                return None
            rows = t.unflatten(0, (3 * heads, head_dim)).transpose(0, 1)
            return rows.to(dtype, memory_format=torch.contiguous_format).flatten(0, 1)

        # The projections come out head-channel-major, so that the convolution path's linear reads them in
        # place; attention gathers its windows from any layout.
        qkv = F.linear(x, head_channel_major(self.qkv.weight), head_channel_major(self.qkv.bias))
        qkv = qkv.unflatten(-1, (head_dim, 3 * heads))
        attention = self.attend(qkv.unflatten(-1, (3, heads)).permute(0, 1, 2, 4, 5, 3), mask)
        # rate1 * proj(attention) + rate2 * convolution in two steps: the rates scale the (small) weights,
        # the convolution adds proj's bias, and proj's matmul accumulates onto the convolution
        convolution = self.convolve(qkv, self.rate2 * self.dep_conv.weight, self.rate1 * self.proj.bias)
        out = torch.addmm(convolution.reshape(-1, C), attention.view(-1, C), (self.rate1 * self.proj.weight).t())
        return self.proj_drop(out.view(B, H, W, C))

    def convolve(self, qkv: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """(B, H, W, head_dim, 3 * heads) projections -> (B, H, W, C) group convolution of their taps."""
        fc_weight, fc_bias = self.fc.weight.flatten(1), self.fc.bias  # (9 taps, 3 * heads), (9,)
        groups = self.dep_conv.groups
        if qkv.shape[-1] > fc_weight.shape[0]:
            # the reference's 1x1 conv over the parts (q, k and v of every head), as a linear; channel
            # (d, tap) of the taps is d * 9 + tap
            taps = F.linear(qkv, fc_weight, fc_bias).flatten(3)  # B, H, W, 9 * head_dim
            return group_conv3x3(taps, weight, bias, groups)
        # With at most 9 parts (3 heads or fewer), the fc folds into the convolution's weights at no extra
        # cost and its passes over the map go. Its bias, though, reaches the output through the zero
        # padding, so near the border it adds up over fewer kernel taps: a per-position bias map.
        # One batched matmul (over output channels) folds the fc's weight and, as one more part, its bias.
        fc_weight_and_bias = torch.cat([fc_weight, fc_bias[:, None]], dim=1)  # (9 taps, parts + 1)
        kernels = torch.bmm(fc_weight_and_bias.t().expand(len(weight), -1, -1), weight.flatten(2))
        folded, bias_kernel = kernels.unflatten(-1, weight.shape[2:]).split([fc_weight.shape[1], 1], dim=1)
        ones = qkv.new_ones(1, 1, *qkv.shape[1:3])
        bias_map = F.conv2d(ones, bias_kernel, bias, padding=1)[0].permute(1, 2, 0)  # H, W, C
        return group_conv3x3(qkv.flatten(3), folded, bias_map, groups)


# How group_conv3x3 runs, by device type (others: 'grouped'): 'dense' (the equal dense convolution),
# 'grouped' (F.conv2d's grouped kernels: oneDNN's are fast on the CPU, cuDNN's slow for ACmix's few channels
# per group) or 'triton' (the kernels of models/acmix_conv.py). On CUDA the dense convolution, despite its 32x
# multiply-adds, measured fastest of the three (docs/acmix_conv.md). Set from outside to compare them in one
# process (or to run the kernels on the CPU in Triton's interpreter).
CONV_IMPL = {'cuda': 'dense'}


def group_conv3x3(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """3x3 group convolution, padding 1, of a channels-last (B, H, W, C_in) map: (B, H, W, C_out).

    `bias` is per channel (C_out,) or per position (H, W, C_out); CONV_IMPL says how it runs.
    """
    how = CONV_IMPL.get(x.device.type, 'grouped')
    if how == 'triton':
        from .acmix_conv import group_conv3x3 as triton_group_conv3x3  # imports Triton: only where it runs
        return triton_group_conv3x3(x, weight, bias)
    if how == 'dense':
        weight, groups = dense_weight(weight, groups), 1
    elif how != 'grouped':
        raise ValueError(f"models.acmix.CONV_IMPL[{x.device.type!r}] is {how!r}; "
                         "expected 'triton', 'dense' or 'grouped'")
    per_channel = bias.dim() == 1
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias if per_channel else None, padding=1, groups=groups)
    out = out.permute(0, 2, 3, 1)
    return out if per_channel else out.add_(bias)


def dense_weight(weight: Tensor, groups: int) -> Tensor:
    """A group convolution's (out, in / groups, k, k) weight as the equal dense convolution's (out, in, k, k):
    block-diagonal, each output channel's weights at its group's inputs and zeros elsewhere."""
    out_channels, group_inputs, k, _ = weight.shape
    # one op: each group's weights on the diagonal of a (groups, groups) grid, zeros off it. Built in
    # channels-last order, the layout in which the convolution takes it (its input is channels-last) and
    # gives its gradient: no copies between layouts either way.
    blocks = weight.reshape(groups, out_channels // groups, group_inputs, k, k).permute(1, 3, 4, 2, 0)
    dense = torch.diag_embed(blocks, dim1=0, dim2=4)  # (groups, out / groups, k, k, groups, in / groups)
    return dense.view(out_channels, k, k, groups * group_inputs).permute(0, 3, 1, 2)


def acmix_swin(*, qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.,
               **kwargs) -> SwinTransformer:
    """Swin with ACmix in every block. Keyword arguments as SwinTransformer's."""
    mixer = partial(ACmixAttention, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop_rate)
    return SwinTransformer(mixer, drop_rate=drop_rate, **kwargs)
