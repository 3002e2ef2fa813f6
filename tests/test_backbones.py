"""The models as detection backbones: timm feature extraction at any input size, under a torchvision detector.

The reference for other input sizes is Swin's detection backbone (microsoft/Swin-Transformer-Object-Detection,
swin_transformer.py): pad each stage's map to whole windows at zero, roll, mask the rolled windows' regions
as computed on the padded map, and crop back.
"""
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import models  # noqa: F401 (registers the models with timm)
from models.swin import SwinTransformer, WindowAttention


class TimmFPN(torch.nn.Module):
    """A timm features_only backbone under a feature pyramid, as torchvision's detectors take it."""

    def __init__(self, name: str, out_indices: tuple[int, ...], channels: int):
        super().__init__()
        self.body = timm.create_model(name, features_only=True, out_indices=out_indices)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(self.body(images))))


@pytest.mark.parametrize('name', ['acmix_swin_tiny_patch4_window7_224', 'amixer_t'])
def test_faster_rcnn_trains_a_step_on_a_non_square_image(name):
    torch.manual_seed(0)
    backbone = TimmFPN(name, out_indices=(1, 2, 3), channels=32)
    assert backbone.body.feature_info.reduction() == [8, 16, 32]
    levels = ['0', '1', '2', 'pool']
    detector = FasterRCNN(
        backbone, num_classes=3, min_size=256, max_size=320,  # the image's own size: no resizing
        rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * len(levels)),
        box_roi_pool=MultiScaleRoIAlign(levels[:3], output_size=7, sampling_ratio=2),
        rpn_batch_size_per_image=32, box_batch_size_per_image=32).train()
    images = [torch.rand(3, 256, 320)]
    targets = [{'boxes': torch.tensor([[20., 30., 120., 150.], [150., 40., 300., 220.]]),
                'labels': torch.tensor([1, 2])}]
    features = backbone(images[0][None])
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(32, 40), (16, 20), (8, 10), (4, 5)]

    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01)
    losses = detector(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    body = dict(backbone.body.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in body.values())
    assert body['model.patch_embed.proj.weight'].grad.abs().sum() > 0
    before = body['model.patch_embed.proj.weight'].detach().clone()
    optimizer.step()
    assert not torch.equal(before, body['model.patch_embed.proj.weight'])


def swin_detection_window_attention(attn: WindowAttention, x: torch.Tensor, shift: int) -> torch.Tensor:
    """Swin's detection backbone's (shifted) window attention on a (B, H, W, C) map of any size: pad to
    whole windows, roll, attend within windows with the region mask of the padded map, unroll, crop."""
    B, H, W, C = x.shape
    w, heads = attn.window_size, attn.num_heads
    Hp, Wp = -(-H // w) * w, -(-W // w) * w
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    if shift:
        x = torch.roll(x, (-shift, -shift), dims=(1, 2))
    region = torch.zeros(Hp, Wp)
    label = 0
    for rows in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for cols in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            region[rows, cols] = label
            label += 1

    def windows(t):  # (B, Hp, Wp, K) -> (B * num_windows, w * w, K)
        return t.view(t.shape[0], Hp // w, w, Wp // w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, t.shape[-1])

    tokens = windows(x)
    labels = windows(region[None, :, :, None])[:, :, 0]
    mask = torch.where(labels[:, :, None] == labels[:, None, :], 0., -100.) if shift else torch.zeros(1, w * w, w * w)
    q, k, v = attn.qkv(tokens).view(tokens.shape[0], w * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')).flatten(1)
    offset = coords[:, :, None] - coords[:, None, :] + w - 1
    bias = attn.relative_position_bias_table[offset[0] * (2 * w - 1) + offset[1]].permute(2, 0, 1)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + bias
    logits = logits.view(B, -1, heads, w * w, w * w) + mask.view(1, -1, 1, w * w, w * w)
    out = (logits.flatten(0, 1).softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, C)
    out = attn.proj(out).view(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize('size', [(9, 13), (14, 21), (5, 3)])
def test_window_mixing_at_other_sizes_is_swin_detection_backbones(size):
    torch.manual_seed(0)
    model = SwinTransformer(WindowAttention, img_size=32, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4,
                            dynamic_img_size=True).eval()
    for block in model.layers[0].blocks:
        x = torch.randn(2, *size, 8)
        with torch.no_grad():
            ours = block.mix_tokens(x, None)
            reference = swin_detection_window_attention(block.attn, x, block.shift_size)
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    assert [block.shift_size for block in model.layers[0].blocks] == [0, 2]


SLIM = {'embed_dim': 48, 'depths': (2, 2, 2, 2)}  # the published layouts, narrower and shallower for speed


@pytest.mark.parametrize('name, slim', [('acmix_swin_tiny_patch4_window7_224', SLIM), ('amixer_t', SLIM),
                                        ('amixer_deit_s', {'embed_dim': 96, 'depth': 3})])
def test_backbones_take_any_multiple_of_the_stride_and_keep_built_size_outputs(name, slim):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0., **slim).eval()
    backbone = timm.create_model(name, features_only=True, out_indices=(-1,), drop_path_rate=0., **slim).eval()
    missing, unexpected = backbone.model.load_state_dict(model.state_dict(), strict=False)
    assert not missing and {key.split('.')[0] for key in unexpected} == {'norm', 'head'}  # pruned from the backbone
    with torch.no_grad():
        image = torch.randn(1, 3, 224, 224)
        tap, = model.forward_intermediates(image, indices=[-1], intermediates_only=True)
        assert torch.equal(backbone(image)[0], tap)  # the built size: the classifier's own maps, bitwise
        with pytest.raises(ValueError, match='built for img_size 224'):
            model(torch.randn(1, 3, 96, 160))
        feature, = backbone(torch.randn(1, 3, 96, 160))
    reduction = backbone.feature_info.reduction()[-1]
    assert feature.shape[-2:] == (96 // reduction, 160 // reduction)
    assert torch.isfinite(feature).all()
