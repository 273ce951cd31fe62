"""mmattn's requirements are ranges that this environment satisfies, task packages are extras,
installing the checkout into a ready environment changes nothing, and the shipped configs are
found by ``mmattn::`` bases."""
import json
import os
import pathlib
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK = ('torch', 'torchvision', 'numpy', 'mmcv', 'mmengine')
TASKS = ('mmsegmentation', 'mmpose', 'mmdet')


def _requirements():
    return [Requirement(r) for r in metadata.requires('mmattn') or []]


def _extra(req):
    match = re.search(r'extra\s*==\s*"([^"]+)"', str(req.marker or ''))
    return match.group(1) if match else None


def test_no_exact_pins_on_the_stack_and_task_packages_only_as_extras():
    reqs = _requirements()
    assert reqs, 'mmattn metadata lists no requirements at all'
    for req in reqs:
        if req.name.lower() in STACK:
            assert not any(s.operator in ('==', '===') for s in req.specifier), str(req)
        if req.name.lower() in TASKS:
            assert _extra(req) is not None, f'{req} is not under an extra'
    core = {r.name.lower() for r in reqs if _extra(r) is None}
    assert {'torch', 'mmengine', 'numpy'} <= core
    assert not core & set(TASKS)
    extras = {(_extra(r), r.name.lower()) for r in reqs if _extra(r)}
    assert {('seg', 'mmsegmentation'), ('pose', 'mmpose'), ('det', 'mmdet'),
            ('mim', 'mmcv')} <= extras


def test_this_environment_satisfies_every_declared_range():
    for req in _requirements():
        if req.name.lower() not in STACK + TASKS:
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue
        version = installed.split('+')[0]
        assert req.specifier.contains(version, prereleases=True), \
            f'{req.name} {installed} is outside the declared {req}'


@pytest.mark.parametrize('editable', [False, True], ids=['plain', 'editable'])
def test_pip_install_into_a_ready_environment_changes_nothing(tmp_path, editable):
    """``pip install [-e] <checkout>`` resolves to mmattn alone: no index is consulted
    (``--no-index``), and the report names nothing to install but mmattn."""
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS='')
    report = tmp_path / 'report.json'
    target = ['-e', str(ROOT)] if editable else [str(ROOT)]
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
         '--no-build-isolation', '--quiet', '--report', str(report), *target],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    names = [item['metadata']['name'] for item in json.loads(report.read_text())['install']]
    assert names == ['mmattn'], names


def test_mmattn_base_resolves_to_the_shipped_configs(tmp_path):
    """``_base_ = 'mmattn::psa/...'`` loads the shipped config (mmattn imported first, as its
    tools and a user's script do)."""
    config = tmp_path / 'mine.py'
    config.write_text("_base_ = 'mmattn::psa/ocrnet_hr18-psa-p_4xb2-160k_cityscapes-512x1024.py'\n"
                      'train_cfg = dict(max_iters=10)\n')
    proc = subprocess.run(
        [sys.executable, '-c', 'import mmattn, sys; from mmengine.config import Config; '
         'cfg = Config.fromfile(sys.argv[1]); '
         'print(cfg.model.backbone.type, cfg.train_cfg.max_iters, cfg.runner_type)',
         str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['AttentionBackbone', '10', 'ResumableRunner']


def test_converter_default_configs_exist():
    from mmattn.convert.official_psa import CONFIGS, default_config
    for variant in CONFIGS:
        assert pathlib.Path(default_config(variant)).is_file(), default_config(variant)


def test_wheel_ships_the_configs_under_mim(tmp_path):
    """A non-editable install carries the configs as OpenMMLab packages do (``.mim/configs``),
    which is where ``mmattn::`` bases and the PSA converter look in an installed mmattn."""
    import zipfile
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS='')
    import shutil
    # build from a copy: a wheel build writes build/ and .mim/ into the source tree
    source = tmp_path / 'src'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        '.git', '.venv*', 'work_dirs', 'data', 'build', 'dist', '*.egg-info', '.mim',
        '__pycache__'))
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--quiet',
         '-w', str(tmp_path / 'dist'), str(source)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel, = (tmp_path / 'dist').glob('mmattn-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(source)) for p in (source / 'configs').rglob('*.py')}
    assert shipped, 'no configs in the source tree'
    missing = [p for p in shipped if f'mmattn/.mim/{p}' not in names]
    assert not missing, missing
    assert 'mmattn/.mim/tools/train.py' in names
