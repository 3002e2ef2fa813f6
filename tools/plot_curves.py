"""Plot training curves (loss and validation accuracy per epoch) from one or more runs' metrics.jsonl.

    python tools/plot_curves.py RUN_DIR_OR_METRICS [...] --out curves.png
"""
import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str) -> list[dict]:
    """One record per epoch; where a resumed run logged an epoch again, its last record counts."""
    if os.path.isdir(path):
        path = os.path.join(path, 'metrics.jsonl')
    by_epoch = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_epoch[record['epoch']] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_curves(runs: dict[str, str], out: str) -> None:
    """`runs` maps a label to a run folder or metrics.jsonl; writes a PNG with a loss and an accuracy panel."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, path in runs.items():
        records = read_metrics(path)
        epochs = [r['epoch'] + 1 for r in records]
        ax_loss.plot(epochs, [r['train_loss'] for r in records], label=f'{label} train')
        ax_loss.plot(epochs, [r['val_loss'] for r in records], '--', label=f'{label} val')
        ax_acc.plot(epochs, [r['val_acc1'] for r in records], marker='.', label=f'{label} val top-1')
    ax_loss.set(title='loss', xlabel='epoch', ylabel='cross-entropy')
    ax_acc.set(title='validation accuracy', xlabel='epoch', ylabel='top-1 (%)')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run folders (holding metrics.jsonl) or metrics.jsonl files')
    parser.add_argument('--out', default='curves.png')
    args = parser.parse_args()
    plot_curves({os.path.basename(os.path.normpath(os.path.dirname(r) if r.endswith('.jsonl') else r)): r
                 for r in args.runs}, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
