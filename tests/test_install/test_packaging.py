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


@pytest.fixture(scope='module')
def installed_copy(tmp_path_factory):
    """A regular (non-editable) install of this checkout: its wheel, and that wheel installed
    into a folder of its own (``--target``), which goes first on ``PYTHONPATH``."""
    import shutil
    root = tmp_path_factory.mktemp('installed')
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS='')
    # build from a copy: a wheel build writes build/ and .mim/ into the source tree
    source = root / 'src'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        '.git', '.venv*', 'work_dirs', 'data', 'build', 'dist', '*.egg-info', '.mim',
        '__pycache__'))
    def pip(*args):
        proc = subprocess.run([sys.executable, '-m', 'pip', *args, '--quiet'],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    pip('wheel', '--no-deps', '--no-build-isolation', '-w', str(root / 'dist'), str(source))
    pip('install', '--no-deps', '--no-index', '--target', str(root / 'site'), '--find-links',
        str(root / 'dist'), 'mmattn')
    wheel, = (root / 'dist').glob('mmattn-*.whl')
    return dict(source=source, wheel=wheel, site=root / 'site')


def _run_installed(installed, code, *args):
    env = dict(os.environ, PYTHONPATH=str(installed['site']))
    # the development checkout is installed editable; its import hook would win over PYTHONPATH
    hide_checkout = ('import sys; sys.meta_path[:] = [f for f in sys.meta_path if not '
                     "getattr(f, '__module__', '').startswith('__editable__')]; ")
    proc = subprocess.run([sys.executable, '-c', hide_checkout + code, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=installed['site'])  # not the checkout, which `-c` puts first
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_wheel_ships_the_configs_under_mim(installed_copy):
    """A non-editable install carries the configs as OpenMMLab packages do (``.mim/configs``)."""
    import zipfile
    names = set(zipfile.ZipFile(installed_copy['wheel']).namelist())
    source = installed_copy['source']
    shipped = {str(p.relative_to(source)) for p in (source / 'configs').rglob('*.py')}
    assert len(shipped) >= 20
    missing = [p for p in shipped if f'mmattn/.mim/{p}' not in names]
    assert not missing, missing
    assert 'mmattn/.mim/tools/train.py' in names


def test_mmattn_base_resolves_in_an_installed_package(installed_copy, tmp_path):
    """``_base_ = 'mmattn::psa/...'`` loads the shipped config of the installed package (mmattn
    imported first, as its tools and a user's script do), and the PSA converter finds its
    evaluation configs there."""
    config = tmp_path / 'mine.py'
    config.write_text("_base_ = 'mmattn::psa/ocrnet_hr18-psa-p_4xb2-160k_cityscapes-512x1024.py'\n"
                      'train_cfg = dict(max_iters=10)\n')
    out = _run_installed(
        installed_copy, 'import mmattn, sys; from mmengine.config import Config; '
        'from mmattn.convert.official_psa import default_config; '
        'cfg = Config.fromfile(sys.argv[1]); '
        'print(mmattn.__file__); print(default_config("PSA_p")); '
        'print(cfg.model.backbone.type, cfg.train_cfg.max_iters, cfg.runner_type)', config)
    package, psa_config, summary = out.strip().splitlines()[-3:]
    site = str(installed_copy['site'])
    assert package.startswith(site)  # the installed copy, not the checkout
    assert psa_config.startswith(site) and pathlib.Path(psa_config).is_file()
    assert summary.split() == ['AttentionBackbone', '10', 'ResumableRunner']


def test_converter_default_configs_exist():
    from mmattn.convert.official_psa import CONFIGS, default_config
    for variant in CONFIGS:
        assert pathlib.Path(default_config(variant)).is_file(), default_config(variant)


def test_import_stops_with_one_line_on_an_unsupported_mmcv():
    """As mmseg's ``__init__`` does: the installed and the supported versions in one line."""
    code = ('import mmcv; mmcv.__version__ = "2.2.0"\n'
            'try:\n    import mmattn\n'
            'except AssertionError as error:\n    print(error)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line, = proc.stdout.strip().splitlines()
    assert line.startswith('mmcv==2.2.0 is installed but mmattn ')
    assert line.endswith('needs mmcv>=2.0.0rc4, <2.2.0')
