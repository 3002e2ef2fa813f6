"""Check the project's models against golden outputs of the reference implementations.

    python tools/check_golden.py FILE [FILE ...] [--atol 1e-4]

Each FILE is a golden `.pt` file (format: tests/data/golden/README.md). The equivalent project model is
built from its `family` and `reference_kwargs`, loads its `state_dict` (converted from the reference
layout for AMixer), and runs its `input` in eval mode in float32 (on --device, CPU by default; on a GPU
with TF32 off). One line per file gives the max abs difference to its `output`; the exit status is 1 if
any file exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models import from_reference, to_project_layout  # noqa: E402


def max_abs_diff(path: str | Path, device: str = 'cpu') -> float:
    """Max abs difference between the project model's output on `device` and the golden output of one file."""
    golden = torch.load(path, map_location='cpu', weights_only=True)
    model = from_reference(golden['family'], golden['reference_kwargs']).float().eval()
    model.load_state_dict(to_project_layout(golden['state_dict']))
    with torch.no_grad():
        output = model.to(device)(golden['input'].float().to(device)).cpu()
    return (output - golden['output'].float()).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('files', nargs='+', metavar='FILE', help='golden .pt files')
    parser.add_argument('--atol', type=float, default=1e-4, help='tolerated max abs difference (default 1e-4)')
    parser.add_argument('--device', default='cpu', help='where the models run: cpu (default) or cuda')
    args = parser.parse_args(argv)
    # TF32 rounds float32 products to 10 mantissa bits: errors well above the tolerance
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    failed = 0
    for path in args.files:
        diff = max_abs_diff(path, args.device)
        ok = diff <= args.atol
        failed += not ok
        print(f"{path}: max abs diff {diff:.3e} {'ok' if ok else f'FAIL (atol {args.atol:g})'}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
