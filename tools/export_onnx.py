"""Export a model's inference graph to ONNX, with a dynamic batch dimension.

    python tools/export_onnx.py --cfg configs/NAME.yaml [--checkpoint PATH] --out FILE.onnx [--opts KEY VALUE ...]

The model is the config's, with the weights of --checkpoint (ours, or a released Swin, ACmix or reference
AMixer checkpoint: the same model and geometry, loaded strictly) or, without it, freshly initialised
(with the config's SEED, as main.py).
MODEL.NUM_CLASSES 0 (the configs' default) takes the checkpoint's class count. The graph takes float32
images `images` (batch, channels, IMG_SIZE, IMG_SIZE) and returns `logits` (batch, classes); the weights
are stored inside the one file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from config import get_default_config, merge_yaml  # noqa: E402
from models import build_model  # noqa: E402
from models.pretrained import to_project_layout  # noqa: E402
from utils import UserError, load_checkpoint, load_model_state, set_seed  # noqa: E402


def build(cfg: str, opts: list[str], checkpoint: str | None) -> nn.Module:
    """The config's model in eval mode, with the checkpoint's weights if one is given."""
    config = get_default_config()
    merge_yaml(config, cfg)
    config.defrost()
    config.merge_from_list(opts)
    state_dict = None
    if checkpoint:
        loaded = load_checkpoint(checkpoint)
        state_dict = to_project_layout(loaded.get('model', loaded))
        if not config.MODEL.NUM_CLASSES and 'head.weight' in state_dict:
            config.MODEL.NUM_CLASSES = state_dict['head.weight'].shape[0]
    config.freeze()
    set_seed(config.SEED)  # without a checkpoint: the weights main.py starts from
    model = build_model(config)
    if state_dict is not None:
        load_model_state(model, state_dict, checkpoint)
    return model.eval()


def export(model: nn.Module, out: str) -> None:
    """Write `model`'s inference graph to `out`, the batch dimension dynamic."""
    size = model.img_size
    # two images, so that the exporter does not specialise the batch dimension to 1
    example = torch.randn(2, model.patch_embed.proj.in_channels, size, size)
    torch.onnx.export(model, (example,), out, input_names=['images'], output_names=['logits'],
                      dynamic_shapes=({0: torch.export.Dim('batch')},), external_data=False, verbose=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg', required=True, help='the model config (yaml)')
    parser.add_argument('--checkpoint', help='weights to export (default: the freshly initialised model)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--opts', nargs='+', default=[], metavar='KEY VALUE', help='config overrides')
    args = parser.parse_args(argv)
    try:
        model = build(args.cfg, args.opts, args.checkpoint)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    export(model, args.out)
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 2 ** 20:.1f} MiB): images (batch, '
          f'{model.patch_embed.proj.in_channels}, {model.img_size}, {model.img_size}) -> logits (batch, '
          f'{model.num_classes})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
