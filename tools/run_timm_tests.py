"""Run timm's own model test suite for the six models this project registers with timm.

The suite is tests/test_models.py of the installed timm's source distribution, which this tool fetches
from the package registry (pip download) into a cache folder once. It runs the suite's tests for our six
model names only and prints each test's pass / fail / skip counts. The exit status is 1 if any test
failed or was skipped, the TorchScript ones aside (not supported: scripting cannot compile the models'
custom autograd Functions).

timm chooses the models for its forward_intermediates tests by the name of the module that registered
them (its FEAT_INTER_FILTERS); so the models are registered again here, from modules named after their
timm family: swin_transformer for the Swin-based ones, deit for AMixer-DeiT.

Usage: python tools/run_timm_tests.py [--cache DIR] [-- extra pytest arguments]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import types
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import timm
from timm.models import model_entrypoint, register_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.build import TIMM_MODELS, default_cfgs  # noqa: E402 (registers the models with timm)

# TorchScript is not asked of these models
NOT_SUPPORTED = {'test_model_forward_torchscript', 'test_model_forward_fx_torchscript'}


def timm_family(name: str) -> str:
    return 'deit' if name == 'amixer_deit_s' else 'swin_transformer'


def fetch_suite(cache: Path) -> Path:
    """The source distribution of the installed timm version, unpacked under `cache` (fetched if absent)."""
    version = timm.__version__
    source = cache / f'timm-{version}'
    if not (source / 'tests' / 'test_models.py').is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
                        f'timm=={version}', '--dest', str(cache)], check=True)
        with tarfile.open(cache / f'timm-{version}.tar.gz') as archive:
            archive.extractall(cache, filter='data')
    return source


def register_under_timm_families() -> None:
    """Registers each model again from a module named after its timm family (same entrypoint, same cfg)."""
    for name in TIMM_MODELS:
        module_name = f'timm_families.{timm_family(name)}'
        module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
        module.default_cfgs = {**getattr(module, 'default_cfgs', {}), name: default_cfgs[name]}
        entrypoint = model_entrypoint(name)

        def create(pretrained: bool = False, _entrypoint=entrypoint, **kwargs):
            return _entrypoint(pretrained=pretrained, **kwargs)

        create.__name__ = create.__qualname__ = name
        create.__module__ = module_name
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # timm warns that the name is registered already: it is, by us
            register_model(create)


class OurModelsOnly:
    """pytest plugin: deselects every test but those of our models, and counts outcomes per test."""

    def __init__(self):
        self.outcomes: dict[str, Counter] = defaultdict(Counter)

    def pytest_collection_modifyitems(self, config, items):
        ours = [item for item in items if getattr(item, 'callspec', None)
                and item.callspec.params.get('model_name') in TIMM_MODELS]
        config.hook.pytest_deselected(items=[item for item in items if item not in ours])
        items[:] = ours

    def pytest_runtest_logreport(self, report):
        test = report.nodeid.split('::')[-1].split('[')[0]
        if report.when == 'call' or report.outcome != 'passed':  # a setup error or skip has no call report
            self.outcomes[test][report.outcome] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cache', type=Path, default=ROOT / '.timm_sdist',
                        help='folder for the fetched source distribution (default: .timm_sdist)')
    parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments, after --')
    args = parser.parse_args(argv)
    source = fetch_suite(args.cache)
    register_under_timm_families()
    plugin = OurModelsOnly()
    pytest.main([str(source / 'tests' / 'test_models.py'), '-c', str(source / 'pyproject.toml'),
                 '--rootdir', str(source), '-q', '-p', 'no:cacheprovider', '-W', 'ignore::pytest.PytestUnknownMarkWarning',
                 *args.pytest_args], plugins=[plugin])
    print(f'\ntimm {timm.__version__} tests/test_models.py, for {", ".join(TIMM_MODELS)}:')
    print(f'{"test":45s} passed failed skipped')
    bad = False
    for test, counts in sorted(plugin.outcomes.items()):
        note = '  (TorchScript: not supported)' if test in NOT_SUPPORTED else ''
        print(f'{test:45s} {counts["passed"]:6d} {counts["failed"]:6d} {counts["skipped"]:7d}{note}')
        bad |= test not in NOT_SUPPORTED and (counts['failed'] > 0 or counts['skipped'] > 0)
    return int(bad or not plugin.outcomes)


if __name__ == '__main__':
    sys.exit(main())
