"""Parameter count, multiply-accumulates for one image, and a per-stage table of a config's model.

    python tools/model_info.py --cfg configs/acmix_swin_tiny_patch4_window7_224.yaml [--json]

MACs are counted with torch.utils.flop_counter (its FLOPs halved) on the 'meta' device, so even the
largest models are counted in seconds without allocating their weights. GFLOPs in the papers' sense
(Swin, ACmix, AMixer) are these GMACs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from config import get_default_config, merge_yaml  # noqa: E402
from models import build_model  # noqa: E402


def model_info(config) -> dict:
    """params, macs, per-stage rows and state_dict_shapes of the config's model at DATA.IMG_SIZE."""
    with torch.device('meta'):
        model = build_model(config).eval()
        image = torch.empty(1, model.patch_embed.proj.in_channels, model.img_size, model.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    flops = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(model).__name__
    stages = []
    for i, stage in enumerate(model.layers):
        block = stage.blocks[0]
        stages.append({
            'stage': i,
            'resolution': stage.resolution,
            'window': block.window_size,
            'dim': block.norm1.normalized_shape[0],
            'depth': len(stage.blocks),
            'params': sum(p.numel() for p in stage.parameters()),
            'macs': flops.get(f'{root}.layers.{i}', 0) // 2,
        })
    return {
        'name': config.MODEL.NAME,
        'type': config.MODEL.TYPE,
        'img_size': model.img_size,
        'params': sum(p.numel() for p in model.parameters()),
        'macs': counter.get_total_flops() // 2,
        'stages': stages,
        'state_dict_shapes': {key: list(value.shape) for key, value in model.state_dict().items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg', required=True, help='config yaml')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of the table')
    args = parser.parse_args(argv)
    config = get_default_config()
    merge_yaml(config, args.cfg)
    info = model_info(config)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['name']} ({info['type']}), {info['img_size']}x{info['img_size']} input")
    print(f"params {info['params']:,}   MACs {info['macs']:,} ({info['macs'] / 1e9:.2f} GFLOPs as the papers count)")
    print(f"{'stage':>5} {'tokens':>9} {'window':>6} {'dim':>5} {'depth':>5} {'params':>12} {'MACs':>15}")
    for row in info['stages']:
        tokens = f"{row['resolution']}x{row['resolution']}"
        print(f"{row['stage']:>5} {tokens:>9} {row['window']:>6} {row['dim']:>5} {row['depth']:>5} "
              f"{row['params']:>12,} {row['macs']:>15,}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
