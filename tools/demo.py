"""The demo behind `make demo`: train the ACmix and AMixer demo configs on the digits data with main.py,
evaluate each, print a results table and plot the training curves.

Each run starts from scratch: an earlier demo's output is removed first (and the removal is said). The results
come from the files the runs write: metrics.jsonl for training, eval.json for the evaluation.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from main import build_config, parse_option  # noqa: E402
from tools.plot_curves import plot_curves, read_metrics  # noqa: E402
from utils import run_folder  # noqa: E402

DEMOS = {'ACmix-Swin': 'configs/demo/acmix_swin_demo.yaml', 'AMixer-Swin': 'configs/demo/amixer_swin_demo.yaml'}


def main_py(*args: str) -> None:
    """Run main.py; its output goes to this terminal as it comes."""
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), *args]
    returncode = subprocess.run(cmd).returncode
    if returncode:
        sys.exit(f'demo: {" ".join(cmd)} failed with exit code {returncode}')


def run_demo(name: str, cfg: str, data_path: str, output: str) -> dict:
    args = ['--cfg', os.path.join(ROOT, cfg), '--data-path', data_path, '--output', output]
    run_dir = run_folder(build_config(parse_option(args)))
    if os.path.isdir(run_dir):
        print(f'demo: removing the earlier run {run_dir}: the demo trains from scratch')
        shutil.rmtree(run_dir)
    start = time.time()
    main_py(*args)
    wall = time.time() - start
    main_py(*args, '--eval', '--resume', os.path.join(run_dir, 'best.pth'))
    with open(os.path.join(run_dir, 'eval.json')) as f:
        evaluation = json.load(f)
    records = read_metrics(run_dir)
    return {'model': name, 'params': evaluation['parameters'], 'val_acc1': evaluation['model']['acc1'],
            'epochs': len(records), 'train_s': sum(r['epoch_time_s'] for r in records), 'wall_s': wall,
            'images_per_s': sum(r['train_images_per_s'] for r in records) / len(records), 'run_dir': run_dir}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data-path', default='datasets/digits')
    parser.add_argument('--output', default='output/demo')
    args = parser.parse_args()
    results = [run_demo(name, cfg, args.data_path, args.output) for name, cfg in DEMOS.items()]

    curves = os.path.join(args.output, 'curves.png')
    plot_curves({r['model']: r['run_dir'] for r in results}, curves)
    print(f'\n{"model":<12} {"params":>8} {"val top-1":>10} {"epochs":>7} {"train time":>11} {"train images/s":>15}')
    for r in results:
        print(f'{r["model"]:<12} {r["params"]:>8,} {r["val_acc1"]:>9.2f}% {r["epochs"]:>7} '
              f'{r["train_s"]:>10.1f}s {r["images_per_s"]:>15.1f}')
    print(f'\ntraining curves: {curves}')
    with open(os.path.join(args.output, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
