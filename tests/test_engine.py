"""main.py end to end on CPU: launch forms, equivalence of batch splits, exact resume, eval, throughput,
clear errors. Tiny AMixer/ACmix demo models on a subset of the digits data."""
import json
import os

import pytest
import torch

from tests.helpers import ACMIX, AMIXER, ROOT, eval_result, final_checkpoint, launch, run_dir, train_args


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize('form', ['python', 'local_rank_by_hand', 'torchrun', 'distributed_launch'])
def test_launch_forms_train_one_epoch(tiny_data, tmp_path, form):
    args = train_args(AMIXER, tiny_data, tmp_path, batch=8)
    if form == 'python':
        launch(args)
    elif form == 'local_rank_by_hand':
        launch(['--local_rank', '0'] + args)
    elif form == 'torchrun':
        launch(args, nproc=2, launcher='torchrun')
    else:
        launch(args, nproc=2, launcher='launch')
    ckpt = final_checkpoint(tmp_path, 0)
    ranks = 1 if form in ('python', 'local_rank_by_hand') else 2
    assert ckpt['epoch'] == 0 and ckpt['step'] == 160 // (8 * ranks)
    assert isinstance(ckpt['config'], str) and 'amixer_swin' in ckpt['config']
    for key in ('model', 'optimizer', 'lr_scheduler', 'scaler', 'model_ema', 'max_accuracy', 'rng'):
        assert key in ckpt
    metrics = [json.loads(line) for line in open(os.path.join(run_dir(tmp_path), 'metrics.jsonl'))]
    assert [m['epoch'] for m in metrics] == [0]
    for key in ('train_loss', 'lr', 'val_loss', 'val_acc1', 'val_acc5', 'epoch_time_s', 'train_images_per_s'):
        assert isinstance(metrics[0][key], float)


@pytest.mark.parametrize('cfg, optimizer', [(AMIXER, 'adamw'), (ACMIX, 'sgd')])
def test_batch_splits_give_the_same_weights(tiny_data, tmp_path, cfg, optimizer):
    """10 optimizer steps of a global batch of 16: one process, accumulation, and two ranks agree.

    ACmix is checked with SGD: its `fc.bias` gets nearly cancelling gradients whose rounding AdamW's
    normalisation turns into whole learning-rate steps (measured here: 6e-4 apart after 10 AdamW steps at
    lr 1e-3, all of it in `fc.bias` and the `dep_conv` it feeds), which would hide a real error."""
    opts = ('TRAIN.OPTIMIZER.NAME', optimizer)
    launch(train_args(cfg, tiny_data, tmp_path / 'a', *opts, batch=16))
    launch(train_args(cfg, tiny_data, tmp_path / 'b', *opts, batch=8, flags=['--accumulation-steps', '2']))
    launch(train_args(cfg, tiny_data, tmp_path / 'c', *opts, batch=8), nproc=2, launcher='torchrun')
    a, b, c = (final_checkpoint(tmp_path / x, 0, cfg) for x in 'abc')
    assert a['step'] == b['step'] == c['step'] == 10
    assert max_diff(a['model'], b['model']) <= 1e-5
    assert max_diff(a['model'], c['model']) <= 1e-5


def test_auto_resume_is_exact(tiny_data, tmp_path):
    # A step schedule with no warm-up keeps the learning rate independent of TRAIN.EPOCHS, so that a run
    # told to stop after one epoch follows the same schedule as the two-epoch run.
    opts = ['TRAIN.EMA.ENABLE', 'True', 'TRAIN.EMA.DECAY', '0.9', 'TRAIN.LR_SCHEDULER.NAME', 'step',
            'TRAIN.LR_SCHEDULER.DECAY_EPOCHS', '100', 'MODEL.DROP_PATH_RATE', '0.1']
    launch(train_args(AMIXER, tiny_data, tmp_path / 'straight', *opts, epochs=2))
    launch(train_args(AMIXER, tiny_data, tmp_path / 'resumed', *opts, epochs=1))
    result = launch(train_args(AMIXER, tiny_data, tmp_path / 'resumed', *opts, epochs=2))
    assert 'resuming from' in result.stdout
    straight, resumed = final_checkpoint(tmp_path / 'straight', 1), final_checkpoint(tmp_path / 'resumed', 1)
    for part in ('model', 'model_ema'):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), f'{part}.{key} differs after resume'
    assert resumed['max_accuracy'] == straight['max_accuracy']


def test_eval_reproduces_logged_accuracy_on_two_ranks(tiny_data, tmp_path):
    launch(train_args(AMIXER, tiny_data, tmp_path, batch=16))
    logged = json.loads(open(os.path.join(run_dir(tmp_path), 'metrics.jsonl')).readline())
    ckpt = os.path.join(run_dir(tmp_path), 'ckpt_epoch_0.pth')
    for nproc, launcher in ((1, 'python'), (2, 'torchrun')):
        output = tmp_path / f'eval{nproc}'
        launch(['--cfg', AMIXER, '--data-path', tiny_data, '--output', str(output), '--eval', '--resume', ckpt,
                '--opts', 'DATA.NUM_WORKERS', '0'], nproc=nproc, launcher=launcher)
        summary = eval_result(output)
        assert summary['weights'] == ckpt and 'model_ema' not in summary  # no EMA in this run
        val = summary['model']
        assert val['count'] == 33
        assert val['acc1'] == pytest.approx(logged['val_acc1'], abs=1e-9)
        assert val['loss'] == pytest.approx(logged['val_loss'], rel=1e-5)


def test_throughput_without_dataset(tmp_path):
    result = launch(['--cfg', AMIXER, '--throughput', '--batch-size', '4', '--output', str(tmp_path)])
    line = next(l for l in result.stdout.splitlines() if 'throughput of' in l)
    inference = float(line.split('inference ')[1].split(' images/s')[0])
    training = float(line.split('training ')[1].split(' images/s')[0])
    assert inference > 0 and training > 0


@pytest.mark.parametrize('case', ['missing_cfg', 'unknown_key', 'missing_resume', 'mismatched_resume'])
def test_bad_input_gives_clear_error(tiny_data, tmp_path, case):
    args = train_args(AMIXER, tiny_data, tmp_path)
    if case == 'missing_cfg':
        args[1], expected = str(tmp_path / 'nope.yaml'), 'config file not found'
    elif case == 'unknown_key':
        args, expected = args + ['TRAIN.NO_SUCH_KEY', '1'], 'TRAIN.NO_SUCH_KEY'
    elif case == 'missing_resume':
        args, expected = ['--resume', str(tmp_path / 'none.pth')] + args, 'checkpoint not found'
    else:
        launch(train_args(ACMIX, tiny_data, tmp_path / 'acmix', batch=16))
        other = os.path.join(run_dir(tmp_path / 'acmix', ACMIX), 'ckpt_epoch_0.pth')
        args, expected = ['--resume', other] + args, 'does not match this model'
    result = launch(args, check=False)
    assert result.returncode != 0
    assert expected in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('golden, model_type', [('amixer_swin_small_geometry', 'amixer_swin'),
                                                ('swin_small_geometry', 'swin')])
def test_eval_of_reference_weights_with_pretrained(tiny_data, tmp_path, golden, model_type):
    """--pretrained takes a reference checkpoint as it is: Swin's released layout directly, the official
    AMixer code's layout through the key conversion (tests/test_models.py checks the logits they give)."""
    reference = torch.load(os.path.join(ROOT, 'tests', 'data', 'golden', f'{golden}.pt'), weights_only=True)
    kwargs = reference['reference_kwargs']
    windows = kwargs['window_size'] if isinstance(kwargs['window_size'], list) else []
    (tmp_path / 'model.yaml').write_text(f'''
DATA: {{IMG_SIZE: {kwargs["img_size"]}}}
MODEL:
  TYPE: {model_type}
  NAME: reference
  NUM_CLASSES: {kwargs["num_classes"]}
  SWIN: {{PATCH_SIZE: {kwargs["patch_size"]}, EMBED_DIM: {kwargs["embed_dim"]}, DEPTHS: {kwargs["depths"]},
         NUM_HEADS: {kwargs["num_heads"]}, WINDOW_SIZE: {windows[0] if windows else kwargs["window_size"]},
         STAGE_WINDOW_SIZES: {windows}, MLP_RATIO: {float(kwargs["mlp_ratio"])}}}
''')
    torch.save({'model': reference['state_dict']}, tmp_path / 'reference.pth')
    result = launch(['--cfg', str(tmp_path / 'model.yaml'), '--data-path', tiny_data, '--eval',
                     '--pretrained', str(tmp_path / 'reference.pth'), '--output', str(tmp_path),
                     '--opts', 'DATA.NUM_WORKERS', '0'])
    assert ('converted from the reference AMixer layout' in result.stdout) == (model_type == 'amixer_swin')
    val = eval_result(tmp_path, tmp_path / 'model.yaml')['model']
    assert val['count'] == 33
