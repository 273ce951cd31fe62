"""tools/analysis/compare_attention.py and mmattn.ablation.

Fast tests: the variant configs (read back by mmengine and built), the run bookkeeping with
stand-in train/test tools (skip, resume after a kill, failures, changed definitions), the
table's statistics against numpy, the one-line errors. Slow tests (``-m slow``): real
comparisons through tools/train.py and tools/test.py on the tiny segmentation data (killed once
and resumed), on tiny COCO keypoints (mmpose) and tiny COCO detection (mmdet).
"""
import csv
import json
import math
import os
import os.path as osp
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mmattn.ablation import (BASELINE, Variant, VariantError, attention_variants,
                             load_variants_file, one_line_error, plugin_key, summarise,
                             train_seconds_per_iter, variant_config_text, write_outputs)
from mmattn.ablation.runs import Launcher, RunChangedError, RunSpec, fingerprint, run_one

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'analysis' / 'compare_attention.py'
SEG_CUE = ROOT / 'configs/demo/ocrnet_hr18s_1xb4-200iter_tinycitycue-64x128.py'
SEG_PSA = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'
POSE_PSA = ROOT / 'configs/demo/td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py'
DET = ROOT / 'configs/demo/retinanet_r18_1xb8-200iter_tinycocodet-128x96.py'


# ------------------------------------------------------------------------------ variants
def test_attention_variants_placement():
    vs = attention_variants(['psa_p', 'SE', 'GlobalContextBlock'], preset='released')
    assert [v.name for v in vs] == ['psa_p', 'se', 'GlobalContextBlock']
    assert vs[0].plugins == [dict(preset='released', cfg=dict(type='PolarizedSelfAttention',
                                                              mode='parallel'))]
    assert vs[1].plugins[0]['cfg'] == dict(type='SqueezeExcitation')
    vs = attention_variants(['gc'], position='after_conv2', stages=[3, 4],
                            block_types=['BasicBlock'])
    assert vs[0].plugins == [dict(position='after_conv2', stages=(3, 4),
                                  block_types=('BasicBlock', ),
                                  cfg=dict(type='GlobalContextBlock'))]
    # default placement: the paper's (exists in every supported backbone)
    assert attention_variants(['se'])[0].plugins[0]['preset'] == 'paper'
    import mmattn
    assert [v.name for v in attention_variants(['all'])] == mmattn.list_attention()
    with pytest.raises(VariantError, match="did you mean 'cbam'"):
        attention_variants(['cbma'])
    with pytest.raises(VariantError, match='listed twice'):
        attention_variants(['se', 'SE'])
    with pytest.raises(VariantError, match='not both'):
        attention_variants(['se'], preset='paper', position='after_conv1')
    with pytest.raises(VariantError, match='stands alone'):
        attention_variants(['all', 'se'])


def test_variants_files(tmp_path):
    py = tmp_path / 'v.py'
    py.write_text("variants = dict(\n"
                  "    psa_late=dict(position='after_conv2', stages=(4, ),\n"
                  "                  cfg=dict(type='PolarizedSelfAttention')),\n"
                  "    se_gc=[dict(cfg=dict(type='se')), dict(cfg=dict(type='gc'))])\n")
    vs = load_variants_file(str(py))
    assert [v.name for v in vs] == ['psa_late', 'se_gc']
    assert vs[0].plugins == [dict(position='after_conv2', stages=(4, ),
                                  cfg=dict(type='PolarizedSelfAttention'))]
    assert len(vs[1].plugins) == 2
    yml = tmp_path / 'v.yaml'
    yml.write_text('variants:\n  cbam_a:\n    cfg: {type: CBAM}\n    position: after_conv1\n')
    assert load_variants_file(str(yml))[0].plugins == [dict(cfg=dict(type='CBAM'),
                                                            position='after_conv1')]
    js = tmp_path / 'v.json'
    js.write_text(json.dumps({'x': {'position': 'before_add'}}))
    with pytest.raises(VariantError, match=r"needs cfg=dict\(type=...\)"):
        load_variants_file(str(js))
    js.write_text(json.dumps({'baseline': {'cfg': {'type': 'se'}}}))
    with pytest.raises(VariantError, match='is the base config itself'):
        load_variants_file(str(js))
    js.write_text(json.dumps({'a/b': {'cfg': {'type': 'se'}}}))
    with pytest.raises(VariantError, match='variant name'):
        load_variants_file(str(js))


def _read_config(text, tmp_path, name='variant.py'):
    from mmengine.config import Config
    path = tmp_path / name
    path.write_text(text)
    return Config.fromfile(str(path))


def test_variant_config_is_base_plus_plugins(tmp_path):
    """The written config inherits the base (same data, schedule, head) and only wraps the
    backbone; the model it builds has the plugin in the 38 BasicBlocks of stages 2-4."""
    from mmengine.config import Config

    from mmattn.analysis import attention_modules, build_model, disable_pretrained
    base = Config.fromfile(str(SEG_CUE))
    (variant, ) = attention_variants(['psa_p'], preset='released')
    text = variant_config_text(variant, str(SEG_CUE), base.model.backbone.to_dict(),
                               base.custom_imports['imports'])
    assert f"_base_ = '{SEG_CUE}'" in text
    cfg = _read_config(text, tmp_path)
    key = plugin_key()
    assert cfg.model.backbone.type == 'AttentionBackbone'
    assert cfg.model.backbone.backbone_type == 'HRNet'
    assert cfg.model.backbone[key] == variant.plugins
    # everything else is the base's
    assert cfg.model.backbone.extra == base.model.backbone.extra
    assert cfg.model.decode_head == base.model.decode_head
    assert cfg.train_cfg == base.train_cfg and cfg.train_dataloader == base.train_dataloader
    assert cfg.custom_imports['imports'] == ['mmattn']
    disable_pretrained(cfg._cfg_dict['model'])
    model = build_model(cfg)
    found = attention_modules(model)
    assert len(found) == 38 and all(n.endswith('.deattn') for n in found)
    # the baseline is the base config itself
    base_text = variant_config_text(Variant(BASELINE), str(SEG_CUE), {})
    assert _read_config(base_text, tmp_path, 'b.py').model == base.model


def test_variant_on_a_base_with_attention_replaces_its_plugins(tmp_path):
    """A base that already has PSA_p (plugins=...): the variant's SE replaces it, the model
    holds SE modules only."""
    from mmengine.config import Config

    from mmattn.analysis import attention_modules, build_model, disable_pretrained
    base = Config.fromfile(str(SEG_PSA))
    (variant, ) = attention_variants(['se'], position='after_conv2', stages=[4])
    cfg = _read_config(variant_config_text(variant, str(SEG_PSA), base.model.backbone.to_dict()),
                       tmp_path)
    assert cfg.model.backbone.plugins == variant.plugins  # replaced, not appended to PSA_p's
    assert cfg.model.backbone.backbone_type == 'HRNet'
    disable_pretrained(cfg._cfg_dict['model'])
    found = attention_modules(build_model(cfg))
    assert found and {type(m).__name__ for m in found.values()} == {'SqueezeExcitation'}
    assert all('.stage4.' in name for name in found)


def test_plugin_key_follows_attention_backbone_signature(monkeypatch):
    import mmattn.models.backbones.attention_backbone as ab
    assert plugin_key() in ('plugins', ) or 'attn' in plugin_key() or \
        'attention' in plugin_key()

    def renamed(backbone=None, attention_plugins=None, backbone_type=None, plugins=None,
                **kwargs):
        pass

    monkeypatch.setattr(ab, 'AttentionBackbone', renamed)
    assert plugin_key() == 'attention_plugins'
    from mmattn.ablation.variants import backbone_override
    override = backbone_override(dict(type='ResNet', depth=18, plugins=[dict(x=1)]),
                                 [dict(cfg=dict(type='se'))])
    assert override == dict(type='AttentionBackbone', backbone_type='ResNet',
                            attention_plugins=[dict(cfg=dict(type='se'))])

    def old(backbone=None, plugins=None, backbone_type=None, **kwargs):
        pass

    monkeypatch.setattr(ab, 'AttentionBackbone', old)
    with pytest.raises(VariantError, match="sets its own 'plugins'"):
        backbone_override(dict(type='ResNet', plugins=[]), [dict(cfg=dict(type='se'))])
    with pytest.raises(VariantError, match='no model.backbone'):
        backbone_override(None, [dict(cfg=dict(type='se'))])


# ------------------------------------------------------------------------------ errors, logs
def test_one_line_error():
    out = ('Traceback (most recent call last):\n  File "x.py", line 3\n'
           "ValueError: plugin stages {5} do not exist in HRNet; its residual stages are (1, 2)\n")
    assert one_line_error(out, 1) == ('ValueError: plugin stages {5} do not exist in HRNet; its '
                                      'residual stages are (1, 2)')
    assert one_line_error('loading\nCheckpointError: a.pth is not a readable checkpoint\n', 1) \
        == 'CheckpointError: a.pth is not a readable checkpoint'
    assert one_line_error('torch.OutOfMemoryError: CUDA out of memory\n', 1).startswith(
        'torch.OutOfMemoryError')
    assert one_line_error('iter 3\n', -9) == 'killed by signal 9 (SIGKILL)'
    assert one_line_error('iter 3\nsomething odd\n', 2) == 'exit status 2: something odd'
    assert one_line_error('', 3) == 'exit status 3'


def test_train_seconds_per_iter(tmp_path):
    for stamp, times in (('20240101_000000', [9.0, 0.5, 0.7]), ('20240101_010000', [4.0, 0.6])):
        d = tmp_path / stamp / 'vis_data'
        d.mkdir(parents=True)
        lines = [json.dumps(dict(loss=1.0, time=t, step=i)) for i, t in enumerate(times)]
        lines.append(json.dumps({'mIoU': 3.0, 'step': 9}))  # validation line, no time
        (d / 'scalars.json').write_text('\n'.join(lines) + '\n{"loss": 1, "ti')  # cut by a kill
    got = train_seconds_per_iter(str(tmp_path))
    assert got == dict(train_s_per_iter=np.median([0.5, 0.7, 0.6]), train_log_intervals=3)
    assert train_seconds_per_iter(str(tmp_path / 'none')) == {}


# ------------------------------------------------------------------------------ the table
def test_summary_statistics_and_outputs(tmp_path):
    variants = [Variant(BASELINE), Variant('se', [dict(cfg=dict(type='se'))]),
                Variant('gc', [dict(cfg=dict(type='gc'))]), Variant('spd', [dict(cfg={})])]
    values = {BASELINE: [50.0, 52.0, 51.0], 'se': [53.5, 55.0, 54.0], 'gc': [49.0]}
    records = {n: [dict(seed=s, status='ok', value=v) for s, v in enumerate(vals)]
               for n, vals in values.items()}
    records['gc'].append(dict(seed=1, status='failed', error='train: RuntimeError: NaN loss'))
    complexity = {BASELINE: dict(params_m=1.5, gflops=0.2, gflops_released=0.2),
                  'se': dict(params_m=1.52, gflops=0.201, gflops_released=0.201),
                  'gc': dict(params_m=1.53, gflops=0.202, gflops_released=0.202),
                  'spd': dict(error='build: ValueError: SPDConv changes the shape')}
    bench = dict(settings={}, variants={BASELINE: dict(train_ms_per_iter=100.0,
                                                       infer_ms_per_img=5.0,
                                                       peak_train_mib=64.0)})
    rows = summarise(variants, records, complexity, bench, [0, 1, 2], 'mIoU')
    by = {r['variant']: r for r in rows}
    for name, vals in values.items():
        assert by[name]['metric_mean'] == pytest.approx(np.mean(vals))
        if len(vals) > 1:
            assert by[name]['metric_std'] == pytest.approx(np.std(vals, ddof=1))
        else:
            assert math.isnan(by[name]['metric_std'])
    assert by['se']['delta'] == pytest.approx(np.mean(values['se']) - np.mean(values[BASELINE]))
    assert by['gc']['status'] == 'partly failed: train: RuntimeError: NaN loss'
    assert by['gc']['n_pending'] == 1 and by['gc']['n_failed'] == 1
    assert by['spd']['status'].startswith('failed: build: ValueError')
    assert math.isnan(by['spd']['delta']) and by['spd']['n_ok'] == 0
    assert by[BASELINE]['train_ms_per_iter'] == 100.0 and math.isnan(by['se']['infer_ms_per_img'])

    paths = write_outputs(str(tmp_path), rows, 'mIoU', dict(base_config='b.py', seeds=[0, 1, 2]))
    md = pathlib.Path(paths['md']).read_text()
    assert '| **baseline** | 51.00 | 1.00 | 3/3 | +0.00 | 1.500 | +0.00% | 0.200 | +0.00% |' in md
    assert f"| se | {np.mean(values['se']):.2f} | {np.std(values['se'], ddof=1):.2f} | 3/3 | " \
        f"{np.mean(values['se']) - 51:+.2f} | 1.520 | +1.33% | 0.201 | +0.50% |" in md
    assert 'spd: build: ValueError: SPDConv changes the shape' in md
    with open(paths['csv']) as f:
        table = list(csv.DictReader(f))
    assert [r['variant'] for r in table] == [BASELINE, 'se', 'gc', 'spd']
    assert float(table[1]['mIoU mean']) == pytest.approx(np.mean(values['se']))
    assert float(table[1]['mIoU seed 2']) == 54.0 and table[3]['mIoU mean'] == ''
    data = json.loads(pathlib.Path(paths['json']).read_text())
    assert data['variants'][1]['values'] == {'0': 53.5, '1': 55.0, '2': 54.0}
    assert data['variants'][3]['metric_mean'] is None  # NaN is written as null
    png = pathlib.Path(paths['png'])
    assert png.stat().st_size > 10000 and png.read_bytes()[:4] == b'\x89PNG'


# ------------------------------------------------------------------------------ runs
FAKE_TRAIN = '''
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument('config'); p.add_argument('--work-dir'); p.add_argument('--resume', nargs='?', const='auto')
p.add_argument('--cfg-options', nargs='+', default=[]); p.add_argument('--no-validate',
    action='store_true'); p.add_argument('--launcher', default='none')
a = p.parse_args()
opts = dict(o.split('=', 1) for o in a.cfg_options)
iters, delay = int(opts.get('iters', 6)), float(opts.get('delay', 0.0))
if 'bad' in os.path.basename(a.config):
    sys.exit('Traceback (most recent call last):\\nValueError: bad does not fit the backbone')
start = 0
if a.resume:
    start = json.load(open(open(os.path.join(a.work_dir, 'last_checkpoint')).read()))['iter']
    print('resumed from iter', start)
for it in range(start + 1, iters + 1):
    time.sleep(delay)
    with open(os.path.join(a.work_dir, 'iters.log'), 'a') as f:
        f.write(f'{it}\\n')
    if it % 2 == 0:
        ckpt = os.path.join(a.work_dir, f'iter_{it}.pth')
        json.dump(dict(iter=it, seed=int(opts['randomness.seed'])), open(ckpt, 'w'))
        open(os.path.join(a.work_dir, 'last_checkpoint'), 'w').write(ckpt)
'''
FAKE_TEST = '''
import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument('config'); p.add_argument('checkpoint'); p.add_argument('--work-dir')
p.add_argument('--cfg-options', nargs='+', default=[]); p.add_argument('--launcher')
a = p.parse_args()
state = json.load(open(a.checkpoint))
os.makedirs(a.work_dir, exist_ok=True)
json.dump({'mIoU': 10.0 * state['seed'] + state['iter'], 'aAcc': 1.0},
          open(os.path.join(a.work_dir, 'metrics.json'), 'w'))
'''
DRIVER = '''
import sys
from mmattn.ablation.runs import Launcher, RunSpec, run_one
tools, work, opts = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, seed in (('a', 0), ('bad', 0), ('a', 1)):
    spec = RunSpec(name, seed, f'{work}/{name}.py', f'{work}/runs/{name}/seed_{seed}',
                   train_options=opts, fingerprint='f0')
    run_one(spec, Launcher(tools), work, 'mIoU')
'''


@pytest.fixture
def fake_tools(tmp_path):
    tools = tmp_path / 'tools'
    tools.mkdir()
    (tools / 'train.py').write_text(FAKE_TRAIN)
    (tools / 'test.py').write_text(FAKE_TEST)
    (tmp_path / 'driver.py').write_text(DRIVER)
    return tools


def _ends(pid, timeout=20.0):
    """Whether process ``pid`` ends (is gone or a zombie waiting to be reaped) in time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f'/proc/{pid}/status') as f:
                if any(line.startswith('State:') and 'Z' in line.split()[1] for line in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _events(work):
    path = pathlib.Path(work) / 'events.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _driver(tmp_path, tools, work, *opts):
    return subprocess.Popen([sys.executable, str(tmp_path / 'driver.py'), str(tools), str(work),
                             *opts], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_runs_skip_resume_after_kill_and_failures(tmp_path, fake_tools):
    """Killed (SIGKILL) mid-training and started again: the finished run is skipped, the
    interrupted one resumes from its last checkpoint (its child died with the driver), the
    failing one is recorded with its one-line error and the others go on."""
    work = tmp_path / 'work'
    work.mkdir()
    proc = _driver(tmp_path, fake_tools, work, 'iters=40', 'delay=0.1')
    run_a1 = work / 'runs/a/seed_1'
    deadline = time.time() + 120
    while not (run_a1 / 'last_checkpoint').exists():  # a/0 and bad/0 done, a/1 training
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    child_pid = int((run_a1 / 'child.pid').read_text().split()[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _ends(child_pid), 'the training child survived its killed parent'
    done_before = (run_a1 / 'iters.log').read_text().split()
    assert not (run_a1 / 'result.json').exists()

    proc = _driver(tmp_path, fake_tools, work, 'iters=40', 'delay=0.0')
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    events = _events(work)
    starts = [(e['variant'], e['seed'], e['event']) for e in events if e['event'].startswith(
        'train-') or e['event'] == 'skip']
    assert starts.count(('a', 0, 'train-start')) == 1 and ('a', 0, 'skip') in starts
    assert ('bad', 0, 'skip') in starts and starts.count(('bad', 0, 'train-start')) == 1
    assert starts.count(('a', 1, 'train-start')) == 1
    assert starts.count(('a', 1, 'train-resume')) == 1
    # resumed after its last checkpoint: iterations up to it were not run again
    last = max(int(i) for i in done_before if int(i) % 2 == 0)
    its = [int(i) for i in (run_a1 / 'iters.log').read_text().split()]
    assert its[:len(done_before)] == [int(i) for i in done_before]
    assert its[len(done_before):] == list(range(last + 1, 41))
    assert 'resumed from iter' in (run_a1 / 'train.log').read_text()
    a0 = json.loads((work / 'runs/a/seed_0/result.json').read_text())
    a1 = json.loads((run_a1 / 'result.json').read_text())
    assert a0['status'] == 'ok' and a0['value'] == 40.0 and a1['value'] == 50.0
    bad = json.loads((work / 'runs/bad/seed_0/result.json').read_text())
    assert bad['status'] == 'failed'
    assert bad['error'] == 'train: ValueError: bad does not fit the backbone'


def test_changed_run_definition_is_refused(tmp_path, fake_tools):
    work = tmp_path / 'work'
    spec = RunSpec('a', 0, str(work / 'a.py'), str(work / 'runs/a/seed_0'),
                   train_options=['iters=2'], fingerprint=fingerprint('x', ['iters=2']))
    work.mkdir()
    assert run_one(spec, Launcher(str(fake_tools)), str(work), 'mIoU', log=lambda s: None)[
        'value'] == 2.0
    spec.fingerprint = fingerprint('x', ['iters=4'])
    with pytest.raises(RunChangedError, match='different definition'):
        run_one(spec, Launcher(str(fake_tools)), str(work), 'mIoU', log=lambda s: None)
    bad_metric = RunSpec('b', 0, str(work / 'b.py'), str(work / 'runs/b/seed_0'),
                         train_options=['iters=2'], fingerprint='f')
    record = run_one(bad_metric, Launcher(str(fake_tools)), str(work), 'coco/AP',
                     log=lambda s: None)
    assert record['status'] == 'failed' and "metric 'coco/AP' is not among" in record['error']


def test_retry_failed_and_busy_work_dir(tmp_path, fake_tools):
    from mmattn.ablation.compare import WorkDirBusy, _forget_failure, _WorkDirLock
    work = tmp_path / 'work'
    work.mkdir()
    specs = [RunSpec(n, 0, str(work / f'{n}.py'), str(work / f'runs/{n}/seed_0'),
                     train_options=['iters=2'], fingerprint='f') for n in ('bad', 'ok')]
    for spec in specs:
        run_one(spec, Launcher(str(fake_tools)), str(work), 'mIoU', log=lambda s: None)
    for spec in specs:  # a failed run is forgotten (run again), a finished one is kept
        _forget_failure(spec)
    assert not (work / 'runs/bad/seed_0/result.json').exists()
    assert (work / 'runs/ok/seed_0/result.json').exists()
    with _WorkDirLock(str(work), 0):
        with pytest.raises(WorkDirBusy, match='another compare_attention.py'):
            with _WorkDirLock(str(work), 0):
                pass
        with _WorkDirLock(str(work), 1):  # another node of the same comparison
            pass


def test_torchrun_command():
    launcher = Launcher('/t', python='py', launcher='pytorch', nproc_per_node=2, nnodes=2,
                        node_rank=1, master_addr='10.0.0.1', master_port=29600)
    assert launcher.command('train.py', ['c.py', '--work-dir', 'w']) == [
        'py', '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
        '--master_addr=10.0.0.1', '--nproc_per_node=2', '--master_port=29600', '/t/train.py',
        'c.py', '--work-dir', 'w', '--launcher', 'pytorch']
    assert not launcher.writes_results
    assert Launcher('/t', python='py').command('test.py', ['c']) == ['py', '/t/test.py', 'c']


def test_cli_torchrun_flags_become_the_launcher(monkeypatch):
    import importlib.util

    import mmattn.ablation
    spec = importlib.util.spec_from_file_location('compare_attention_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    seen = {}
    monkeypatch.setattr(mmattn.ablation, 'run_comparison',
                        lambda opts: seen.setdefault('opts', opts) and {})
    tool.main(['c.py', '--attention', 'se', '--launcher', 'pytorch', '--nproc-per-node', '2',
               '--nnodes', '2', '--node-rank', '1', '--master-addr', '10.0.0.1',
               '--master-port', '29600'])
    launch = seen['opts'].launch
    assert (launch.launcher, launch.nproc_per_node, launch.nnodes, launch.node_rank,
            launch.master_addr, launch.master_port) == ('pytorch', 2, 2, 1, '10.0.0.1', 29600)
    assert osp.isfile(osp.join(launch.tools_dir, 'train.py'))
    assert not launch.writes_results


def test_cli_help_and_dry_run(tmp_path):
    helped = subprocess.run([sys.executable, str(TOOL), '--help'], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and '--attention' in helped.stdout and '--seeds' in helped.stdout
    work = tmp_path / 'w'
    dry = subprocess.run(
        [sys.executable, str(TOOL), str(SEG_CUE), '--attention', 'se', 'gc', '--seeds', '0', '1',
         '--work-dir', str(work), '--dry-run'], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert sorted(os.listdir(work / 'configs')) == ['baseline.py', 'gc.py', 'se.py']
    assert dry.stdout.count(' -> ') == 6
    assert "runner_type" not in (work / 'configs/se.py').read_text()  # the base names one
    # a base without runner_type: every run (baseline included) gets the resumable runner
    plain = tmp_path / 'plain_base.py'
    plain.write_text("_base_ = 'mmseg::ocrnet/ocrnet_hr18s_4xb2-160k_cityscapes-512x1024.py'\n")
    from mmattn.ablation import CompareOptions, run_comparison
    out = run_comparison(CompareOptions(str(plain), str(tmp_path / 'w2'), attention=['se'],
                                        dry_run=True), log=lambda s: None)
    for name in (BASELINE, 'se'):
        text = pathlib.Path(out['configs'][name]).read_text()
        assert "runner_type = 'ResumableRunner'" in text
    assert _read_config(pathlib.Path(out['configs'][BASELINE]).read_text(), tmp_path,
                        'b.py').runner_type == 'ResumableRunner'
    bad = subprocess.run([sys.executable, str(TOOL), str(SEG_CUE), '--attention', 'sqe',
                          '--work-dir', str(work), '--dry-run'], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "VariantError: unknown attention 'sqe'" in bad.stderr


# ------------------------------------------------------------------------------ cost
@pytest.mark.parametrize('base', [SEG_CUE, POSE_PSA, DET], ids=['mmseg', 'mmpose', 'mmdet'])
def test_variant_cost_adds_exactly_the_attention(base, tmp_path):
    """params(variant) - params(baseline) = the difference of the attention modules' params,
    for a base of each task; on a base without attention the executed FLOPs grow too."""
    from mmengine.config import Config

    from mmattn.ablation.measure import count_variant
    cfg = Config.fromfile(str(base))
    (se, ) = attention_variants(['se'])
    paths = {}
    for variant in (Variant(BASELINE), se):
        paths[variant.name] = tmp_path / f'{variant.name}.py'
        paths[variant.name].write_text(variant_config_text(
            variant, str(base), cfg.model.backbone.to_dict()))
    base_cost = count_variant(str(paths[BASELINE]))
    se_cost = count_variant(str(paths['se']))
    assert se_cost['attn_params'] > 0 and se_cost['attn_modules'] > 0
    assert se_cost['attn_classes'] == {'SqueezeExcitation': se_cost['attn_modules']}
    assert se_cost['params'] - base_cost['params'] == se_cost['attn_params'] - \
        base_cost['attn_params']
    if base_cost['attn_modules'] == 0:  # the pose base has PSA_p, which SE replaces
        assert se_cost['gflops'] > base_cost['gflops']
    else:
        # released placement: 2 BasicBlocks per branch, 2 + 3 + 4 branches in stages 2-4
        assert base_cost['attn_classes'] == {'PolarizedSelfAttention': 2 * (2 + 3 + 4)}
    assert se_cost['input_hw'] == base_cost['input_hw']


# ------------------------------------------------------------------------------ end to end
def _tool(args, **kwargs):
    return subprocess.Popen([sys.executable, str(TOOL), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def _check_table(work, variants, seeds, metric, failing=()):
    """Every run of the variants not in ``failing`` succeeded, and comparison.json agrees with
    the per-run metrics.json files: values, mean, sample std, delta; comparison.md/csv/png
    written."""
    data = json.loads((work / 'comparison.json').read_text())
    assert data['metric'] == metric and data['finished']
    rows = {r['variant']: r for r in data['variants']}
    assert list(rows) == [BASELINE] + variants
    for name in [BASELINE] + variants:
        row = rows[name]
        if name in failing:
            assert row['n_ok'] == 0 and row['status'].startswith('failed: ')
            continue
        assert row['n_ok'] == len(seeds), row['status']
        values = [json.loads((work / f'runs/{name}/seed_{s}/test/metrics.json').read_text())[
            metric] for s in seeds]
        assert row['values'] == {str(s): pytest.approx(v) for s, v in zip(seeds, values)}
        assert row['metric_mean'] == pytest.approx(np.mean(values))
        if len(values) > 1:
            assert row['metric_std'] == pytest.approx(np.std(values, ddof=1))
        assert row['delta'] == pytest.approx(np.mean(values) - rows[BASELINE]['metric_mean'])
        assert row['params_m'] > 0 and row['gflops'] > 0
        assert row['train_ms_per_iter'] > 0 and row['infer_ms_per_img'] > 0
        assert row['peak_train_mib'] > 0 and row['train_s_per_iter'] > 0
        assert row['status'] == 'ok'
    md = (work / 'comparison.md').read_text()
    assert all(f'| {n} |' in md for n in variants) and '| **baseline** |' in md
    assert (work / 'comparison.csv').is_file() and (work / 'comparison.png').stat().st_size > 0
    return rows


@pytest.mark.slow
def test_seg_comparison_killed_once_and_resumed(tmp_path):
    """baseline + se + gc (+ spd, which cannot sit inside a residual block) at 2 seeds on the
    context flavour: killed with SIGKILL while a run trains, run again with the same arguments;
    finished runs are not repeated, the interrupted one resumes from its checkpoint, the table
    matches the per-run metric files."""
    from mmattn.datasets import make_tiny_cityscapes
    data = make_tiny_cityscapes(str(tmp_path / 'cs'), num_train=4, num_val=2,
                                flavour='context')
    root = data['root'] + '/'
    work = tmp_path / 'work'
    args = [SEG_CUE, '--attention', 'se', 'gc', 'spd', '--preset', 'released', '--seeds', 0, 1,
            '--work-dir', work, '--bench-reps', 3, '--bench-budget', 5, '--cfg-options',
            f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', 'train_dataloader.batch_size=2',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'test_dataloader.num_workers=0', 'train_cfg.max_iters=12',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=2']
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = _tool(args, env=env)
    deadline = time.time() + 1200
    killed_run = None
    while killed_run is None:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-5000:]
        finished = list(work.glob('runs/*/seed_*/result.json'))
        for run in work.glob('runs/*/seed_*'):
            if finished and (run / 'last_checkpoint').exists() and not (
                    run / 'train.done').exists() and not (run / 'result.json').exists():
                killed_run = run
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in work.glob('runs/*/seed_*/result.json')}
    assert before
    child = int((killed_run / 'child.pid').read_text().split()[0])
    assert _ends(child), 'the training child survived the killed tool'

    proc = _tool(args, env=env)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-5000:]
    for path, mtime in before.items():  # finished runs untouched
        assert path.stat().st_mtime_ns == mtime
    events = _events(work)
    for name in (BASELINE, 'se', 'gc'):
        for seed in (0, 1):
            ev = [e['event'] for e in events if e['variant'] == name and e['seed'] == seed]
            assert ev.count('train-start') == 1, (name, seed, ev)
            assert ev.count('test-end') == 1, (name, seed, ev)
            resumed = (work / f'runs/{name}/seed_{seed}') == killed_run
            assert ev.count('train-resume') == int(resumed), (name, seed, ev)
    assert 'resumed' in (killed_run / 'train.log').read_text().split('=====')[-1]
    rows = _check_table(work, ['se', 'gc', 'spd'], [0, 1], 'mIoU', failing=['spd'])
    assert rows['spd']['status'].startswith('failed: build: ValueError: plugin SPDConv')
    assert not (work / 'runs/spd').exists()  # not trained
    assert rows['se']['params_m'] > rows[BASELINE]['params_m']
    # the written variant config trains alone with tools/train.py (same file the tool used)
    cfg_text = (work / 'configs/se.py').read_text()
    assert f"_base_ = '{SEG_CUE}'" in cfg_text and 'SqueezeExcitation' in cfg_text


@pytest.mark.slow
@pytest.mark.parametrize('task', ['mmpose', 'mmdet'])
def test_pose_and_det_comparisons(task, tmp_path):
    from mmattn.datasets import make_tiny_coco
    data = make_tiny_coco(str(tmp_path / 'coco'), num_train=8, num_val=4)
    root = data['root'] + '/'
    opts = [f'{k}_dataloader.dataset.data_root={root}' for k in ('train', 'val', 'test')]
    opts += [f'{k}_dataloader.num_workers=0' for k in ('train', 'val', 'test')]
    opts += ['train_dataloader.batch_size=4']
    for k in ('val', 'test'):
        opts.append(f'{k}_evaluator.ann_file={data["val"]["ann_file"]}')
    if task == 'mmpose':
        base, metric = POSE_PSA, 'coco/AP'
        opts += [f'{k}_dataloader.dataset.bbox_file={data["bbox_file"]}' for k in ('val', 'test')]
        opts += ['train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
                 'default_hooks.logger.interval=1']
    else:
        base, metric = DET, 'coco/bbox_mAP'
        # a detector after 4 iterations scores below the default threshold everywhere, and
        # CocoMetric reports no metric at all without a detection
        opts += ['train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=2',
                 'default_hooks.logger.interval=1', 'model.test_cfg.score_thr=0.0']
    work = tmp_path / 'work'
    proc = _tool([base, '--attention', 'se', '--seeds', 0, '--work-dir', work, '--bench-reps', 3,
                  '--bench-budget', 5, '--cfg-options', *opts])
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-5000:]
    _check_table(work, ['se'], [0], metric)
