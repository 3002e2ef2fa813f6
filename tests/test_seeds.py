"""The commands of the two documents this project started from (tests/data/seeds, copied from the
project's seeds) work as written: each parses into the config it means, and one runs on the demo data."""
import importlib.util
import os
import re
import shlex
import sys

import pytest

from main import build_config, parse_option
from tests.helpers import ACMIX, launch, run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, 'tests', 'data', 'seeds')
SED = ('--local_rank', '--local-rank')  # the vendor recipe's `sed -i 's/--local_rank/--local-rank/g' main.py`


def seed_commands(name: str) -> list[list[str]]:
    """The main.py commands in a seed's code blocks, as argument lists. Continuation lines are joined the way
    a reader means them: the AMixer README has stray spaces after some line-ending backslashes."""
    text = open(os.path.join(SEEDS, name), encoding='utf-8').read()
    commands = []
    for block in re.findall(r'```[a-z]*\n(.*?)```', text, flags=re.S):
        joined = re.sub(r'\\[ \t]*\n', ' ', block)
        for line in joined.splitlines():
            if 'main.py' in line and not line.lstrip().startswith(('#', 'sed')):
                words = shlex.split(line)
                commands.append(words[words.index('main.py') + 1:])
    return commands


def sed_edited_main(tmp_path):
    """main.py after the vendor recipe's sed, importable from a temporary copy."""
    source = open(os.path.join(ROOT, 'main.py')).read().replace(*SED)
    path = tmp_path / 'main.py'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location('main_after_sed', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendor_recipe_parses_with_and_without_sed(tmp_path):
    (command,) = seed_commands('acmix_deepspark_README.md')
    assert command[:2] == ['--cfg', 'configs/acmix_swin_small_patch4_window7_224.yaml']
    edited = sed_edited_main(tmp_path)
    for module in (sys.modules['main'], edited):
        # torch.distributed.launch in torch 2.x appends --local-rank=K
        args = module.parse_option(command + ['--local-rank=3'])
        config = module.build_config(args)
        assert args.local_rank == 3
        assert config.MODEL.TYPE == 'acmix_swin'
        assert config.MODEL.NAME == 'acmix_swin_small_patch4_window7_224'
        assert config.DATA.DATA_PATH == '/path/to/imagenet'
        assert config.DATA.BATCH_SIZE == 128
    assert parse_option(command + ['--local_rank=1']).local_rank == 1  # the torch 1.x spelling


@pytest.mark.parametrize('model, batch, accumulation', [
    ('amixer_deit_s', 128, 1), ('amixer_t', 128, 1), ('amixer_s', 64, 2), ('amixer_b', 32, 4)])
def test_amixer_readme_commands(model, batch, accumulation):
    commands = {c[c.index('--model') + 1]: c for c in seed_commands('amixer_README.md')}
    assert len(commands) == 4
    config = build_config(parse_option(commands[model] + ['--local-rank=0']))
    assert config.MODEL.NAME == model
    assert config.MODEL.TYPE == ('amixer_deit' if model == 'amixer_deit_s' else 'amixer_swin')
    assert config.DATA.BATCH_SIZE == batch
    assert config.TRAIN.ACCUMULATION_STEPS == accumulation
    assert config.TRAIN.BASE_LR == 1e-3 and config.TRAIN.LR_SCALE_BATCH == 0  # absolute, not rescaled
    assert config.TRAIN.EMA.ENABLE and config.TRAIN.EMA.EVAL
    assert config.DATA.DATA_PATH == '/path/to/imagenet-1k'
    assert config.OUTPUT == f'./logs/{model}'


def test_vendor_recipe_runs_after_sed_on_demo_data(tmp_path, tiny_data):
    """The recipe's launcher and flags, on main.py edited by its sed, with the demo config and data."""
    edited = tmp_path / 'main.py'
    edited.write_text(open(os.path.join(ROOT, 'main.py')).read().replace(*SED))
    launch(['--cfg', ACMIX, '--data-path', tiny_data, '--batch-size', '16', '--output', str(tmp_path / 'out'),
            '--opts', 'TRAIN.EPOCHS', '1', 'DATA.NUM_WORKERS', '0'],
           nproc=2, launcher='launch', script=str(edited), env={'PYTHONPATH': ROOT})
    assert os.path.isfile(os.path.join(run_dir(tmp_path / 'out', ACMIX), 'ckpt_epoch_0.pth'))
    assert os.path.isfile(os.path.join(run_dir(tmp_path / 'out', ACMIX), 'log_rank1.txt'))
