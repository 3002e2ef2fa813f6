"""Train, evaluate and measure ACmix / AMixer / Swin models from one yaml config.

    python main.py --cfg configs/amixer_t.yaml --data-path /path/to/imagenet
    torchrun --nproc_per_node 8 main.py --cfg ... --data-path ...
    python -m torch.distributed.launch --nproc_per_node 8 main.py --cfg ... --data-path ...
"""
import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from config import get_default_config, merge_yaml
from data import BadImageTracker, DataError, LoadedData, build_loader
from logger import create_logger
from lr_scheduler import build_scheduler
from models import build_model
from models.build import CONFIG_DIR
from models.pretrained import load_pretrained
from optimizer import build_optimizer
from utils import (THROUGHPUT_MODES, AverageMeter, DistInfo, StopRequest, ThroughputRunner, UserError,
                   all_reduce_sum, checkpoint_name, find_resume_checkpoint, get_rng_state, init_distributed,
                   keep_freed_memory, load_checkpoint, load_model_state, prune_checkpoints, run_folder, save_checkpoint,
                   set_rng_state, set_seed, weights_are_finite)


def str2bool(value: str) -> bool:
    if value.lower() in ('true', '1', 'yes'):
        return True
    if value.lower() in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser('main.py', description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('--cfg', metavar='FILE', help='yaml config file (required unless --model is given)')
    parser.add_argument('--opts', nargs='+', default=None, metavar='KEY VALUE', help="override config keys: 'KEY VALUE' pairs")
    parser.add_argument('--batch-size', '--batch_size', dest='batch_size', type=int, help='batch size per device')
    parser.add_argument('--data-path', '--data_path', dest='data_path', help='dataset root')
    parser.add_argument('--resume', help='checkpoint to resume from')
    parser.add_argument('--pretrained', help='weights to start from (fine-tuning or --eval of a released model)')
    parser.add_argument('--accumulation-steps', type=int, help='gradient accumulation steps')
    parser.add_argument('--use-checkpoint', action='store_true', help='gradient checkpointing, to save memory')
    parser.add_argument('--output', '--output_dir', dest='output', metavar='PATH',
                        help='output root: the run goes to OUTPUT/MODEL.NAME/TAG')
    parser.add_argument('--tag', help='run name inside the output root')
    parser.add_argument('--eval', action='store_true', help='evaluate only')
    parser.add_argument('--throughput', action='store_true', help='measure images/s only')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'])
    # torch.distributed.launch passes --local-rank=K (torch 2.x) or --local_rank=K (torch 1.x). The vendor
    # recipe runs `sed 's/--local_rank/--local-rank/g'` on main.py: dedupe so that the edited file parses too.
    parser.add_argument(*dict.fromkeys(['--local-rank', '--local_rank']), dest='local_rank', type=int, default=None)
    # the AMixer README's ConvNeXt-style flags
    amixer = parser.add_argument_group('AMixer README aliases')
    amixer.add_argument('--model', help='model name: reads configs/NAME.yaml')
    amixer.add_argument('--lr', type=float, help='absolute learning rate, not rescaled to the batch size')
    amixer.add_argument('--update_freq', dest='accumulation_steps', type=int, help='= --accumulation-steps')
    amixer.add_argument('--model_ema', type=str2bool, metavar='BOOL', help='keep an EMA of the weights')
    amixer.add_argument('--model_ema_eval', type=str2bool, metavar='BOOL', help='evaluate the EMA weights too')
    args = parser.parse_args(argv)
    if not args.cfg and not args.model:
        parser.error('--cfg FILE (or --model NAME) is required')
    return args


def build_config(args: argparse.Namespace) -> CfgNode:
    """Defaults, then the yaml (with its BASE chain), then --opts, then the flags."""
    config = get_default_config()
    cfg_file = args.cfg or os.path.join(CONFIG_DIR, f'{args.model}.yaml')
    try:
        merge_yaml(config, cfg_file)
        config.defrost()
        if args.opts:
            config.merge_from_list(args.opts)
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    except (KeyError, ValueError, AssertionError) as e:  # yacs: unknown key, bad value, odd --opts
        raise UserError(f'bad config ({cfg_file}, --opts): {e}') from e
    flags = {
        'DATA.BATCH_SIZE': args.batch_size, 'DATA.DATA_PATH': args.data_path, 'MODEL.RESUME': args.resume,
        'MODEL.PRETRAINED': args.pretrained, 'TRAIN.ACCUMULATION_STEPS': args.accumulation_steps,
        'OUTPUT': args.output, 'TAG': args.tag, 'SEED': args.seed, 'DEVICE': args.device,
        'TRAIN.BASE_LR': args.lr, 'TRAIN.EMA.ENABLE': args.model_ema, 'TRAIN.EMA.EVAL': args.model_ema_eval,
    }
    for key, value in flags.items():
        if value is not None:
            node, leaf = config, key.split('.')
            for part in leaf[:-1]:
                node = getattr(node, part)
            setattr(node, leaf[-1], value)
    if args.lr is not None:
        config.TRAIN.LR_SCALE_BATCH = 0  # --lr is absolute, as in the AMixer/ConvNeXt scripts
    if args.use_checkpoint:
        config.TRAIN.USE_CHECKPOINT = True
    config.EVAL_MODE = config.EVAL_MODE or args.eval
    config.THROUGHPUT_MODE = config.THROUGHPUT_MODE or args.throughput
    config.freeze()
    return config


class Trainer:
    """Holds what the training loop needs, so each stage below reads as one step of the story."""

    def __init__(self, config: CfgNode, dist_info: DistInfo, logger: logging.Logger):
        self.config, self.dist, self.logger = config, dist_info, logger
        self.device = dist_info.device
        self.output_dir = run_folder(config)
        use_amp = config.AMP.ENABLE and self.device.type == 'cuda'
        amp_dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[config.AMP.DTYPE]
        self.autocast = (lambda: torch.autocast('cuda', dtype=amp_dtype)) if use_amp else contextlib.nullcontext
        # The scaler also serves as the skip-on-non-finite mechanism; below fp16 it keeps a constant scale of 1.
        self.fp16 = use_amp and amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 16 if self.fp16 else 1.0)
        # Reading a GPU value stalls the pipeline: check flags every PRINT_FREQ steps there, every step on CPU.
        self.sync_every = config.PRINT_FREQ if self.device.type == 'cuda' else 1
        self.stop = StopRequest()
        self.max_accuracy = self.max_accuracy_ema = 0.0
        self.model = self.model_ema = None

    # ------------------------------------------------------------------ setup
    def build(self, data: LoadedData) -> None:
        config = self.config
        set_seed(config.SEED)  # the same initial weights on every rank
        model = build_model(config).to(self.device)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.logger.info(f'{config.MODEL.NAME}: {self.num_parameters:,} parameters')
        self.model = model
        self.optimizer = build_optimizer(config, model, self.device)
        self.model_ema = ModelEmaV3(model, decay=config.TRAIN.EMA.DECAY) if config.TRAIN.EMA.ENABLE else None

        batch, accum = config.DATA.BATCH_SIZE, config.TRAIN.ACCUMULATION_STEPS
        global_batch = batch * self.dist.world_size * accum
        self.steps_per_epoch = len(data.sampler_train) // (batch * accum)  # at least 1: build_loader checks
        self.lr_scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch, self.dist.world_size)
        self.logger.info(f'global batch {global_batch}, {self.steps_per_epoch} optimizer steps per epoch, '
                         f'peak lr {self.lr_scheduler.base_lr:.3g}, min lr {self.lr_scheduler.min_lr:.3g}')

        if data.mixup_fn is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif config.MODEL.LABEL_SMOOTHING > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.data = data
        self.bad_images = BadImageTracker(config.DATA.MAX_BAD_IMAGES, self.logger)

    def restore(self) -> tuple[int, int]:
        """Resume (explicit or newest checkpoint in the output folder), else load pretrained weights.
        Returns the (epoch, optimizer step) to start from."""
        config = self.config
        if config.EVAL_MODE and not (config.MODEL.RESUME or config.MODEL.PRETRAINED):
            raise UserError('--eval needs the weights to evaluate: --resume CHECKPOINT or --pretrained WEIGHTS')
        found = None
        if config.MODEL.RESUME:
            found = config.MODEL.RESUME, load_checkpoint(config.MODEL.RESUME)
        elif config.TRAIN.AUTO_RESUME and not config.EVAL_MODE:
            found = find_resume_checkpoint(self.output_dir, self.logger)
        if found is None:
            set_seed(config.SEED + self.dist.rank)
            if config.MODEL.PRETRAINED:
                self.load_pretrained(config.MODEL.PRETRAINED)
            return config.TRAIN.START_EPOCH, 0
        path, ckpt = found
        self.logger.info(f'resuming from {path}')
        load_model_state(self.model, ckpt['model'], path)
        if self.model_ema is not None and ckpt.get('model_ema') is not None:
            load_model_state(self.model_ema.module, ckpt['model_ema'], f'{path} (model_ema)')
        self.max_accuracy = ckpt.get('max_accuracy', 0.0)
        self.max_accuracy_ema = ckpt.get('max_accuracy_ema', 0.0)
        if config.EVAL_MODE:
            return 0, 0
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.lr_scheduler.load_state_dict(ckpt['lr_scheduler'])
        if ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        rng = ckpt.get('rng', [])
        if self.dist.rank < len(rng):
            set_rng_state(rng[self.dist.rank])
        else:
            self.logger.warning(f'{path} holds no RNG state for rank {self.dist.rank}: reseeding')
            set_seed(config.SEED + self.dist.rank + 1000 * ckpt['epoch'])
        epoch, step = ckpt['epoch'], ckpt['step']
        return (epoch + 1, 0) if step >= self.steps_per_epoch else (epoch, step)

    def load_pretrained(self, path: str) -> None:
        load_pretrained(self.model, path)
        if self.model_ema is not None:  # the EMA starts from these weights, as AMixer's --finetune does
            self.model_ema.set(self.model)
        self.logger.info(f'loaded pretrained weights from {path}')

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch: int, step: int, is_best: bool = False) -> None:
        """Checkpoint after `step` optimizer steps of `epoch` (step == steps_per_epoch: epoch complete)."""
        rng = [None] * self.dist.world_size
        if dist.is_initialized():
            dist.all_gather_object(rng, get_rng_state())
        else:
            rng = [get_rng_state()]
        if not self.dist.is_main:
            return
        if not weights_are_finite(self.model) or (self.model_ema and not weights_are_finite(self.model_ema.module)):
            raise UserError(f'weights are not finite at epoch {epoch} step {step}: no checkpoint written')
        state = {
            'model': self.model.state_dict(),
            'model_ema': self.model_ema.module.state_dict() if self.model_ema else None,
            'optimizer': self.optimizer.state_dict(),
            'lr_scheduler': self.lr_scheduler.state_dict(),
            'scaler': self.scaler.state_dict(),
            'epoch': epoch, 'step': step,
            'max_accuracy': self.max_accuracy, 'max_accuracy_ema': self.max_accuracy_ema,
            'rng': rng,
            'config': self.config.dump(),
        }
        complete = step >= self.steps_per_epoch
        path = os.path.join(self.output_dir, checkpoint_name(epoch, 0 if complete else step))
        save_checkpoint(state, path)
        if is_best:
            save_checkpoint(state, os.path.join(self.output_dir, 'best.pth'))
        prune_checkpoints(self.output_dir, self.config.TRAIN.SAVE_KEEP)
        self.logger.info(f'saved {path}' + (' (best so far)' if is_best else ''))

    # ------------------------------------------------------------------ training
    def prepare_training(self) -> None:
        """The model as the training steps call it: in DDP across processes, compiled if the config asks."""
        model = self.model
        if self.dist.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        self.ddp = model if self.dist.world_size > 1 else None
        self.train_model = torch.compile(model) if self.config.TRAIN.COMPILE else model
        self.consecutive_nonfinite = 0

    def train(self, start_epoch: int, start_step: int) -> None:
        config = self.config
        self.prepare_training()
        self.logger.info(f'training from epoch {start_epoch} step {start_step} to epoch {config.TRAIN.EPOCHS}')
        for epoch in range(start_epoch, config.TRAIN.EPOCHS):
            start = time.time()
            train_loss, completed = self.train_one_epoch(epoch, start_step if epoch == start_epoch else 0)
            if not completed:
                self.logger.info(f'stopped by {self.stop.signal_name} in epoch {epoch}; the checkpoint records '
                                 'the position: run the same command again to continue exactly there')
                return
            epoch_time = time.time() - start
            images = (self.steps_per_epoch - (start_step if epoch == start_epoch else 0)) * config.DATA.BATCH_SIZE \
                * config.TRAIN.ACCUMULATION_STEPS * self.dist.world_size
            metrics = {'epoch': epoch, 'train_loss': train_loss, 'lr': self.optimizer.param_groups[0]['lr']}
            val = self.validate(self.model)
            metrics.update(val_loss=val['loss'], val_acc1=val['acc1'], val_acc5=val['acc5'])
            is_best = val['acc1'] > self.max_accuracy
            self.max_accuracy = max(self.max_accuracy, val['acc1'])
            if self.model_ema is not None and config.TRAIN.EMA.EVAL:
                ema = self.validate(self.model_ema.module)
                metrics.update(ema_val_loss=ema['loss'], ema_val_acc1=ema['acc1'], ema_val_acc5=ema['acc5'])
                self.max_accuracy_ema = max(self.max_accuracy_ema, ema['acc1'])
            metrics.update(epoch_time_s=epoch_time, train_images_per_s=images / epoch_time,
                           bad_images=self.bad_images.end_epoch(epoch))
            self.logger.info(f'epoch {epoch}: val acc@1 {val["acc1"]:.2f}% (max {self.max_accuracy:.2f}%), '
                             f'acc@5 {val["acc5"]:.2f}%, loss {val["loss"]:.4f}, {epoch_time:.1f} s')
            last = epoch == config.TRAIN.EPOCHS - 1
            if epoch % config.SAVE_FREQ == 0 or last or is_best:
                self.save(epoch, self.steps_per_epoch, is_best)
            if self.dist.is_main:
                with open(os.path.join(self.output_dir, 'metrics.jsonl'), 'a') as f:
                    f.write(json.dumps(metrics) + '\n')

    def train_one_epoch(self, epoch: int, start_step: int) -> tuple[float, bool]:
        """Returns (mean training loss, whether the epoch ran to its end rather than being stopped)."""
        config, device = self.config, self.device
        accum = config.TRAIN.ACCUMULATION_STEPS
        self.train_model.train()
        self.data.sampler_train.set_epoch(epoch, start=start_step * config.DATA.BATCH_SIZE * accum)
        batches = iter(self.data.loader_train)
        loss_sum = torch.zeros((), device=device)
        pending_checks = []  # (global step, device flag: gradients non-finite), read every sync_every steps
        step_time, start, last_print = AverageMeter(), time.time(), start_step
        for step in range(start_step, self.steps_per_epoch):
            global_step = epoch * self.steps_per_epoch + step
            self.lr_scheduler.step_update(global_step)
            for micro in range(accum):
                samples, targets, bad = next(batches)  # on the device already
                self.bad_images.add(bad)
                if self.data.mixup_fn is not None:
                    samples, targets = self.data.mixup_fn(samples, targets)
                # all-reduce gradients once per optimizer step, not on every micro-batch
                sync = self.ddp is None or micro == accum - 1
                with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                    with self.autocast():
                        loss = self.criterion(self.train_model(samples), targets)
                    if global_step in config.DEBUG.NAN_LOSS_STEPS:
                        loss = loss * float('nan')
                    self.scaler.scale(loss / accum).backward()
                loss_sum += loss.detach() / accum
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.TRAIN.CLIP_GRAD or math.inf)
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf/NaN
            self.scaler.update(None if self.fp16 else 1.0)
            self.optimizer.zero_grad(set_to_none=True)
            if self.model_ema is not None:  # no step: DECAY from the first update on, as timm's ModelEma in AMixer
                self.model_ema.update(self.model)
            pending_checks.append((global_step, ~torch.isfinite(grad_norm)))

            done = step + 1
            if done % self.sync_every == 0 or done == self.steps_per_epoch:
                self.check_nonfinite(pending_checks)
                pending_checks = []
                if self.stop.agreed(device):
                    self.save(epoch, done)
                    return loss_sum.item() / (done - start_step), False
            if done % config.PRINT_FREQ == 0 or done == self.steps_per_epoch:
                step_time.update((time.time() - start) / (done - last_print), done - last_print)
                start, last_print = time.time(), done
                eta = datetime.timedelta(seconds=int(step_time.avg * (self.steps_per_epoch - done)))
                memory = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda' else 0
                self.logger.info(
                    f'train epoch {epoch} [{done}/{self.steps_per_epoch}] eta {eta} '
                    f'lr {self.optimizer.param_groups[0]["lr"]:.3e} loss {loss_sum.item() / (done - start_step):.4f} '
                    f'grad_norm {grad_norm.item():.3f} step {step_time.val:.3f}s mem {memory:.0f}MB')
            if config.TRAIN.SAVE_INTERVAL_STEPS and done % config.TRAIN.SAVE_INTERVAL_STEPS == 0 \
                    and done < self.steps_per_epoch:
                self.save(epoch, done)
        return loss_sum.item() / (self.steps_per_epoch - start_step), True

    def check_nonfinite(self, pending_checks: list[tuple[int, torch.Tensor]]) -> None:
        flags = torch.stack([flag for _, flag in pending_checks]).tolist()
        for (global_step, _), nonfinite in zip(pending_checks, flags):
            if not nonfinite:
                self.consecutive_nonfinite = 0
                continue
            self.consecutive_nonfinite += 1
            self.logger.warning(f'step {global_step}: non-finite loss or gradients, update skipped '
                                f'({self.consecutive_nonfinite} in a row)')
            if self.consecutive_nonfinite >= self.config.TRAIN.MAX_NONFINITE_STEPS:
                raise UserError(f'{self.consecutive_nonfinite} consecutive non-finite steps (last: {global_step}); '
                                'stopping. Lower the learning rate or check the data; the checkpoints on disk '
                                'hold finite weights.')

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Loss, top-1 and top-5 (percent) over every validation image exactly once, across all ranks."""
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, top-1, top-5, count
        for images, targets, bad in self.data.loader_val:  # on the device already
            self.bad_images.add(bad)
            with self.autocast():
                output = model(images).float()
            top5 = output.topk(min(5, output.shape[1]), dim=1).indices
            correct = top5 == targets[:, None]
            totals += torch.stack([F.cross_entropy(output, targets, reduction='sum').double(),
                                   correct[:, 0].sum().double(), correct.any(dim=1).sum().double(),
                                   torch.tensor(len(targets), dtype=torch.float64, device=self.device)])
        loss, top1, top5, count = all_reduce_sum(totals).tolist()
        return {'loss': loss / count, 'acc1': 100 * top1 / count, 'acc5': 100 * top5 / count, 'count': int(count)}

    def throughput(self) -> dict[str, float]:
        """Median images/s of inference and of a training step on synthetic input, after warm-up."""
        config, device = self.config, self.device
        batch, size = config.DATA.BATCH_SIZE, config.DATA.IMG_SIZE
        images = torch.randn(batch, config.MODEL.SWIN.IN_CHANS, size, size, device=device)
        targets = torch.randint(0, config.MODEL.NUM_CLASSES, (batch,), device=device)
        runner = ThroughputRunner(self.model, build_optimizer(config, self.model, device),
                                  dict.fromkeys(THROUGHPUT_MODES, (images, targets)), self.autocast,
                                  forward=torch.compile(self.model) if config.TRAIN.COMPILE else None,
                                  scaler=self.scaler)
        results = {}
        for mode in THROUGHPUT_MODES:
            for _ in range(3):  # warm-up: allocator, autotuning, compilation
                runner.images_per_second(mode)
            speeds, start = [], time.time()
            while len(speeds) < 30 and (len(speeds) < 3 or time.time() - start < 20):
                speeds.append(runner.images_per_second(mode))
            results[mode] = statistics.median(speeds)
        amp = f'AMP {config.AMP.DTYPE}' if self.autocast is not contextlib.nullcontext else 'float32'
        self.logger.info(f'throughput of {config.MODEL.NAME} at batch {batch}, {size}px, {amp}, compile '
                         f'{config.TRAIN.COMPILE}, {device}: inference {results["inference"]:.1f} images/s, '
                         f'training {results["training"]:.1f} images/s')
        if device.type == 'cuda':
            self.logger.info(f'peak memory {max(runner.peak_bytes.values()) / 2 ** 30:.2f} GiB')
        return results


def main(config: CfgNode, local_rank: int | None = None) -> None:
    dist_info = init_distributed(config.DEVICE, local_rank)
    output_dir = run_folder(config)
    logger = create_logger(output_dir, dist_info.rank, name=config.MODEL.NAME)
    logger.info(f'rank {dist_info.rank}/{dist_info.world_size} on {dist_info.device}, torch {torch.__version__}')
    if dist_info.device.type == 'cpu' and keep_freed_memory():
        logger.info('glibc malloc keeps freed memory for reuse (fewer page faults per step on CPU)')
    trainer = Trainer(config, dist_info, logger)

    if config.THROUGHPUT_MODE and not config.DATA.DATA_PATH:
        config.defrost()
        config.MODEL.NUM_CLASSES = config.MODEL.NUM_CLASSES or 1000
        config.freeze()
        set_seed(config.SEED)
        trainer.model = build_model(config).to(dist_info.device)
        trainer.throughput()
        return

    data = build_loader(config, dist_info.rank, dist_info.world_size, dist_info.device)
    if dist_info.is_main:
        with open(os.path.join(output_dir, 'config.yaml'), 'w') as f:
            f.write(config.dump())
    trainer.build(data)
    start_epoch, start_step = trainer.restore()

    if config.THROUGHPUT_MODE:
        trainer.throughput()
    elif config.EVAL_MODE:
        models = [('model', trainer.model)] + ([('model_ema', trainer.model_ema.module)] if trainer.model_ema else [])
        summary = {'weights': config.MODEL.RESUME or config.MODEL.PRETRAINED, 'parameters': trainer.num_parameters}
        for name, model in models:
            summary[name] = trainer.validate(model)
            logger.info(f'eval {name}: ' + json.dumps(summary[name]))
        if dist_info.is_main:
            path = os.path.join(output_dir, 'eval.json')
            with open(path, 'w') as f:
                json.dump(summary, f, indent=1)
            logger.info(f'wrote {path}')
    else:
        trainer.train(start_epoch, start_step)
        logger.info(f'done: max val acc@1 {trainer.max_accuracy:.2f}%')


def run(argv: list[str] | None = None) -> int:
    args = parse_option(argv)
    try:
        config = build_config(args)
        main(config, args.local_rank)
    except (UserError, DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(run())
