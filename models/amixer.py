"""AMixer token mixer (adaptive weight mixing), AMixer-Swin, AMixer-DeiT, and reference checkpoint conversion.

AMixer replaces attention's query-key products with mixing weights built from a bank of relative-position
weight tables: an adapter looks at each source token and chooses, per head, how to combine the banks;
the combined logits are normalised over source tokens and mix the (pre-projected) tokens of the window.

AMixer-DeiT is the one-stage instance of the same backbone: its window is the whole patch grid, so it
never shifts, pads or merges, and its position embedding is the backbone's absolute one.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn
from torch import Tensor

from .swin import SwinTransformer, cpu_eager, gather_relative, matmul_dtype, relative_position_index

# Options of the reference classes that exist here only with their published value ...
PUBLISHED_OPTIONS = {'ada': True, 'mode': 'linear-softmax', 'pre_proj': True, 'post_proj': True, 'relative': True}
# ... and their defaults there, which an argument list that omits them gets.
REFERENCE_OPTION_DEFAULTS = {
    'amixer_swin': {'ada': False, 'mode': 'linear-softmax', 'pre_proj': True, 'post_proj': True, 'relative': True},
    'amixer_deit': {'ada': False, 'mode': 'softmax', 'pre_proj': False, 'post_proj': False, 'relative': False},
}


# Below this bound on |logits|, exp(logits) without the max subtracted is finite and normal in float32, with
# a margin (e**30 is about 1e13) for the matmuls and gradients that multiply it.
UNSHIFTED_EXP_BOUND = 30.0


def exp_needs_no_shift(policy: Tensor, bank: Tensor, mask: Tensor | None = None) -> bool:
    """Whether every logit, policy[s, b] . bank[s, t], lies within +-UNSHIFTED_EXP_BOUND, by Cauchy-Schwarz:
    |logit| <= max |policy row| * max |bank row|, plus the mask's largest entry where that is positive (the
    Swin masks only lower logits, to -inf). A softmax is the same under any shift, so its usual shift by
    the max over sources (two passes over the weights: the max, and the subtraction) may then be skipped.
    `bank` may be any tensor whose rows (over its last dimension) include all bank rows, such as the
    table they are gathered from, and `mask` any tensor with the mask's entries.

    Checked on CPU in eager mode only: the check reads a number back, which on a GPU waits for the device,
    and under torch.compile would split the graph (where the shift fuses into the exp anyway).
    """
    if not cpu_eager(policy):
        return False
    dtype = torch.promote_types(policy.dtype, torch.float32)  # not a bfloat16 norm
    bound = (torch.linalg.vector_norm(policy, dim=-1, dtype=dtype).amax()
             * torch.linalg.vector_norm(bank, dim=-1, dtype=dtype).amax())
    if mask is not None:
        bound = bound + mask.amax().clamp(min=0)
    return bool(bound <= UNSHIFTED_EXP_BOUND)


def sum_over_sources(exp: Tensor) -> Tensor:
    """exp.sum(dim=0).unsqueeze(-1) of the (S, b, T) softmax numerators.

    On CPU in eager mode as a matrix-vector product with ones, which streams the weights faster than the
    sum's reduction over a leading dimension. Compiled, the sum instead fuses into the exp's loop, where the
    product would make a pass of its own.
    """
    if not cpu_eager(exp):
        return exp.sum(dim=0).unsqueeze(-1)
    total = exp.new_empty(*exp.shape[1:], 1)
    # out= also keeps the product in exp's dtype under autocast, which may list mv as a bfloat16 op
    torch.mv(exp.view(exp.shape[0], -1).t(), exp.new_ones(exp.shape[0]), out=total.view(-1))
    return total


class SourceSoftmaxMix(torch.autograd.Function):
    """mixed[b, t] = sum over sources s of softmax_s(logits)[s, b, t] * values[b, s], where
    logits[s, b, t] = policy[s, b] . bank[s, t] (+ the mask, which repeats every prod(mask.shape[2:-1]) of b).

    The source token is in both factors of the logits, so it is the batch of one matmul over the banks,
    which writes them source-major. The softmax over sources then runs as passes that each stream that
    layout in order (max; subtract and exp in place; sum; the first two only with `shift`, which the
    caller may leave out where exp cannot overflow, see exp_needs_no_shift), and its division moves to
    the (b, t, head_dim) output (the sum: see sum_over_sources).
    (softmax's kernel for a leading dimension walks all sources of a few columns at once, rows a whole
    layer apart: slow on weights larger than the cache.) The backward folds the same division into the
    incoming gradient; it works in place on the weights' gradient in the layout its matmul leaves
    (autograd's copies it first), and takes the softmax's per-target sum, sum_s weights * grad_weights,
    as mixed . grad, a reduction over head_dim instead of over the sources. (No `out=` into a strided
    layout: torch.compile cannot trace that and would break the graph at every block.)

    Under autocast the matmuls run in its dtype and the softmax in float32, as autocast runs the plain
    ops; the backward, which autocast does not reach, keeps the same dtypes.
    """

    @staticmethod
    def forward(ctx, policy: Tensor, bank: Tensor, mask: Tensor | None, values: Tensor, shift: bool) -> Tensor:
        # policy (S, b, banks), bank (S, T, banks), mask (S, 1, ..., T) or None, values (b, S, d) -> (b, T, d)
        dtype = matmul_dtype(values)
        policy, bank, values = policy.to(dtype), bank.to(dtype), values.to(dtype)
        logits = torch.bmm(policy, bank.transpose(1, 2))
        if mask is not None:
            logits.view(mask.shape[0], -1, *mask.shape[2:]).add_(mask)
        exp = logits.to(torch.promote_types(dtype, torch.float32))
        if shift:
            exp = exp.sub_(exp.amax(dim=0))  # the usual shift of a softmax by its max, so that exp cannot overflow
        exp = exp.exp_()  # the softmax's numerators
        total = sum_over_sources(exp)  # (b, T, 1)
        mixed = torch.bmm(exp.to(dtype).permute(1, 2, 0), values).div_(total)
        ctx.save_for_backward(policy, bank, values, exp, total, mixed)
        return mixed

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, Tensor, None]:
        # (in float32 or float64 every .to below is a no-op; autograd casts the gradients to the inputs' dtypes)
        policy, bank, values, exp, total, mixed = ctx.saved_tensors
        # with weights = exp / total, every use of the weights below takes them as exp and grad / total
        grad = grad.to(total.dtype) / total
        grad_in_dtype = grad.to(values.dtype)  # the matmuls' operand
        grad_values = torch.bmm(exp.to(values.dtype).transpose(0, 1), grad_in_dtype)
        grad_weights = torch.bmm(values, grad_in_dtype.transpose(1, 2)).transpose(0, 1)
        per_target_sum = torch.linalg.vecdot(mixed.to(exp.dtype), grad)
        grad_logits = grad_weights.to(exp.dtype).sub_(per_target_sum).mul_(exp).to(values.dtype)
        return torch.bmm(grad_logits, bank), torch.bmm(grad_logits.transpose(1, 2), policy), None, grad_values, None


# How the mixing runs on CUDA: 'triton', the fused kernels of models/amixer_mix.py, or 'torch', SourceSoftmaxMix
# as on the CPU. A module attribute, so that a benchmark can measure both in one process.
CUDA_MIXING = 'triton'


def mix_sources(policy: Tensor, bank: Tensor, values: Tensor, mask: Tensor | None, heads: int, shift: bool) -> Tensor:
    """SourceSoftmaxMix of a mixer's policy (S, b, banks), bank (S, T, banks) and values (b, S, d), b running
    (image, window, head), with the Swin mask (windows, T, S) or None; `shift` as there.

    In the fused kernels on CUDA (see CUDA_MIXING), and on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1), which is how the tests check them without a GPU. Not under torch.compile: the
    kernels have not been run through it, while inductor fuses SourceSoftmaxMix's own passes.
    """
    if CUDA_MIXING not in ('triton', 'torch'):
        raise ValueError(f"models.amixer.CUDA_MIXING must be 'triton' or 'torch', not {CUDA_MIXING!r}")
    triton_runs = values.is_cuda or os.environ.get('TRITON_INTERPRET') == '1'
    if CUDA_MIXING == 'triton' and triton_runs and not torch.compiler.is_compiling():
        from .amixer_mix import FusedSourceSoftmaxMix  # imports Triton only where it runs
        return FusedSourceSoftmaxMix.apply(policy, bank, values, mask, heads)
    if mask is not None:
        # the reference adds the transposed Swin mask, mask[window, target, source], to its logits
        # as (source, 1, window, head, target): a view that broadcasts over the images and the heads
        mask = mask.permute(2, 0, 1)[:, None, :, None, :].expand(-1, -1, -1, heads, -1)
    return SourceSoftmaxMix.apply(policy, bank, mask, values, shift)


class AdaptiveWeightMixing(nn.Module):
    """Per-window token mixing with weights that each source token chooses from a bank."""

    def __init__(self, dim: int, num_heads: int, window_size: int, num_banks: int, adapter_reduction: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.num_banks = num_banks
        self.window_size = window_size
        self.weight_bank = nn.Parameter(torch.randn(num_banks, (2 * window_size - 1) ** 2) * .02)
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        hidden = dim // adapter_reduction
        self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_banks * num_heads))
        self.pre_proj = nn.Linear(dim, dim)
        self.post_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None, ape: Tensor | None) -> Tensor:
        B, H, W, C = x.shape
        w, heads, banks = self.window_size, self.num_heads, self.num_banks
        N, head_dim = w * w, C // heads

        def by_window(t: Tensor) -> Tensor:  # (B, H, W, K) -> (B, window row, row, window column, column, K)
            return t.view(B, H // w, w, W // w, w, -1)

        # The linears run on the map; one copy each then takes their outputs to the layouts the matmuls need.
        adapter_input = x
        if ape is not None:  # the policy position embedding: one vector per position in a window
            adapter_input = (by_window(x) + ape.view(w, 1, w, C)).view(B, H, W, C)
        policy = by_window(self.adapter(adapter_input)).unflatten(-1, (banks, heads))
        policy = policy.permute(2, 4, 0, 1, 3, 6, 5).reshape(N, -1, banks)  # source, (b, window, head), banks
        # (offsets, banks), rows made contiguous for the gather and the bound's norms: gathering short rows
        # from the transposed view is slower, forward and backward
        table = self.weight_bank.t().contiguous()
        bank_logits = gather_relative(table, self.relative_position_index)  # source, target, banks
        shift = not exp_needs_no_shift(policy, table, mask)  # on the table's rows (AMixer-DeiT: 729, not 38416)
        values = by_window(self.pre_proj(x)).unflatten(-1, (heads, head_dim))
        values = values.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, N, head_dim)  # (b, window, head), source, head_dim
        mixed = mix_sources(policy, bank_logits, values, mask, heads, shift)  # (b, window, head), target, head_dim
        mixed = mixed.view(B, H // w, W // w, heads, w, w, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        return self.post_proj(mixed.reshape(B, H, W, C))


def amixer_swin(*, k: float = 1.5, policy_ape: bool = True, init_values: float = 1e-3, adapter_reduction: int = 4,
                **kwargs) -> SwinTransformer:
    """AMixer-Swin: int(heads * k) weight banks per block, layer scale, optional policy position embedding.

    Other keyword arguments as SwinTransformer's; defaults are the reference class's.
    """
    def mixer(dim: int, num_heads: int, window_size: int) -> AdaptiveWeightMixing:
        return AdaptiveWeightMixing(dim, num_heads, window_size, int(num_heads * k), adapter_reduction)

    return SwinTransformer(mixer, layer_scale=init_values, policy_ape=policy_ape, allow_padding=True,
                           merge_bias=True, store_masks=False, **kwargs)


def amixer_deit(*, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                embed_dim: int = 768, depth: int = 12, num_heads: int = 1, k: int = 16, mlp_ratio: float = 4.,
                init_values: float = 1e-3, drop_rate: float = 0., drop_path_rate: float = 0.,
                adapter_reduction: int = 4, use_checkpoint: bool = False, **kwargs) -> SwinTransformer:
    """Isotropic AMixer-DeiT: k weight banks per block over the whole patch grid; defaults are the reference's.

    Other keyword arguments (global_pool, dynamic_img_size) as SwinTransformer's. At another input size its
    window stays the built patch grid: a smaller grid is padded to it (at zero, as AMixer-Swin pads), a
    larger one split into windows of it, and the absolute position embedding is resampled to the grid.
    """
    def mixer(dim: int, heads: int, window_size: int) -> AdaptiveWeightMixing:
        return AdaptiveWeightMixing(dim, heads, window_size, k, adapter_reduction)

    return SwinTransformer(
        mixer, img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depths=(depth,), num_heads=(num_heads,), window_size=img_size // patch_size,
        mlp_ratio=mlp_ratio, drop_rate=drop_rate, drop_path_rate=drop_path_rate, ape=True, norm_eps=1e-6,
        layer_scale=init_values, use_checkpoint=use_checkpoint, **kwargs)


def convert_reference_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the reference AMixer-Swin or AMixer-DeiT code, in this project's layout.

    - the mixer is `attn` (reference: `spatial_mixer`; DeiT: `spatil_mlp`);
    - DeiT's blocks are stage 0's, and its (1, H, W, C) `pos_embed` is `absolute_pos_embed` (1, H*W, C);
    - shifted-window masks are recomputed, not stored (reference: one per stage);
    - patch merging is Swin's `reduction`, its 4 concatenated neighbours in Swin's order (the reference
      concatenates (0,0), (0,1), (1,0), (1,1) as (row, col); Swin swaps the middle two).
    """
    converted = {}
    for key, value in state_dict.items():
        if re.fullmatch(r'layers\.\d+\.attn_mask', key):
            continue
        key = key.replace('.spatial_mixer.', '.attn.').replace('.spatil_mlp.', '.attn.')
        if key.startswith('blocks.'):
            key = 'layers.0.' + key
        if key == 'pos_embed':
            key, value = 'absolute_pos_embed', value.flatten(1, 2)
        if re.fullmatch(r'layers\.\d+\.downsample\.(proj|norm)\.(weight|bias)', key):
            key = key.replace('.proj.', '.reduction.')
            if not key.endswith('reduction.bias'):
                value = value.unflatten(-1, (4, -1))[..., [0, 2, 1, 3], :].flatten(-2)
        converted[key] = value
    return converted
