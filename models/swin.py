"""The Swin hierarchical backbone, written once, with the token mixer of its blocks plugged in.

Tokens stay in a (B, H, W, C) map from the patch embedding to the pooling. Module, parameter and buffer
names follow the released Swin checkpoints (which ACmix's share), so those load as they are.

Also here: the window helpers the mixers share, and Swin's own mixer, window attention with a
relative position bias.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, register_notrace_function, register_notrace_module, resample_abs_pos_embed, trunc_normal_
from timm.models._features import feature_take_indices  # timm exports it from no public module
from torch import Tensor
from torch.utils.checkpoint import checkpoint

MixerFactory = Callable[[int, int, int], nn.Module]
"""(dim, num_heads, window_size) -> token mixer.

A mixer's forward takes `x`, a cyclically shifted (B, H, W, C) map whose sides are multiples of
window_size; `mask`, the shifted-window mask (num_windows, N, N) or None; and `ape`, the stage's policy
position embedding (N, C) or None (only AMixer stages have one). It returns a map shaped like `x`.
"""


# ----------------------------------------------------------------------------------------------------
# Window helpers
# ----------------------------------------------------------------------------------------------------

def cpu_eager(t: Tensor) -> bool:
    """Whether `t` is on the CPU and not being traced by torch.compile: where CPU-only eager paths apply."""
    return t.device.type == 'cpu' and not torch.compiler.is_compiling()


def matmul_dtype(t: Tensor) -> torch.dtype:
    """The dtype a matmul with `t` computes in: autocast's where autocast is on for its device (never on
    'meta', which has none), else `t`'s own."""
    device = t.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def relative_position_index(window_size: int) -> Tensor:
    """(N, N) index, N = window_size**2, of each (query, key) offset into a (2w-1)**2 table."""
    w = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + (w - 1)  # 2, N, N; each in [0, 2w-2]
    return offsets[0] * (2 * w - 1) + offsets[1]


def gather_relative(table: Tensor, index: Tensor) -> Tensor:
    """table[index] of a (offsets, K) table and an (N, N) index: (N, N, K).

    As index_select, whose backward (index_add) is much faster on CPU than indexing's (index_put); fastest
    from a table with contiguous rows.
    """
    return table.index_select(0, index.flatten()).unflatten(0, index.shape)


def cyclic_shift(x: Tensor, shift: int) -> Tensor:
    """torch.roll(x, (shift, shift), dims=(1, 2)) of a (B, H, W, C) map, as one gather of its tokens.

    (torch.roll copies once per dimension, through a slow path on CPU.)
    """
    B, H, W, C = x.shape
    order = torch.arange(H * W, device=x.device).view(H, W).roll((shift, shift), dims=(0, 1)).flatten()
    return x.reshape(B, H * W, C).index_select(1, order).view(B, H, W, C)


def shifted_window_mask(size: int | tuple[int, int], window_size: int, shift_size: int) -> Tensor:
    """(num_windows, N, N) additive mask for a (size x size), or (height x width), map rolled by -shift_size.

    After the roll, a window at the border holds tokens from up to four image regions that are not
    neighbours; a token attends only within its own region (-100 elsewhere, as the references use).
    """
    w, s = window_size, shift_size
    height, width = (size, size) if isinstance(size, int) else size
    region = torch.zeros(height, width)
    bands = (slice(0, -w), slice(-w, -s), slice(-s, None))
    for label, (rows, cols) in enumerate(itertools.product(bands, bands)):
        region[rows, cols] = label
    region = region.view(height // w, w, width // w, w).transpose(1, 2).reshape(-1, w * w)  # num_windows, N (row-major)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, -100.0)


@lru_cache(maxsize=32)
def padded_map_mask(height: int, width: int, window_size: int, shift_size: int, device: torch.device) -> Tensor:
    """shifted_window_mask of a map of another size than the built one, -inf where masked (see mix_tokens);
    cached per size and device, as a stage's blocks and a detector's fixed input size reuse it."""
    mask = shifted_window_mask((height, width), window_size, shift_size).to(device)
    return mask.masked_fill(mask < 0, float('-inf'))


# ----------------------------------------------------------------------------------------------------
# Swin's token mixer
# ----------------------------------------------------------------------------------------------------

class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: Tensor, mask: Tensor | None, ape: Tensor | None = None) -> Tensor:
        """`ape` is unused: attention has no policy to position-embed."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1))
        return self.proj_drop(self.proj(self.attend(qkv, mask)))

    def attend(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """(B, H, W, 3, heads, head_dim) queries, keys and values, in any memory layout -> (B, H, W, C)
        attention output, heads concatenated."""
        B, H, W, _, heads, head_dim = qkv.shape
        w = self.window_size
        bias = gather_relative(self.relative_position_bias_table, self.relative_position_index).permute(2, 0, 1)
        if mask is not None:
            # an image's windows join the heads, so that the (nW * heads, N, N) bias broadcasts over the batch
            bias = (mask.unsqueeze(1) + bias).flatten(0, 1)
        # one copy takes the map to q, k and v in (image, window, head, token) order, viewed as (B, nW * heads,
        # N, head_dim) for the masked bias and as (B * nW, heads, N, head_dim) for the bias alone
        windows = qkv.unflatten(1, (H // w, w)).unflatten(3, (W // w, w)).permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = windows.reshape(3, -1, bias.shape[0], w * w, head_dim).unbind(0)
        bias = bias.unsqueeze(0)
        if bias.requires_grad and q.device.type == 'cpu':
            # SDPA's fused CPU kernel gives no gradient for its mask, and its fallback spends extra passes
            # over the attention matrix: plain matmuls and softmax are faster while the bias trains. (CUDA's
            # memory-efficient kernel does give it, and keeps no attention matrix for the backward.)
            attn = torch.matmul(q, k.transpose(-2, -1)).mul_(self.scale).add_(bias)
            out = attn.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        # ... and one copy takes the output back to the map
        out = out.view(B, H // w, W // w, heads, w, w, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(B, H, W, heads * head_dim)


# ----------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Non-overlapping patches -> (B, H/p, W/p, C) tokens, optionally normalised."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_eps: float | None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if norm_eps is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)
        return x.contiguous() if self.norm is None else self.norm(x)


@register_notrace_module  # FX: its padding branches on the map's size
class PatchMerging(nn.Module):
    """Halve the resolution and double the width.

    Each 2x2 neighbourhood is concatenated in Swin's order (row, col) = (0,0), (1,0), (0,1), (1,1),
    normalised and projected. An odd side is zero-padded first (AMixer; Swin's sizes are always even).
    """

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=bias)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class ScaledResidual(torch.autograd.Function):
    """x + scale * y, the scale (per channel, or per sample and channel) broadcasting over y.

    As torch.addcmul, whose backward first multiplies all of y by its `value` (1) for the scale's gradient:
    one pass over y that this one skips (AMixer-DeiT-S has 34 such residuals).
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, y: Tensor) -> Tensor:
        # y, a whole branch output, is kept only for the scale's gradient: a drop-path mask needs none
        ctx.save_for_backward(scale, y if ctx.needs_input_grad[1] else None)
        return torch.addcmul(x, scale, y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        scale, y = ctx.saved_tensors
        grad_scale = (grad * y).sum_to_size(scale.shape) if ctx.needs_input_grad[1] else None
        return grad, grad_scale, grad * scale


@dataclass(frozen=True)
class BlockSettings:
    """What all blocks of a network share."""
    mixer: MixerFactory
    mlp_ratio: float
    drop: float
    norm_eps: float
    layer_scale: float | None  # initial per-channel scale of both residual branches (AMixer); None: unscaled
    store_mask: bool  # the shifted-window mask is a state-dict buffer, as in Swin's released checkpoints


@register_notrace_module  # FX: padding, masks and drop path branch on sizes and devices; a leaf for timm's tracer
class SwinBlock(nn.Module):
    """Pre-norm residual block: (shifted-)window token mixing, then an MLP."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int, shift: bool,
                 drop_path: float, settings: BlockSettings):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        # the built map's sides padded up to whole windows (AMixer; Swin's always divide): the stored mask's size
        self.padded_size = math.ceil(resolution / window_size) * window_size
        self.norm1 = nn.LayerNorm(dim, eps=settings.norm_eps)
        self.attn = settings.mixer(dim, num_heads, window_size)  # `attn` for every mixer: the checkpoints' name
        self.drop_path = drop_path  # stochastic depth: the probability of dropping a sample's residual
        self.norm2 = nn.LayerNorm(dim, eps=settings.norm_eps)
        self.mlp = Mlp(dim, int(dim * settings.mlp_ratio), drop=settings.drop)
        if settings.layer_scale is None:
            self.register_parameter('gamma1', None)
            self.register_parameter('gamma2', None)
        else:
            self.gamma1 = nn.Parameter(torch.full((dim,), settings.layer_scale))
            self.gamma2 = nn.Parameter(torch.full((dim,), settings.layer_scale))
        mask = shifted_window_mask(self.padded_size, window_size, self.shift_size) if shift else None
        self.register_buffer('attn_mask', mask, persistent=settings.store_mask)

    def forward(self, x: Tensor, ape: Tensor | None = None) -> Tensor:
        x = self.residual(x, lambda t: self.mix_tokens(self.norm1(t), ape), self.gamma1)
        return self.residual(x, lambda t: self.mlp(self.norm2(t)), self.gamma2)

    def residual(self, x: Tensor, branch: Callable[[Tensor], Tensor], gamma: Tensor | None) -> Tensor:
        """x + drop_path(gamma * branch(x)), the branch mapping each sample on its own.

        Drop path (stochastic depth) drops each sample's branch with probability drop_path and scales the
        kept ones by 1 / keep. On the CPU in eager mode the branch then runs on the kept samples alone,
        which saves the dropped samples' compute (AMixer-DeiT-S's rates, 0 to 0.1, drop 5% of its blocks'
        samples on average). Elsewhere every sample runs, and drop path joins the layer scale as one
        per-sample factor, so that the residual is one pass: a GPU would have to wait to learn which
        samples are kept, and torch.compile would need a graph per number of kept samples.
        """
        if not (self.training and self.drop_path > 0.):
            y = branch(x)
            return x + y if gamma is None else ScaledResidual.apply(x, gamma, y)
        keep = 1. - self.drop_path
        kept = x.new_empty(x.shape[0]).bernoulli_(keep)  # 1 for a kept sample
        if cpu_eager(x):
            index = kept.nonzero().flatten()
            if 0 < len(index) < len(kept):  # (with none kept, every branch still runs: DDP needs its gradients)
                y = branch(x.index_select(0, index))
                y = y if gamma is None else y * gamma
                dtype = torch.promote_types(x.dtype, y.dtype)  # as x + y's (under autocast they can differ)
                return x.to(dtype).index_add(0, index, y.to(dtype), alpha=1. / keep)
        scale = kept.div_(keep).view(-1, *(1,) * (x.ndim - 1))
        y = branch(x)
        return ScaledResidual.apply(x, scale if gamma is None else scale * gamma, y)

    def mix_tokens(self, x: Tensor, ape: Tensor | None) -> Tensor:
        """Pads the sides to whole windows (at zero, as Swin's detection backbone does), shifts, mixes, and
        undoes both. Any map size works: the built one uses the stored mask, others a computed one."""
        B, H, W, C = x.shape
        w, s = self.window_size, self.shift_size
        pad_h, pad_w = -H % w, -W % w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        mask = None
        if s:
            x = cyclic_shift(x, -s)
            if H + pad_h == W + pad_w == self.padded_size:
                # The references' -100 leaves each masked weight near exp(-100): a denormal float, which slows
                # x86 arithmetic many-fold. -inf makes those weights exact zeros.
                mask = self.attn_mask.masked_fill(self.attn_mask < 0, float('-inf'))
            else:
                mask = padded_map_mask(H + pad_h, W + pad_w, w, s, x.device)
        x = self.attn(x, mask, ape)
        if s:
            x = cyclic_shift(x, s)
        return x[:, :H, :W].contiguous() if pad_h or pad_w else x


class SwinStage(nn.Module):
    """Blocks at one resolution, alternating plain and shifted windows, then optional patch merging."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int, shift: bool,
                 drop_paths: Sequence[float], settings: BlockSettings, policy_ape: bool,
                 downsample: PatchMerging | None):
        super().__init__()
        self.resolution = resolution
        self.grad_checkpointing = False
        # AMixer's policy position embedding: one per stage, shared by its blocks
        self.ape = nn.Parameter(torch.randn(window_size ** 2, dim) * .02) if policy_ape else None
        self.blocks = nn.ModuleList([
            SwinBlock(dim, resolution, num_heads, window_size, shift and i % 2 == 1, drop_path, settings)
            for i, drop_path in enumerate(drop_paths)])
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = self.run_block(block, x)
        return x if self.downsample is None else self.downsample(x)

    def run_block(self, block: SwinBlock, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, self.ape, use_reentrant=False)
        return block(x, self.ape)


def plan_stages(img_size: int, patch_size: int, window_sizes: Sequence[int], allow_padding: bool
                ) -> list[tuple[int, int, bool]]:
    """(resolution, window size, shift) of each stage; ValueError, naming img_size, if the size cannot work.

    As both references do, a window is clipped to its stage's nominal side (patch grid // 2**i) and only
    shifted when the stage holds more than one window. Without padding (Swin), every side must divide
    into windows and halve exactly; with it (AMixer), sides are padded instead.
    """
    grid = img_size // patch_size
    if grid // 2 ** (len(window_sizes) - 1) < 1:
        raise ValueError(f'img_size {img_size} is too small: with patch_size {patch_size}, its {grid}x{grid} '
                         f'patch grid cannot be halved for {len(window_sizes)} stages')
    plan, resolution = [], grid
    for i, window_size in enumerate(window_sizes):
        nominal = grid // 2 ** i
        window = min(window_size, nominal)
        if not allow_padding:
            if resolution % window:
                raise ValueError(f'img_size {img_size} does not fit window {window}: stage {i} has '
                                 f'{resolution}x{resolution} tokens, not a multiple of the window')
            if i + 1 < len(window_sizes) and resolution % 2:
                raise ValueError(f'img_size {img_size} does not halve evenly: stage {i} has '
                                 f'{resolution}x{resolution} tokens, an odd side that patch merging cannot halve')
        plan.append((resolution, window, nominal > window))
        resolution = math.ceil(resolution / 2)
    return plan


@register_notrace_function  # FX: branches on the input's size
def checked_input(x: Tensor, img_size: int, patch_size: int, dynamic_img_size: bool) -> Tensor:
    """`x` itself, once its size is one the model takes (ValueError, naming both sizes, if not)."""
    H, W = x.shape[-2:]
    if not dynamic_img_size:
        if (H, W) != (img_size, img_size):
            raise ValueError(f'input is {H}x{W} but the model was built for img_size {img_size} '
                             f'(built with dynamic_img_size=True it takes other sizes)')
    elif H % patch_size or W % patch_size:
        raise ValueError(f'input is {H}x{W}: its sides must be multiples of the patch size {patch_size}')
    return x


@register_notrace_function  # FX: branches on the map's size
def add_position_embedding(x: Tensor, pos_embed: Tensor, grid: int) -> Tensor:
    """x + the (1, grid * grid, C) absolute position embedding, resampled bicubically (as timm's ViTs do)
    where the (B, H, W, C) map is of another size."""
    H, W = x.shape[1:3]
    if (H, W) != (grid, grid):
        pos_embed = resample_abs_pos_embed(pos_embed, [H, W], [grid, grid], num_prefix_tokens=0)
    return x + pos_embed.view(1, H, W, -1)


class SwinTransformer(nn.Module):
    """Patch embedding, stages of blocks with patch merging in between, norm, mean pooling, linear head.

    Defaults are the reference classes'. Layout options (all defaults are Swin's):
      allow_padding: pad stage sides to whole windows and even sizes instead of refusing them (AMixer);
      merge_bias: patch-merging projection has a bias (AMixer);
      store_masks: shifted-window masks are state-dict buffers, as in Swin's released checkpoints.
    timm's interface: global_pool 'avg' or '' (none); dynamic_img_size: take inputs of any size whose
    sides are multiples of patch_size (each block keeps its built window and shift, and pads to whole
    windows), not only img_size. Features are (B, H, W, C) maps (output_fmt NHWC), taken at the end of
    each stage, or of each block in a one-stage (isotropic) model.
    """

    def __init__(self, mixer: MixerFactory, *, img_size: int | Sequence[int] = 224, patch_size: int = 4,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = 'avg', embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Sequence[int] = 7, mlp_ratio: float = 4., drop_rate: float = 0.,
                 drop_path_rate: float = 0.1, ape: bool = False, patch_norm: bool = True, norm_eps: float = 1e-5,
                 layer_scale: float | None = None, policy_ape: bool = False, allow_padding: bool = False,
                 merge_bias: bool = False, store_masks: bool = True, dynamic_img_size: bool = False,
                 use_checkpoint: bool = False):
        super().__init__()
        if not isinstance(img_size, int):  # timm passes its cfg's (height, width)
            height, width = img_size
            if height != width:
                raise ValueError(f'img_size {tuple(img_size)}: models are built square; build with '
                                 f'dynamic_img_size=True to take other shapes')
            img_size = height
        num_stages = len(depths)
        window_sizes = [window_size] * num_stages if isinstance(window_size, int) else list(window_size)
        if len(window_sizes) != num_stages or len(num_heads) != num_stages:
            raise ValueError(f'depths {list(depths)}, num_heads {list(num_heads)} and window sizes '
                             f'{window_sizes} must give one value per stage')
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        for dim, heads in zip(dims, num_heads):
            if dim % heads:
                raise ValueError(f'stage width {dim} is not divisible by its {heads} heads')
        plan = plan_stages(img_size, patch_size, window_sizes, allow_padding)
        check_global_pool(global_pool)

        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = 'NHWC'
        self.feature_dim = -1  # timm's name for the channel axis of forward_features' output
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_eps if patch_norm else None)
        grid = img_size // patch_size
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim)) if ape else None
        self.pos_drop = nn.Dropout(drop_rate)
        settings = BlockSettings(mixer, mlp_ratio, drop_rate, norm_eps, layer_scale, store_masks)
        # stochastic depth grows linearly over all blocks (rates on the CPU, also when building on 'meta')
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i, (resolution, window, shift) in enumerate(plan):
            first = sum(depths[:i])
            self.layers.append(SwinStage(
                dims[i], resolution, num_heads[i], window, shift, drop_paths[first:first + depths[i]], settings,
                policy_ape, downsample=PatchMerging(dims[i], merge_bias) if i + 1 < num_stages else None))
        # feature taps, as (stage, block) after which each is taken, and timm's description of them
        if num_stages == 1:
            self.feature_taps = [(0, j) for j in range(depths[0])]
            self.feature_info = [dict(num_chs=dims[0], reduction=patch_size, module=f'layers.0.blocks.{j}')
                                 for j in range(depths[0])]
        else:
            self.feature_taps = [(i, depth - 1) for i, depth in enumerate(depths)]
            self.feature_info = [dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f'layers.{i}')
                                 for i, dim in enumerate(dims)]
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head = self.classifier(num_classes)

        if self.absolute_pos_embed is not None:
            trunc_normal_(self.absolute_pos_embed, std=.02)
        self.apply(_init_weights)
        self.set_grad_checkpointing(use_checkpoint)

    def classifier(self, num_classes: int) -> nn.Module:
        """A new linear head for num_classes (none for 0), on the model's device and in its dtype."""
        if num_classes <= 0:
            return nn.Identity()
        weight = self.patch_embed.proj.weight
        return nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {'absolute_pos_embed'}

    def no_weight_decay_keywords(self) -> set[str]:
        return {'relative_position_bias_table'}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (as for layer-wise rate decay), in the order of the network: the
        embedding; per stage its policy position embedding, each block, its patch merging; the final norm."""
        return dict(
            stem=r'^patch_embed|^absolute_pos_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.ape', (-1,)),
                (r'^layers\.(\d+)\.blocks\.(\d+)', None),
                (r'^layers\.(\d+)\.downsample', (99998,)),
                (r'^norm', (99999,)),
            ])

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised head for num_classes (0: none); global_pool None keeps the pooling."""
        if global_pool is not None:
            check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = self.classifier(num_classes).train(self.training)
        _init_weights(self.head)

    def embed(self, x: Tensor) -> Tensor:
        """Images -> the (B, H, W, C) token map that the first stage takes."""
        x = self.patch_embed(checked_input(x, self.img_size, self.patch_size, self.dynamic_img_size))
        if self.absolute_pos_embed is not None:
            x = add_position_embedding(x, self.absolute_pos_embed, self.img_size // self.patch_size)
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) images -> (B, H', W', num_features) normalised, unpooled features."""
        x = self.embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def run_to_tap(self, x: Tensor, last: int) -> Iterator[Tensor]:
        """The token map at each feature tap up to index `last`, running the network after the embedding
        only as far as that tap."""
        taps = self.feature_taps[:last + 1]
        tap = 0
        for i, stage in enumerate(self.layers):
            for j, block in enumerate(stage.blocks):
                x = stage.run_block(block, x)
                if (i, j) == taps[tap]:
                    yield x
                    tap += 1
                    if tap == len(taps):
                        return
            if stage.downsample is not None:
                x = stage.downsample(x)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False
                              ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature extraction: the features at the taps `indices` selects (None: all; n: the last n;
        a sequence: those), and unless intermediates_only, forward_features' output. `norm` applies the
        final norm to the last tap's features; stop_early stops at the last tap selected."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f'output_fmt {output_fmt!r}: features are NCHW or NHWC')
        num_taps = len(self.feature_taps)
        take_indices, max_index = feature_take_indices(num_taps, indices)
        last = max_index if stop_early or intermediates_only else num_taps - 1
        intermediates = []
        for index, x in enumerate(self.run_to_tap(self.embed(x), last)):
            if index in take_indices:
                feature = self.norm(x) if norm and index == num_taps - 1 else x
                intermediates.append(feature.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else feature)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if last == num_taps - 1 else x), intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drops the network past the last tap `indices` selects (see forward_intermediates), and the final
        norm and head where asked or where they no longer fit; returns the selected taps' indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_taps), indices)
        stage, block = self.feature_taps[max_index]
        self.layers = self.layers[:stage + 1]
        self.layers[stage].blocks = self.layers[stage].blocks[:block + 1]
        self.layers[stage].downsample = None
        self.feature_taps = self.feature_taps[:max_index + 1]
        pruned_end = max_index < len(self.feature_info) - 1
        if prune_norm or pruned_end:
            self.norm = nn.Identity()
        if pruned_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or pruned_end:
            self.reset_classifier(0, '')
        return take_indices


def check_global_pool(global_pool: str) -> None:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool {global_pool!r}: 'avg' (the mean over positions) and '' (none) are implemented")


def _init_weights(module: nn.Module) -> None:
    # the references' initialisation: truncated normal linears, unit layer norms
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def swin(*, qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0., **kwargs) -> SwinTransformer:
    """Plain Swin: window attention in every block. Keyword arguments as SwinTransformer's."""
    mixer = partial(WindowAttention, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop_rate)
    return SwinTransformer(mixer, drop_rate=drop_rate, **kwargs)
