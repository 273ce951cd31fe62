"""tools/analysis/benchmark.py and mmattn.benchmark: the memory meters on known allocations,
the plain formulations of mmattn.testing.plain against the modules (float64), the timing loop,
a --quick CLI run (markdown, PNG, JSON) and a whole-model run on a tiny config pair."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch

import mmattn
from mmattn.benchmark import (Case, FeatureShape, LiveStorageMeter, cpu_peak_bytes,
                              parse_shapes, predict_peak_bytes, run_case, time_interleaved)
from mmattn.benchmark.cli import main, write_readme_section
from mmattn.benchmark.memory import MiB
from mmattn.testing import has_plain, plain_description, plain_forward, randomise

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_POSE = ROOT / 'configs' / 'demo' / 'td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py'


# ----------------------------------------------------------------------------- memory meters
def _known_allocations():
    a = torch.empty(MiB, dtype=torch.uint8)  # 1 MiB
    b = torch.empty(2 * MiB, dtype=torch.uint8)  # 3 MiB live
    del a  # 2 MiB live
    c = torch.empty(3 * MiB, dtype=torch.uint8)  # 5 MiB live: the peak
    del b, c
    d = torch.empty(4 * MiB, dtype=torch.uint8)  # 4 MiB live
    return d


def test_cpu_peak_of_known_allocations():
    before = torch.empty(8 * MiB, dtype=torch.uint8)  # live before the call: not counted
    peak = cpu_peak_bytes(_known_allocations)
    assert peak == 5 * MiB
    del before


def test_cpu_peak_counts_kernel_results_and_frees():
    x = torch.randn(256, 256)
    # x @ x (256 KiB) then its exp (256 KiB): both live at once, then the product is freed
    peak = cpu_peak_bytes(lambda: (x @ x).exp())
    assert 2 * 256 * 256 * 4 <= peak <= 2 * 256 * 256 * 4 + 64 * 1024


def test_live_storage_meter_and_prediction():
    meter = LiveStorageMeter()
    with meter:
        meter.reset()
        _known_allocations()
    assert meter.peak == 5 * MiB

    big = torch.randn(512, 64)

    def make_call(fake):
        x = fake(big)
        return lambda: torch.softmax(x @ x.t(), dim=-1)  # two 512 x 512 float32 matrices

    predicted = predict_peak_bytes(make_call)
    assert predicted == 2 * 512 * 512 * 4


def test_prediction_of_fwd_bwd_matches_profiler():
    m = mmattn.build_attention('nonlocal', 16)
    x = torch.randn(2, 16, 12, 10, requires_grad=True)

    def run(mod, inp):
        y = mod(inp)
        y.backward(torch.ones_like(y))
        for p in mod.parameters():
            p.grad = None

    def make_call(fake):
        xf = fake(x)
        return lambda: run(fake.module, xf)

    for p in m.parameters():  # sentinels: a prediction that ran on m itself would reset them
        p.grad = torch.zeros_like(p)
    predicted = predict_peak_bytes(make_call, m)
    # the module was not touched: its real (not fake) zero gradients are still there
    assert all(type(p.grad) is torch.Tensor and not p.grad.any() for p in m.parameters())
    m.zero_grad(set_to_none=True)
    measured = cpu_peak_bytes(lambda: run(m, x))
    assert predicted is not None and abs(predicted - measured) <= 0.25 * measured


# ----------------------------------------------------------------------------- plain forms
PLAIN_CASES = [
    ('psa_p', 16, {}), ('psa_s', 16, {}),
    ('psa_p', 16, dict(formulation='paper')), ('psa_s', 16, dict(formulation='paper')),
    ('nonlocal', 16, {}), ('nonlocal', 16, dict(sub_sample=True, use_scale=True)),
    ('nonlocal', 16, dict(mode='gaussian', sub_sample=True)),
    ('nonlocal', 16, dict(mode='dot_product')),
    ('danet_pam', 16, {}), ('danet_pam', 16, dict(rd_ratio=1 / 2)), ('danet', 16, {}),
    ('acmix', 16, {}), ('acmix', 8, dict(kernel_att=3, head=2, stride=2)),
    ('acmix', 8, dict(kernel_att=5, head=4, dilation=2, out_channels=12)),
]


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name,c,kwargs', PLAIN_CASES,
                         ids=[f'{n}-{i}' for i, (n, _, _) in enumerate(PLAIN_CASES)])
def test_plain_formulation_equals_module_float64(name, c, kwargs, train):
    module = randomise(mmattn.build_attention(name, c, **kwargs).double(), scale=0.4).train(train)
    assert has_plain(module)
    x = torch.randn(2, c, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(plain_forward(module, x), module(x), rtol=1e-9, atol=1e-9)


def test_plain_gradients_reach_the_module_parameters():
    module = randomise(mmattn.build_attention('psa_s', 16).double(), scale=0.4)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    module(x).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    plain_forward(module, x).square().sum().backward()
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-9, atol=1e-9)


def test_modules_without_plain_formulation():
    se = mmattn.build_attention('se', 16)
    assert not has_plain(se)
    assert 'itself' in plain_description(se) or 'none' in plain_description(se)
    with pytest.raises(TypeError, match='SqueezeExcitation'):
        plain_forward(se, torch.randn(1, 16, 4, 4))


# ----------------------------------------------------------------------------- timing, cases
def test_time_interleaved_alternates_and_counts():
    order = []
    fns = {'a': lambda: order.append('a'), 'b': lambda: order.append('b')}
    times = time_interleaved(fns, reps=4, warmup=1)
    assert [len(t) for t in times.values()] == [4, 4]
    assert order == ['a', 'b'] + ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']


def test_parse_shapes():
    pose = parse_shapes(['pose256'])
    assert [s.label for s in pose] == ['48x64x48', '96x32x24', '192x16x12', '384x8x6']
    assert [s.label for s in parse_shapes(['city:s4', 'pose384:s32', '512x128x256'])] == \
        ['48x128x256', '384x12x9', '512x128x256']
    with pytest.raises(ValueError):
        parse_shapes(['nope'])


def test_run_case_skips_what_exceeds_the_memory_budget():
    # explicit non-local at 48x40: the (HW x HW) matrices need ~30 MiB, the module ~1 MiB
    case = Case('nonlocal', FeatureShape(16, 48, 40), 1)
    result = run_case(case, reps=1, budget_s=0.1, max_mem_bytes=8 * MiB, log=lambda s: None)
    assert result.skipped['fwdbwd']['plain'].startswith('skipped: needs')
    assert 'plain' not in result.times['fwdbwd'] and 'module' in result.times['fwdbwd']
    assert result.peak['fwdbwd']['module'] < 8 * MiB


# ----------------------------------------------------------------------------- the CLI
def test_quick_cli_writes_markdown_png_json(tmp_path):
    out = tmp_path / 'bench'
    readme = tmp_path / 'README.md'
    readme.write_text('head\n<!-- benchmark-results:start -->\nPLACEHOLDER\n'
                      '<!-- benchmark-results:end -->\ntail\n')
    assert main(['--quick', '--modules', 'psa_p', 'acmix', 'se', '--out', str(out),
                 '--readme', str(readme)]) == 0
    md = (out / 'benchmark.md').read_text()
    assert '| psa_p | released PSA code' in md and '| se | itself |' in md
    assert '| acmix | released k_att^2-fold unfold | 384x8x6 | 2 | float32 |' in md
    assert 'Hardware: CPU:' in md and 'Command: `python tools/analysis/benchmark.py' in md
    png = (out / 'benchmark.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10000
    data = json.loads((out / 'results.json').read_text())
    assert {r['name'] for r in data['modules']} == {'psa_p', 'acmix', 'se'}
    acmix = next(r for r in data['modules'] if r['name'] == 'acmix')
    assert acmix['max_rel_err']['plain'] < 1e-4  # same weights, same input
    text = readme.read_text()
    assert text.startswith('head\n') and text.endswith('tail\n') and 'PLACEHOLDER' not in text
    assert '| psa_p |' in text


def test_write_readme_section_needs_markers(tmp_path):
    path = tmp_path / 'R.md'
    path.write_text('no markers')
    with pytest.raises(ValueError, match='markers'):
        write_readme_section(str(path), 'x')


def test_whole_model_against_baseline(tmp_path):
    """A tiny config pair (demo HRNet-W16 + PSA_p and the same without plugins): inference and
    training iteration timed, FLOPs overhead counted."""
    from mmattn.benchmark.models import config_baseline, run_models
    from mmattn.benchmark.report import model_table
    psa = tmp_path / 'tiny-psa-p_pose.py'
    base = tmp_path / 'tiny_pose.py'
    psa.write_text(f"_base_ = '{DEMO_POSE}'\n")
    base.write_text(f"_base_ = '{DEMO_POSE}'\nmodel = dict(backbone=dict(plugins=[]))\n")
    assert config_baseline(str(psa)) == str(base)
    [result] = run_models([str(psa)], batch=1, reps=1, budget_s=0.1, log=lambda s: None)
    assert result.error == ''
    assert set(result.times) == {'infer', 'train'}
    assert set(result.times['train']) == {'model', 'baseline'}
    assert result.input_hw == (128, 96)
    assert 0 < result.flops_overhead('executed') < result.flops_overhead('released')
    assert result.attn_modules > 0
    # peak memory of both phases: training keeps every activation for the backward, so the
    # attention modules' own add to the baseline's (inference frees them as it goes: its peak
    # is the largest few maps of the network, which PSA does not grow)
    assert 0 < result.peak['infer']['baseline'] <= result.peak['infer']['model']
    assert result.peak['infer']['model'] < result.peak['train']['baseline']
    assert result.peak['train']['baseline'] < result.peak['train']['model']
    table = model_table([result])
    assert table.count('|') == table.splitlines()[0].count('|') * 3  # header, rule, one row


# ----------------------------------------------------------------------------- peers
PEER_CASES = [('se', 32, {}), ('eca', 32, dict(kernel_size=5)), ('cbam', 32, {}),
              ('gc', 32, {}), ('nonlocal', 16, {}), ('coord', 32, {}), ('psa_p', 16, {}),
              ('psa_s', 16, {}), ('danet_pam', 16, {})]


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name,c,kwargs', PEER_CASES, ids=[n for n, _, _ in PEER_CASES])
def test_peers_compute_the_module_float64(name, c, kwargs, train):
    """Every peer built here (mmcv and the layout peers always; timm where installed)
    gives the module's output and input gradient with the module's weights, in eval and train
    mode."""
    from mmattn.benchmark.peers import PEERS, build_peers
    module = randomise(mmattn.build_attention(name, c, **kwargs), scale=0.3)
    module = module.double().train(train)
    peers, skipped = build_peers(name, module)
    assert len(peers) + len(skipped) == len(PEERS[name])
    if not peers:
        pytest.importorskip('timm')
    assert peers, skipped
    assert all('timm' in note for note in skipped), skipped  # only a missing/old timm
    x = torch.randn(2, c, 5, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, c, 5, 7, dtype=torch.float64)
    y = module(x)
    want, = torch.autograd.grad(y, x, g)
    for label, peer in peers.items():
        assert peer.training == train and next(peer.parameters()).dtype == torch.float64
        out = peer(x)
        torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10, msg=label)
        got, = torch.autograd.grad(out, x, g)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=label)


def test_peer_mapping_refuses_an_unexpected_layout():
    from mmattn.benchmark.peers import PeerUnavailable, build_peers
    module = mmattn.build_attention('gc', 32, fusion_types=('channel_mul', ))
    peers, skipped = build_peers('gc', module)
    assert not peers and len(skipped) == 2 and all('channel_add' in s for s in skipped)
    with pytest.raises(PeerUnavailable, match='unexpected layout'):
        from mmattn.benchmark.peers import _load
        _load(torch.nn.Conv2d(2, 2, 1), {'weight': torch.zeros(2, 2, 1, 1)},
              {'weight': 'weight'})  # the bias is missing: a strict load fails


def test_run_case_with_peers_and_table():
    from mmattn.benchmark.peers import AA_CONTROL
    from mmattn.benchmark.report import peer_table, split_peer_flags
    result = run_case(Case('gc', FeatureShape(32, 6, 5), 2), reps=3, budget_s=0.2,
                      peers=True, log=lambda s: None)
    assert result.error == ''
    assert 'mmcv ContextBlock' in result.peers and result.peers[-1] == AA_CONTROL
    for variant in result.peers:
        for phase in ('fwd', 'fwdbwd'):
            assert result.times[phase][variant] > 0 and result.peak[phase][variant] > 0
        assert result.max_rel_err[variant] < 1e-6
    assert result.max_rel_err[AA_CONTROL] == 0
    table = peer_table([result])
    assert '| gc | mmcv ContextBlock | 32x6x5 | 2 | float32 |' in table
    assert f'| gc | {AA_CONTROL} |' in table
    # a ratio below 0.95 is bold and listed among the flags
    result.times['fwd'][AA_CONTROL] = 0.5 * result.times['fwd']['module']
    assert '**0.50' in peer_table([result])
    assert any(f'{AA_CONTROL}' in f and 'time fwd 0.50' in f
               for f in sum(split_peer_flags([result]), []))
    # a peer flag counts as noise where the A/A control of the same cell is as low
    for phase in ('fwd', 'fwdbwd'):  # measured timings of a tiny case: set them
        for variant in result.peers:
            result.times[phase][variant] = result.times[phase]['module']
    result.times['fwd'][AA_CONTROL] = 0.5 * result.times['fwd']['module']
    result.times['fwd']['mmcv ContextBlock'] = 0.6 * result.times['fwd']['module']
    beyond, within = split_peer_flags([result])
    assert [f for f in within if 'ContextBlock' in f] == [
        'gc vs mmcv ContextBlock at 32x6x5 N=2 float32: time fwd 0.60 (A/A 0.50)']
    assert not [f for f in beyond if 'time' in f], beyond
    result.times['fwd'][AA_CONTROL] = result.times['fwd']['module']
    beyond, within = split_peer_flags([result])
    assert [f for f in beyond if 'time' in f] == [
        'gc vs mmcv ContextBlock at 32x6x5 N=2 float32: time fwd 0.60']
    assert not [f for f in within if 'time' in f], within


def test_mmattn_never_imports_timm():
    code = ('import sys, mmattn, mmattn.benchmark, mmattn.benchmark.peers, '
            'mmattn.benchmark.cli; assert "timm" not in sys.modules, "timm imported"')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=str(ROOT))
