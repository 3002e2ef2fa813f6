"""The config merge order, the learning-rate schedules and the optimizer's weight-decay groups."""
import math

import pytest
import torch

from config import get_default_config, merge_yaml
from lr_scheduler import LRScheduler
from main import build_config, parse_option
from models import build_model
from optimizer import build_optimizer
from tests.helpers import AMIXER
from utils import UserError


def test_config_merge_order(tmp_path):
    """defaults < BASE chain < the yaml < --opts < flags."""
    (tmp_path / 'base.yaml').write_text('TRAIN: {EPOCHS: 7, WARMUP_EPOCHS: 3}\nDATA: {BATCH_SIZE: 4}\n')
    (tmp_path / 'run.yaml').write_text("BASE: ['base.yaml']\nTRAIN: {EPOCHS: 9}\n")
    config = build_config(parse_option(['--cfg', str(tmp_path / 'run.yaml'), '--batch-size', '6',
                                        '--opts', 'DATA.BATCH_SIZE', '5', 'TRAIN.WARMUP_EPOCHS', '2']))
    assert config.TRAIN.EPOCHS == 9  # the yaml over its BASE
    assert config.TRAIN.WARMUP_EPOCHS == 2  # --opts over the yaml chain
    assert config.DATA.BATCH_SIZE == 6  # the flag over --opts
    assert config.TRAIN.WEIGHT_DECAY == get_default_config().TRAIN.WEIGHT_DECAY


@pytest.mark.parametrize('yaml_text, opts', [('TRAIN: {EPOCHZ: 1}\n', []), ('TRAIN: {EPOCHS: 1}\n', ['MODEL.NOPE', '1'])])
def test_unknown_config_key_is_named(tmp_path, yaml_text, opts):
    (tmp_path / 'bad.yaml').write_text(yaml_text)
    with pytest.raises(UserError, match='EPOCHZ' if not opts else 'MODEL.NOPE'):
        build_config(parse_option(['--cfg', str(tmp_path / 'bad.yaml')] + (['--opts', *opts] if opts else [])))


def schedule(name, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    options = dict(total_steps=100, warmup_steps=10, base_lr=1.0, warmup_lr=0.01, min_lr=0.1, decay_steps=30,
                   decay_rate=0.5)
    options.update(kwargs)
    return LRScheduler(optimizer, name, **options), optimizer


@pytest.mark.parametrize('name, step, expected', [
    ('cosine', 0, 0.01), ('cosine', 5, 0.01 + 0.99 * 0.5), ('cosine', 10, 1.0),
    ('cosine', 55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))), ('cosine', 100, 0.1),
    ('linear', 55, 1.0 - 0.9 * 0.5), ('linear', 100, 0.1),
    ('step', 39, 1.0), ('step', 40, 0.5), ('step', 70, 0.25)])
def test_lr_schedules(name, step, expected):
    scheduler, optimizer = schedule(name)
    scheduler.step_update(step)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(expected)
    restored, restored_optimizer = schedule(name)
    restored.load_state_dict(scheduler.state_dict())
    assert restored_optimizer.param_groups[0]['lr'] == pytest.approx(expected)


def test_no_weight_decay_on_norms_biases_and_position_tables():
    config = get_default_config()
    merge_yaml(config, AMIXER)
    model = build_model(config)
    optimizer = build_optimizer(config, model, torch.device('cpu'))
    decay, no_decay = ({id(p) for p in group['params']} for group in optimizer.param_groups)
    assert optimizer.defaults['fused']  # one kernel for all parameters, on the CPU too
    assert optimizer.param_groups[0]['weight_decay'] == config.TRAIN.WEIGHT_DECAY
    assert optimizer.param_groups[1]['weight_decay'] == 0.0
    names = dict(model.named_parameters())
    for name, param in names.items():
        skip = (param.ndim == 1 or name in model.no_weight_decay()
                or any(k in name for k in model.no_weight_decay_keywords()))
        assert (id(param) in no_decay) == skip, name
        assert (id(param) in decay) != skip, name
    assert any('norm' in n and id(p) in no_decay for n, p in names.items())
    assert all(id(p) in decay for n, p in names.items() if n.endswith('mlp.fc1.weight'))
