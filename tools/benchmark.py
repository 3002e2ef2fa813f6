"""Inference and training throughput of models next to their peers, measured side by side.

    python tools/benchmark.py --threads 2 --json benchmark.json \
        acmix_swin_tiny_patch4_window7_224:swin_tiny_patch4_window7_224 \
        amixer_t:swin_tiny_patch4_window7_224 amixer_deit_s:deit_small_patch16_224 \
        configs/swin_tiny_patch4_window7_224.yaml:swin_tiny_patch4_window7_224

Each PAIR is MODEL:PEER, or a MODEL alone, optionally followed by @BATCH (that pair's batch size in
both modes); a model is a timm name (this project's ACmix and AMixer names included) or a config
yaml. A pair's two models are built together and timed in turn, one batch each, round after round, so that a busy machine slows both alike; a speed is the median over the
rounds after the warm-up ones, and the ratio is the model's over its peer's. The next pair is built
once the last is freed. A training step is forward, cross-entropy, backward and a fused AdamW step (as main.py's).
On a GPU each model's peak memory is counted as if it ran alone: the tensors it keeps between steps
(weights, buffers, optimizer state, its batches) plus the most that one of its steps allocated on top.
Results print as a markdown table; --markdown and --json write them too; --profile adds each model's
costliest operators in one step.

The data mode measures the training loader's images/s per worker on a folder of JPEG photographs
(tools/make_demo_dataset.py --photos), with the configs' augmentation and mixup off, in turns: the workers
stopping at the uint8 image (as the loaders do) and converting, normalising and erasing in float (as before):

    python tools/benchmark.py data datasets/photos --workers 1 --runs 5

The feed mode runs main.py's training steps (the config's recipe: mixup, AMP, clipping, EMA) for whole epochs
fed in turns by the training loader and by one synthetic batch already on the device, and reports both
images/s and their ratio: whether the loader keeps the device busy. Make the dataset large enough for
epochs of a few dozen steps:

    python tools/make_demo_dataset.py --photos --num-train 6400 --out datasets/photos_6400
    python tools/benchmark.py feed datasets/photos_6400 --cfg configs/acmix_swin_small_patch4_window7_224.yaml \
        --workers 8 --batch-size 128
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from torch.utils.data import DataLoader  # noqa: E402

from config import get_default_config, merge_yaml  # noqa: E402
from data import LoadedData, build_loader  # noqa: E402
from data.datasets import collate  # noqa: E402
from data.transforms import build_transform  # noqa: E402
from main import Trainer  # noqa: E402
from models import build_model  # noqa: E402 (the import registers the ACmix and AMixer names with timm)
from optimizer import FUSED_DEVICES  # noqa: E402
from utils import THROUGHPUT_MODES as MODES, ThroughputRunner, init_distributed, keep_freed_memory  # noqa: E402

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def create(spec: str, drop_path: float | None = None) -> nn.Module:
    """The model a spec names: a config yaml, or a timm model name; `drop_path` overrides its stochastic-depth rate."""
    if spec.endswith('.yaml'):
        config = get_default_config()
        merge_yaml(config, spec)
        if drop_path is not None:
            config.defrost()
            config.MODEL.DROP_PATH_RATE = drop_path
        return build_model(config)
    return timm.create_model(spec, **({} if drop_path is None else {'drop_path_rate': drop_path}))


def image_shape(model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of one input image: timm's pretrained config, or the img_size this project's models keep."""
    if getattr(model, 'pretrained_cfg', None):
        return tuple(model.pretrained_cfg['input_size'])
    return model.patch_embed.proj.in_channels, model.img_size, model.img_size


def machine(device: torch.device) -> str:
    """The processor (CPU model name and thread count) or GPU that runs the models."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open('/proc/cpuinfo') as f:
        name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    return f'{name}, {torch.get_num_threads()} threads'


def runner(spec: str, batch_sizes: dict[str, int], args: argparse.Namespace) -> ThroughputRunner:
    """The model a spec names with its synthetic batches and optimizer (a fused AdamW, as main.py's)."""
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = create(spec, args.drop_path).to(device, memory_format=memory_format)
    # dynamic=False: a graph per batch size. By default the second size (training's, after inference's)
    # recompiles with a symbolic batch, whose kernels are slower.
    forward = torch.compile(model, dynamic=False) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type in FUSED_DEVICES)
    shape = image_shape(model)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(size, *shape, device=device).contiguous(memory_format=memory_format)
        return images, torch.randint(model.num_classes, (size,), device=device)

    dtype = DTYPES[args.dtype]
    autocast = contextlib.nullcontext if dtype == torch.float32 else partial(torch.autocast, device.type, dtype)
    return ThroughputRunner(model, optimizer, {mode: batch(batch_sizes[mode]) for mode in MODES}, autocast, forward)


def profile(spec: str, runner: ThroughputRunner, mode: str, rows: int) -> str:
    """The `rows` operators that took the most device (or CPU) time in one step of `mode`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if runner.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        runner.images_per_second(mode)
    sort_by = 'self_cuda_time_total' if runner.cuda else 'self_cpu_time_total'
    return f'### {spec}, one {mode} step\n\n' + prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def allocation_site(frames: list[dict]) -> str:
    """Where an allocation was made, from its recorded stack (innermost frame first): the innermost Python frame
    outside torch, else the autograd node that ran it (a backward has no Python frames), else the innermost."""
    for frame in frames:
        if frame['filename'].endswith('.py') and '/torch/' not in frame['filename']:
            return f"{'/'.join(Path(frame['filename']).parts[-2:])}:{frame['line']} {frame['name']}"
    for frame in frames:
        if 'Backward' in frame['name'] and '::apply' in frame['name']:
            return frame['name'].split('::apply')[0].rsplit('::', 1)[-1]
    return frames[0]['name'] if frames else 'no Python frame (a backward)'


def peak_sites(trace: list[dict], rows: int) -> tuple[int, list[tuple[str, int]]]:
    """The most bytes that a CUDA allocator trace (one device's `device_traces` in a memory snapshot) held at
    once in blocks it allocated, and the `rows` allocation sites holding the most of them then: (site, bytes)."""
    live, by_site = {}, {}  # address -> (bytes, site); site -> bytes
    total = peak = 0
    at_peak = {}
    for event in trace:
        if event['action'] == 'alloc':
            size, site = event['size'], allocation_site(event.get('frames', []))
            live[event['addr']] = size, site
            by_site[site] = by_site.get(site, 0) + size
            total += size
            if total > peak:
                peak, at_peak = total, dict(by_site)
        elif event['action'] == 'free_requested' and event['addr'] in live:
            size, site = live.pop(event['addr'])
            by_site[site] -= size
            total -= size
    return peak, sorted(((site, size) for site, size in at_peak.items() if size), key=lambda item: -item[1])[:rows]


def memory_sites(spec: str, runner: ThroughputRunner, rows: int) -> str:
    """The `rows` places whose allocations hold the most memory at the peak of one training step (CUDA)."""
    # Python frames only: C++ ones would take minutes to symbolise; a backward's allocations have none
    torch.cuda.memory._record_memory_history(stacks='python', max_entries=2_000_000)
    try:
        runner.images_per_second('training')
        trace = torch.cuda.memory._snapshot()['device_traces'][torch.cuda.current_device()]
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    peak, sites = peak_sites(trace, rows)
    return '\n'.join([f'### {spec}, one training step: {peak / 2 ** 30:.2f} GiB allocated at its peak on top of '
                      'what the step started with, by where it was allocated', '',
                      '| GiB | allocated at |', '| ---: | --- |'] + [f'| {size / 2 ** 30:.3f} | `{site}` |'
                                                                     for site, size in sites])


def measure(specs: list[str], batch_sizes: dict[str, int], args: argparse.Namespace) -> tuple[dict, dict, list]:
    """{mode: {spec: median images/s}} of models built together and timed in turn, round after round,
    {mode: {spec: peak GiB}} (on a GPU; empty elsewhere), and the --profile tables."""
    runners = {spec: runner(spec, batch_sizes, args) for spec in specs}
    speeds, peaks, profiles = {}, {}, []
    for mode in [mode for mode in MODES if not getattr(args, f'skip_{mode}')]:
        samples = {spec: [] for spec in runners}
        for _ in range(args.warmup):
            for r in runners.values():
                r.images_per_second(mode)
        for _ in range(args.rounds):
            for spec, r in runners.items():
                samples[spec].append(r.images_per_second(mode))
        speeds[mode] = {spec: statistics.median(values) for spec, values in samples.items()}
        if any(r.cuda for r in runners.values()):
            peaks[mode] = {spec: r.peak_bytes[mode] / 2 ** 30 for spec, r in runners.items()}
        if args.profile:
            profiles += [profile(spec, r, mode, args.profile) for spec, r in runners.items()]
        if args.memory_sites and mode == 'training' and any(r.cuda for r in runners.values()):
            profiles += [memory_sites(spec, r, args.memory_sites) for spec, r in runners.items()]
    return speeds, peaks, profiles


def parse_pair(pair: str, args: argparse.Namespace) -> tuple[str, str | None, dict[str, int]]:
    """MODEL[:PEER][@BATCH] -> (model, peer or None, {mode: batch size}); @BATCH sets both modes' batch."""
    pair, _, batch = pair.partition('@')
    model, _, peer = pair.partition(':')
    sizes = {'inference': args.infer_batch, 'training': args.train_batch}
    return model, peer or None, dict.fromkeys(MODES, int(batch)) if batch else sizes


def compare(pair: str, args: argparse.Namespace) -> tuple[dict, list]:
    """One result: the model's and its peer's images/s (and peak GiB on a GPU) in each mode, and the model's
    ratios to its peer; and the --profile tables."""
    model, peer, batch_sizes = parse_pair(pair, args)
    speeds, peaks, profiles = measure([model] if peer is None else [model, peer], batch_sizes, args)
    result = {'model': model, 'peer': peer, 'infer_batch': batch_sizes['inference'],
              'train_batch': batch_sizes['training']}
    for mode in MODES:
        for key, values in ((f'{mode}_images_s', speeds), (f'{mode}_peak_gib', peaks)):
            ours, theirs = values.get(mode, {}).get(model), values.get(mode, {}).get(peer)
            result[key], result[f'peer_{key}'] = ours, theirs
        ours, theirs = result[f'{mode}_images_s'], result[f'peer_{mode}_images_s']
        result[f'{mode}_ratio'] = ours / theirs if ours and theirs else None
    return result, profiles


def markdown_table(results: list[dict]) -> str:
    def cell(value: float | None, suffix: str = '') -> str:
        return '-' if value is None else f'{value:.2f}{suffix}'

    memory = any(r['training_peak_gib'] for r in results)
    lines = ['| model | peer | batch | inference img/s | peer | ratio | training img/s | peer | ratio |'
             + ' training peak GiB | peer |' * memory,
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |' + ' ---: | ---: |' * memory]
    for r in results:
        batch = str(r['infer_batch']) if r['infer_batch'] == r['train_batch'] else f"{r['infer_batch']}/{r['train_batch']}"
        cells = [r['model'], r['peer'] or '-', batch]
        for mode in MODES:
            cells += [cell(r[f'{mode}_images_s']), cell(r[f'peer_{mode}_images_s']), cell(r[f'{mode}_ratio'], 'x')]
        if memory:
            cells += [cell(r['training_peak_gib']), cell(r['peer_training_peak_gib'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('pairs', nargs='+', metavar='PAIR',
                        help='MODEL:PEER or MODEL (timm name or config yaml), optionally @BATCH for both modes')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument('--infer-batch', type=int, default=16, help='inference batch size (default 16)')
    parser.add_argument('--train-batch', type=int, default=8, help='training batch size (default 8)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed rounds first (default 3)')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds (default 5)')
    parser.add_argument('--dtype', choices=DTYPES, default='float32',
                        help='float32, or the autocast dtype of mixed precision (default float32)')
    parser.add_argument('--channels-last', action='store_true', help='models and images in channels-last layout')
    parser.add_argument('--compile', action='store_true', help='run the models through torch.compile')
    parser.add_argument('--drop-path', type=float, metavar='RATE',
                        help="every model's stochastic-depth rate in training (default: each model's own)")
    parser.add_argument('--skip-inference', action='store_true', help='measure training only')
    parser.add_argument('--skip-training', action='store_true', help='measure inference only')
    parser.add_argument('--profile', type=int, metavar='ROWS',
                        help="after timing, profile one step of each model and mode: its ROWS costliest operators")
    parser.add_argument('--memory-sites', type=int, metavar='ROWS',
                        help='on a GPU, after timing, record one training step of each model: the ROWS places '
                        'whose allocations hold the most memory at its peak')
    parser.add_argument('--json', metavar='FILE', help='also write the settings and results to FILE')
    parser.add_argument('--markdown', metavar='FILE', help='also write the table (and any profiles) to FILE')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as main.py on GPUs: the fastest convolution algorithm for each shape
    # main.py trains on CPU with this malloc setting; without it, glibc takes many steps to reach it, and a
    # model measured early in the process would run slower than the same model measured later
    malloc_kept = args.device == 'cpu' and keep_freed_memory()

    torch.manual_seed(0)
    results, profiles = [], []
    for pair in args.pairs:
        result, pair_profiles = compare(pair, args)
        results.append(result)
        profiles += pair_profiles

    settings = {'machine': machine(torch.device(args.device)), 'device': args.device, 'torch': torch.__version__,
                'timm': timm.__version__, 'dtype': args.dtype, 'channels_last': args.channels_last,
                'compile': args.compile, 'drop_path': args.drop_path, 'infer_batch': args.infer_batch,
                'train_batch': args.train_batch, 'warmup': args.warmup, 'rounds': args.rounds,
                'malloc_keeps_freed_memory': malloc_kept}
    options = ([args.dtype] + ['channels-last'] * args.channels_last + ['torch.compile'] * args.compile
               + [f'drop path {args.drop_path} in every model'] * (args.drop_path is not None)
               + ['malloc keeps freed memory'] * malloc_kept)
    report = '\n\n'.join([
        f"{settings['machine']}; torch {torch.__version__}, timm {timm.__version__}; {', '.join(options)}; "
        f'inference batch {args.infer_batch}, training batch {args.train_batch} unless a row says otherwise; '
        f'medians of {args.rounds} alternating rounds after {args.warmup} warm-up rounds',
        markdown_table(results), *profiles])
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report + '\n')
    if args.json:
        Path(args.json).write_text(json.dumps({'settings': settings, 'results': results}, indent=1) + '\n')
    return 0


# ------------------------------------------------------------------------ data mode: the loader's images/s

DATA_PATHS = {'uint8': 'uint8 in the worker', 'float': 'float in the worker (before)'}


def workers_cpu_seconds() -> float:
    """CPU seconds of this process's ended and joined child processes (a loader's workers, once it is done)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_speed(dataset, keys: list[tuple[int, int]], args: argparse.Namespace) -> tuple[float, float]:
    """Images/s per worker of a fresh loader of the samples `keys`: as it delivers them from its first batch on
    (the workers' start is not timed), and per CPU second of its workers (what busy cores take less off)."""
    loader = DataLoader(dataset, sampler=keys, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate, drop_last=True, generator=torch.Generator())
    cpu_before = workers_cpu_seconds()
    batches = iter(loader)
    first, *_ = next(batches)
    start, timed = time.perf_counter(), 0
    for images, *_ in batches:
        timed += len(images)
    seconds = time.perf_counter() - start
    # the workers have ended and been joined: the loader is through
    return timed / seconds / args.workers, (len(first) + timed) / (workers_cpu_seconds() - cpu_before)


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser('benchmark.py data', description="The training loader's images/s per "
                                     'worker, the uint8 path next to the float one, in alternating runs.')
    parser.add_argument('data_path', metavar='DIR', help='dataset root, e.g. from make_demo_dataset.py --photos')
    parser.add_argument('--cfg', metavar='FILE', help="the augmentation of this config (default: the defaults, "
                        'which all ImageNet configs keep: rand-m9-mstd0.5-inc1, random erasing 0.25)')
    parser.add_argument('--workers', type=int, default=1, help='loader worker processes, 1 or more (default 1)')
    parser.add_argument('--batch-size', type=int, default=32, help='images per batch (default 32)')
    parser.add_argument('--images', type=int, default=640, help='images a run loads (default 640)')
    parser.add_argument('--runs', type=int, default=3, help='runs of each path, alternating (default 3)')
    parser.add_argument('--json', metavar='FILE', help='also write the settings and results to FILE')
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error('--workers must be 1 or more: the speed of worker processes is what is measured')
    config = get_default_config()
    if args.cfg:
        merge_yaml(config, args.cfg)
    config.defrost()
    config.DATA.DATA_PATH = args.data_path
    config.DATA.BATCH_SIZE = args.batch_size
    config.AUG.MIXUP = config.AUG.CUTMIX = 0.0  # on the device, not in the workers
    config.AUG.CUTMIX_MINMAX = None
    config.freeze()
    dataset = build_loader(config).dataset_train
    transforms = {'uint8': dataset.transform, 'float': build_transform(config, is_train=True, float_in_worker=True)}
    speeds = {path: {'wall': [], 'cpu': []} for path in DATA_PATHS}
    for run in range(args.runs):
        # each run its own epoch: the same samples and augmentation for both paths, new ones for the next run
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(run)).tolist()
        keys = [(run, order[i % len(order)]) for i in range(args.images + args.batch_size)]
        for path, transform in transforms.items():
            dataset.transform = transform
            wall, cpu = loader_speed(dataset, keys, args)
            speeds[path]['wall'].append(wall)
            speeds[path]['cpu'].append(cpu)

    aug = config.AUG
    settings = {'machine': machine(torch.device('cpu')), 'torch': torch.__version__, 'timm': timm.__version__,
                'data_path': args.data_path, 'images': len(dataset), 'img_size': config.DATA.IMG_SIZE,
                'auto_augment': aug.AUTO_AUGMENT, 'reprob': aug.REPROB, 'workers': args.workers,
                'batch_size': args.batch_size, 'images_per_run': args.images, 'runs': args.runs}
    print(f"{settings['machine']}; torch {torch.__version__}, timm {timm.__version__}; {len(dataset)} training "
          f'images of {args.data_path} at {config.DATA.IMG_SIZE} px, {aug.AUTO_AUGMENT}, random erasing '
          f'{aug.REPROB}; {args.workers} workers, batch {args.batch_size}, {args.images} images a run\n')
    print('| path | images/s per worker, each run | median | images per worker CPU second, each run | median |\n'
          '| --- | --- | ---: | --- | ---: |')
    medians = {path: {kind: statistics.median(values) for kind, values in speeds[path].items()} for path in speeds}
    for path, name in DATA_PATHS.items():
        cells = [name]
        for kind in ('wall', 'cpu'):
            cells += [', '.join(f'{v:.1f}' for v in speeds[path][kind]), f'{medians[path][kind]:.1f}']
        print('| ' + ' | '.join(cells) + ' |')
    ratios = {kind: medians['uint8'][kind] / medians['float'][kind] for kind in ('wall', 'cpu')}
    print(f"\nuint8 / float: {ratios['wall']:.3f}x in images/s, {ratios['cpu']:.3f}x in images per CPU second")
    if args.json:
        Path(args.json).write_text(json.dumps({'settings': settings, 'images_per_worker': speeds,
                                               'ratios': ratios}, indent=1) + '\n')
    return 0


# ------------------------------------------------------------------------ feed mode: training fed by the loader

FEEDS = ('loader', 'synthetic')


def timed_epoch(trainer: Trainer, data: LoadedData, epoch: int, batches: Iterable, skip: int) -> float:
    """Images/s of main.py's training steps over one epoch fed `batches`, from step `skip` to the epoch's end
    (so that the workers' first batches of an epoch, which a long epoch hardly notices, are not timed)."""
    marks = []

    def fed() -> Iterator:
        for step, batch in enumerate(batches):
            if step == skip:
                if trainer.device.type == 'cuda':
                    torch.cuda.synchronize(trainer.device)
                marks.append(time.perf_counter())
            yield batch

    trainer.data = dataclasses.replace(data, loader_train=fed())
    trainer.train_one_epoch(epoch, 0)  # ends by reading the loss: the device is through
    seconds = time.perf_counter() - marks[0]
    return (trainer.steps_per_epoch - skip) * trainer.config.DATA.BATCH_SIZE / seconds


def feed_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser('benchmark.py feed', description="main.py's training steps fed by the "
                                     "training loader and by one synthetic batch on the device, epoch by epoch "
                                     'in turns: does the loader keep the device busy?')
    parser.add_argument('data_path', metavar='DIR', help='dataset root, e.g. from make_demo_dataset.py --photos; '
                        'its training images / batch size are the steps of an epoch')
    parser.add_argument('--cfg', required=True, metavar='FILE', help="the model, recipe and augmentation")
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if there is one), 'cuda' or 'cpu'")
    parser.add_argument('--workers', type=int, default=8, help='loader worker processes (default 8)')
    parser.add_argument('--batch-size', type=int, default=128, help='images per batch (default 128)')
    parser.add_argument('--skip', type=int, default=8, help='untimed steps at the start of each epoch (default 8)')
    parser.add_argument('--rounds', type=int, default=3, help='timed epochs of each feed, after one untimed '
                        'epoch of each (default 3)')
    parser.add_argument('--json', metavar='FILE', help='also write the settings and results to FILE')
    args = parser.parse_args(argv)
    config = get_default_config()
    merge_yaml(config, args.cfg)
    config.defrost()
    config.DATA.DATA_PATH, config.DATA.NUM_WORKERS = args.data_path, args.workers
    config.DATA.BATCH_SIZE = args.batch_size
    config.MODEL.NUM_CLASSES = 0  # the data's (a head of another size: the same work for both feeds)
    config.TRAIN.SAVE_INTERVAL_STEPS = 0
    config.freeze()
    dist_info = init_distributed(args.device)
    trainer = Trainer(config, dist_info, logging.getLogger('benchmark.feed'))
    data = build_loader(config, device=dist_info.device)
    trainer.build(data)
    if trainer.steps_per_epoch <= args.skip:
        parser.error(f'an epoch of {args.data_path} is {trainer.steps_per_epoch} steps at batch {args.batch_size}: '
                     f'make it longer than --skip {args.skip} (more training images)')
    trainer.prepare_training()
    synthetic = next(iter(data.loader_train))  # a batch as the loader gives it: on the device, normalised
    speeds = {feed: [] for feed in FEEDS}
    for epoch in range(2 * (args.rounds + 1)):
        feed = FEEDS[epoch % 2]
        batches = data.loader_train if feed == 'loader' else itertools.repeat(synthetic, trainer.steps_per_epoch)
        speed = timed_epoch(trainer, data, epoch, batches, args.skip)
        if epoch >= 2:
            speeds[feed].append(speed)

    device = dist_info.device
    medians = {feed: statistics.median(values) for feed, values in speeds.items()}
    ratio = medians['loader'] / medians['synthetic']
    settings = {'machine': machine(device), 'cpus': os.cpu_count(), 'torch': torch.__version__,
                'timm': timm.__version__, 'cfg': args.cfg, 'model': config.MODEL.NAME, 'amp': config.AMP.ENABLE,
                'amp_dtype': config.AMP.DTYPE, 'compile': config.TRAIN.COMPILE, 'data_path': args.data_path,
                'images': len(data.dataset_train), 'workers': args.workers, 'batch_size': args.batch_size,
                'steps_per_epoch': trainer.steps_per_epoch, 'skip': args.skip, 'rounds': args.rounds}
    amp = f'AMP {config.AMP.DTYPE}' if config.AMP.ENABLE and device.type == 'cuda' else 'float32'
    print(f"{settings['machine']} ({os.cpu_count()} CPUs); torch {torch.__version__}; {config.MODEL.NAME}, {amp}, "
          f'batch {args.batch_size}, {trainer.steps_per_epoch} steps an epoch, timed from step {args.skip}; '
          f'{args.workers} loader workers on {len(data.dataset_train)} images of {args.data_path}\n')
    print('| input | training images/s, each epoch | median |\n| --- | --- | ---: |')
    for feed, name in (('loader', f'the loader, {args.workers} workers'), ('synthetic', 'one synthetic batch')):
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in speeds[feed])} | {medians[feed]:.1f} |")
    print(f'\nloader / synthetic: {ratio:.3f}x')
    if args.json:
        Path(args.json).write_text(json.dumps({'settings': settings, 'images_per_s': speeds, 'medians': medians,
                                               'ratio': ratio}, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    other_modes = {'data': data_main, 'feed': feed_main}
    command = sys.argv[1] if len(sys.argv) > 1 else None
    sys.exit(other_modes[command](sys.argv[2:]) if command in other_modes else main())
