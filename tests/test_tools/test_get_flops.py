"""tools/analysis/get_flops.py and mmattn.analysis: closed forms, the PSA paper's pose figures,
the CLI."""
import os
import pathlib
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer

import mmattn  # noqa: F401
from mmattn.analysis import (PAPER_GIGA, analyze_model, attention_modules, disable_pretrained,
                             find_baseline, format_report, markdown_table, psa_released_macs,
                             write_markdown)
from mmattn.models.layers import PolarizedSelfAttention

ROOT = pathlib.Path(__file__).resolve().parents[2]
PSA_DIR = ROOT / 'configs' / 'psa'
W48 = PSA_DIR / 'td-hm_hrnet-w48_udp-8xb32-210e_coco-256x192.py'
W48_PSA_P = PSA_DIR / 'td-hm_hrnet-w48-psa-p_udp-8xb32-210e_coco-256x192.py'


def _within(value, reference, rel=0.01):
    return abs(value - reference) <= rel * abs(reference)


# ----------------------------------------------------------------------------- closed forms
def psa_executed_macs(channels: int, height: int, width: int, mode: str = 'parallel',
                      formulation: str = 'released', batch: int = 1) -> Counter:
    """What ``FlopAnalyzer`` counts for mmattn's reassociated PSA forward (see
    ``PolarizedSelfAttention``): the q/v projections act on pooled vectors, so only ``x`` is
    read over the positions. ``C = channels``, ``P = height * width``.

    PSA_p: ``bmm`` of x with [w_q_right; W_v_left^T g] (``2 C P``) and with softmax(q)
    (``C P``); ``linear`` W_q_left mean(x), W_v_right pooled, conv_up (``3 C^2/2``);
    ``matmul`` g W_v_left (``C^2/2``). Total ``3 C P + 2 C^2``.
    PSA_s (released): ``matmul`` q (``C P``), ``bmm`` pooled (``C P``), theta with the per-sample
    folded weights (``C^2/2 P``) and g theta (``C/2 P``); ``linear`` W_v_right, W_q_left,
    bottleneck (``C^2 + C^2/16 + C^2/8``); ``layer_norm`` (``5 C/8``).
    """
    c, p = int(channels), int(height) * int(width)
    half = c // 2
    counts = Counter()
    if mode == 'parallel':
        counts['bmm'] = 3 * c * p
        counts['linear'] = 3 * half * c
        counts['matmul'] = half * c
        if formulation == 'paper':
            counts['layer_norm'] = 5 * c
    elif formulation == 'released':
        counts['matmul'] = c * p
        counts['bmm'] = c * p + half * c * p + half * p
        counts['linear'] = 2 * half * c + half * (c // 2 // 4) + (c // 2 // 4) * c
        counts['layer_norm'] = 5 * (c // 2 // 4)
    else:
        counts['matmul'] = c * p + half * c
        counts['bmm'] = c * p + c * p
        counts['linear'] = 3 * half * c
        counts['layer_norm'] = 5 * c
    return Counter({k: v * batch for k, v in counts.items()})


def test_conv_counts_multiply_adds():
    """One fused multiply-add = one flop: a conv counts Cout * Cin/groups * k*k * Hout*Wout,
    bias and additions not counted."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False))
    result = analyze_model(model, (3, 20, 16))
    hout, wout = 10, 8
    macs = 8 * 3 * 9 * hout * wout + 8 * 2 * 9 * hout * wout
    assert result.flops == macs
    assert result.flops_released == macs  # no attention module
    assert result.macs_paper == macs
    assert result.gflops_paper == pytest.approx(macs / 2**30)
    assert result.params == 8 * 3 * 9 + 8 + 8 * 2 * 9
    assert result.attn_modules == 0 and result.attn_flops == 0


@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
@pytest.mark.parametrize('formulation', ['released', 'paper'])
def test_psa_module_share(mode, formulation):
    """The attention share of one PSA module: executed = the traced count of the fused forward
    (psa_executed_macs), released = the analytic released-code count (psa_released_macs)."""
    c, h, w = 32, 12, 10
    model = nn.Sequential(nn.Conv2d(c, c, 1, bias=False),
                          PolarizedSelfAttention(c, mode=mode, formulation=formulation))
    result = analyze_model(model, (c, h, w))
    stem = c * c * h * w
    executed = sum(psa_executed_macs(c, h, w, mode, formulation).values())
    released = psa_released_macs(c, h, w, mode, formulation)
    assert result.attn_modules == 1 and result.analytic
    assert result.attn_params == sum(p.numel() for p in model[1].parameters())
    assert result.flops == stem + executed
    assert result.attn_flops == executed
    assert result.attn_flops_released == sum(released.values())
    assert result.flops_released == stem + sum(released.values())
    assert result.attn_macs_paper == released['conv']
    assert result.macs_paper == stem + released['conv']


def test_psa_p_closed_form():
    """Released PSA_p (DeLightCMU/PSA), C channels, P = H*W positions: conv_q_right C P, conv_v_right /
    conv_q_left / conv_v_left C^2/2 P each, v @ q and g @ theta C/2 P each, avgpool C/2 P,
    conv_up C^2/2; the fused forward runs 3 C P + 2 C^2."""
    c, h, w = 48, 64, 48
    p = h * w
    released = psa_released_macs(c, h, w)
    assert released['conv'] == 1.5 * c * c * p + c * p + c * c // 2
    assert sum(released.values()) == 1.5 * c * c * p + 2.5 * c * p + c * c // 2
    assert sum(psa_executed_macs(c, h, w).values()) == 3 * c * p + 2 * c * c


class _ReleasedPSA(nn.Module):
    """The released PSA maths written out op by op (DeLightCMU/PSA `PSA_p`/`PSA_s`), to check that the analytic
    count equals what FlopAnalyzer counts for the unfused computation."""

    def __init__(self, c, mode, formulation):
        super().__init__()
        self.mode, self.formulation = mode, formulation
        half = c // 2
        self.q_right = nn.Conv2d(c, 1, 1, bias=False)
        self.v_right = nn.Conv2d(c, half, 1, bias=False)
        self.q_left = nn.Conv2d(c, half, 1, bias=False)
        self.v_left = nn.Conv2d(c, half, 1, bias=False)
        if mode == 'sequential' and formulation == 'released':
            self.up = nn.Sequential(nn.Conv2d(half, c // 8, 1), nn.LayerNorm([c // 8, 1, 1]),
                                    nn.ReLU(), nn.Conv2d(c // 8, c, 1))
        else:
            self.up = nn.Conv2d(half, c, 1, bias=False)
        self.norm = nn.LayerNorm([c, 1, 1]) if formulation == 'paper' else None
        self.pool = nn.AdaptiveAvgPool2d(1)

    def channel(self, x):
        n, _, h, w = x.shape
        v = self.v_right(x).flatten(2)
        q = torch.softmax(self.q_right(x).flatten(2), dim=-1)
        ctx = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)
        z = self.up(ctx)
        if self.norm is not None:
            z = self.norm(z)
        return x * torch.sigmoid(z)

    def spatial(self, x):
        n, _, h, w = x.shape
        g = self.pool(self.q_left(x)).flatten(2).transpose(1, 2)
        theta = self.v_left(x).flatten(2)
        if self.formulation == 'paper':
            g = torch.softmax(g, dim=-1)
        elif self.mode == 'sequential':
            theta = torch.softmax(theta, dim=-1)
        s = torch.matmul(g, theta)
        if self.formulation == 'released' and self.mode == 'parallel':
            s = torch.softmax(s, dim=-1)
        return x * torch.sigmoid(s).view(n, 1, h, w)

    def forward(self, x):
        if self.mode == 'parallel':
            return self.channel(x) + self.spatial(x)
        return self.spatial(self.channel(x))


@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
@pytest.mark.parametrize('formulation', ['released', 'paper'])
def test_released_count_equals_traced_released_code(mode, formulation):
    c, h, w = 32, 9, 7
    module = _ReleasedPSA(c, mode, formulation).eval()
    analyzer = FlopAnalyzer(module, (torch.randn(1, c, h, w), ))
    analyzer.unsupported_ops_warnings(False)
    analytic = psa_released_macs(c, h, w, mode, formulation)
    assert dict(analyzer.by_operator()) == dict(+analytic)
    # and mmattn's module computes the same function
    ours = PolarizedSelfAttention(c, mode=mode, formulation=formulation).eval()
    module.q_right.weight.data.copy_(ours.conv_q_right.weight)
    module.v_right.weight.data.copy_(ours.conv_v_right.weight)
    module.q_left.weight.data.copy_(ours.conv_q_left.weight)
    module.v_left.weight.data.copy_(ours.conv_v_left.weight)
    module.up.load_state_dict(ours.conv_up.state_dict())
    if ours.norm_up is not None:
        module.norm.load_state_dict(ours.norm_up.state_dict())
    x = torch.randn(2, c, h, w)
    torch.testing.assert_close(module(x), ours(x), rtol=1e-4, atol=1e-5)


def test_attention_modules_outermost_only():
    model = nn.Sequential(nn.Conv2d(8, 8, 1), PolarizedSelfAttention(8))
    assert list(attention_modules(model)) == ['1']
    model[1].inner = PolarizedSelfAttention(8)
    assert list(attention_modules(model)) == ['1']


# ----------------------------------------------------------------------------- helpers
def test_find_baseline():
    names = [str(p) for p in sorted(PSA_DIR.glob('*.py'))]
    assert find_baseline(str(W48_PSA_P), names) == str(W48)
    seg = PSA_DIR / 'ocrnet_hr18-psa-s_4xb2-160k_cityscapes-512x1024.py'
    assert find_baseline(str(seg), names) == str(PSA_DIR /
                                                 'ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py')
    assert find_baseline(str(W48), names) is None
    # a removed part never crosses a '_' field
    assert find_baseline('a_b-x_c.py', ['a_c.py', 'a_b_c.py']) == 'a_b_c.py'


def test_disable_pretrained():
    cfg = dict(pretrained='open-mmlab://x', backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint='https://x'), plugins=[dict(
            init_cfg=[dict(type='Kaiming'), dict(type='Pretrained', checkpoint='y')])]),
        head=dict(init_cfg=dict(type='Normal', std=0.01)))
    assert disable_pretrained(cfg) == 3
    assert cfg['pretrained'] is None and cfg['backbone']['init_cfg'] is None
    assert cfg['backbone']['plugins'][0]['init_cfg'] is None
    assert cfg['head']['init_cfg'] == dict(type='Normal', std=0.01)


def test_write_markdown_keeps_other_sections(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('# PSA\n\nintro\n')
    write_markdown(str(readme), '| a |\n|---|')
    text = readme.read_text()
    assert text.startswith('# PSA\n\nintro\n')
    assert '<!-- complexity:start -->\n## Complexity' in text and '| a |' in text
    readme.write_text(text.replace('<!-- complexity:end -->',
                                   'my notes\n<!-- complexity:end -->\n## Results\nx\n'))
    write_markdown(str(readme), '| b |\n|---|')
    text = readme.read_text()
    assert '| b |' in text and '| a |' not in text
    assert 'my notes' in text and '## Results\nx' in text and text.count('## Complexity') == 1


# ----------------------------------------------------------------------------- the paper
@pytest.fixture(scope='module')
def w48_pose():
    """HRNet-W48 + PSA_p (released placement) and the baseline, UDP pose 256x192, built."""
    from mmattn.analysis import build_model, load_config
    return tuple(build_model(load_config(str(path))) for path in (W48_PSA_P, W48))


def test_hrnet_w48_psa_p_pose_params(w48_pose):
    """PSA paper (pose table): HRNet-W48 + PSA_p 70.1M params; the baseline 63.6M (HRNet
    paper, Table 1; mmpose docs, inference_speed_summary.md)."""
    from mmengine.analysis import parameter_count
    psa, base = (parameter_count(m)[''] for m in w48_pose)
    attention = attention_modules(w48_pose[0])
    assert len(attention) == 104
    assert all(name.endswith('.deattn') for name in attention)
    attn_params = sum(p.numel() for m in attention.values() for p in m.parameters())
    assert _within(psa / 1e6, 70.1) and _within(base / 1e6, 63.6)
    # sum over the 104 blocks of 2 C^2 + C (C = 48, 96, 192, 384 for 32, 32, 28, 12 blocks)
    assert psa - base == attn_params == 6355200


@pytest.mark.slow
def test_hrnet_w48_psa_p_pose_gflops_256x192(w48_pose):
    """PSA paper: HRNet-W48 + PSA_p 15.7 GFLOPs at 256x192; baseline 14.6 (HRNet paper), both
    in the HRNet code base's convention (conv + linear multiply-adds / 2**30). mmpose's docs
    list HRNet-W48 256x192 at 15.77 GFLOPs (mmcv 1.x counter); mmengine counts 15.75."""
    psa = analyze_model(w48_pose[0], (3, 256, 192), name=W48_PSA_P.stem)
    base = analyze_model(w48_pose[1], (3, 256, 192), name=W48.stem)
    assert psa.attn_modules == 104 and psa.attn_classes == {'PolarizedSelfAttention': 104}
    # paper convention
    assert _within(psa.gflops_paper, 15.7) and _within(base.gflops_paper, 14.6)
    assert psa.gflops_paper == pytest.approx(15.652, abs=1e-3)
    assert base.gflops_paper == pytest.approx(14.614, abs=1e-3)
    # mmengine, as executed (documented in configs/psa/README.md)
    assert psa.gflops == pytest.approx(15.777, abs=1e-3)
    assert base.gflops == pytest.approx(15.746, abs=1e-3)
    assert _within(base.gflops, 15.77)  # mmpose docs
    assert psa.attn_flops == psa.flops - base.flops
    # mmengine, attention as the released code runs it
    assert psa.gflops_released == pytest.approx(16.872, abs=1e-3)
    assert psa.attn_macs_paper / PAPER_GIGA == pytest.approx(1.0375, abs=1e-3)
    report = format_report(psa, base)
    assert 'overhead' in report and '+6.355' in report and 'PolarizedSelfAttention x104' in report


# ----------------------------------------------------------------------------- CLI
TINY_BASE = """_base_ = {base!r}
model = dict(
    backbone=dict(extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ),
                    num_channels=(16, )),
        stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1),
                    num_channels=(8, 16)),
        stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1),
                    num_channels=(8, 16, 32)),
        stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                    num_channels=(8, 16, 32, 64)))),
    head=dict(in_channels=8))
"""
TINY_PSA = """_base_ = './tiny-hrnet_udp_coco-256x192.py'
model = dict(backbone=dict(type='AttentionBackbone', backbone_type='HRNet', plugins=[
    dict(preset='released', cfg=dict(type='PolarizedSelfAttention', mode='parallel'))]))
"""


def test_cli_markdown_rows(tmp_path):
    """The CLI on a +PSA config (subprocess): its row and its baseline's, the baseline found by
    name in the config's folder, the table written into a README."""
    base = tmp_path / 'tiny-hrnet_udp_coco-256x192.py'
    base.write_text(TINY_BASE.format(
        base=str(PSA_DIR / 'td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.py')))
    psa = tmp_path / 'tiny-hrnet-psa-p_udp_coco-256x192.py'
    psa.write_text(TINY_PSA)
    readme = tmp_path / 'README.md'
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'analysis' / 'get_flops.py'), '--markdown',
         str(psa), '--write', str(readme)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith('| tiny-hrnet')]
    assert len(rows) == 1, proc.stdout
    # 9 BasicBlocks in stages 2-4; overhead over the baseline found by name in the folder
    assert rows[0].startswith(f'| {psa.stem} | 256x192 | PolarizedSelfAttention x9 | ')
    assert rows[0].count('(+') == 4 and '%)' in rows[0]
    assert rows[0] in readme.read_text()
    assert '<!-- complexity-table:start -->' in readme.read_text()


def test_markdown_table_format():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), PolarizedSelfAttention(8))
    a = analyze_model(model, (3, 8, 8), name='net-psa-p')
    b = analyze_model(nn.Sequential(nn.Conv2d(3, 8, 1)), (3, 8, 8), name='net')
    table = markdown_table([a, b], {'net-psa-p': b})
    lines = table.splitlines()
    assert lines[0].startswith('| Config | Input |') and len(lines) == 4
    assert lines[2].startswith('| net-psa-p | 8x8 | PolarizedSelfAttention x1 | 0.00 (+0.00')


def test_zoo_table_counts_every_module(tmp_path):
    """--zoo lists every short name; the fused modules' released counts are the explicit
    formulations' closed forms (PAM at C=64 on 16x16: convs (2*C*C/8 + C*C)*P, products
    P*P*(C/8 + C): 6.0 MFLOPs); PAM's blockwise CPU path executes exactly that count."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('get_flops', ROOT / 'tools/analysis/get_flops.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = tool.zoo_table(64, [16, 16])
    rows = {line.split('|')[1].strip(' `'): line for line in text.splitlines()
            if line.startswith('| `')}
    assert sorted(rows) == sorted(mmattn.list_attention())
    c, p = 64, 256
    pam = (2 * c * (c // 8) + c * c) * p + p * p * (c // 8 + c)
    assert rows['danet_pam'].rstrip(' |').endswith(f'| {pam / 1e6:,.1f} | {pam / 1e6:,.1f}')
    counted = analyze_model(mmattn.build_attention('danet_pam', c), (c, 16, 16))
    assert counted.flops == counted.flops_released == pam
    # PSA_p's executed count, with its custom-backward products counted: the stacked (2 x C)
    # rows and the pooling over positions (3 C P) plus four C x C/2 matrix-vector products
    counted = analyze_model(mmattn.build_attention('psa_p', c), (c, 16, 16))
    assert counted.flops == 3 * c * p + 4 * (c // 2) * c


# ----------------------------------------------------------------------------- mmdet, errors
def _mmdet_config(name):
    import mmdet
    return pathlib.Path(mmdet.__file__).parent / '.mim' / 'configs' / name


def test_mmdet_default_shape_is_the_test_resize_padded():
    """mmdet configs have no crop size: the test pipeline's Resize scale (1333, 800) as W, H,
    padded to the data preprocessor's pad_size_divisor (32): 800 x 1344."""
    from mmattn.analysis import default_input_shape, load_config
    cfg = load_config(str(_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')))
    assert default_input_shape(cfg) == (800, 1344)


FASTER_RCNN_CBAM = """_base_ = {base!r}
model = dict(backbone=dict(type='AttentionBackbone', backbone_type='ResNet',
                           attention_plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3',
                                                   stages=(4, ))]))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(100, 60), keep_ratio=True),
    dict(type='PackDetInputs')]))
"""


def test_cli_two_stage_mmdet_without_shape(tmp_path, capsys):
    """A two-stage detector (its RPN needs the image shapes in the data samples) with CBAM in
    ResNet stage 4, counted at the test pipeline's size without --shape."""
    import importlib.util
    config = tmp_path / 'faster-rcnn_r50-cbam.py'
    config.write_text(FASTER_RCNN_CBAM.format(
        base=str(_mmdet_config('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'))))
    spec = importlib.util.spec_from_file_location('get_flops', ROOT / 'tools/analysis/get_flops.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(config)]) == 0
    out = capsys.readouterr().out
    assert 'task: mmdet    input: 1x3x64x128' in out  # (60, 100) padded to 32
    assert 'CBAM x3' in out  # ResNet-50 stage 4: 3 Bottlenecks


@pytest.mark.parametrize('text,message', [
    ("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n",
     r"default_scope 'mmpretrain' needs the package 'mmpretrain', which is not installed"),
    ("_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'\n",
     r'cannot load config .*mmpretrain'),
    ("model = dict(type='NoSuchModel')\n", r'cannot build the model: NoSuchModel is not in'),
])
def test_cli_unusable_config_gives_one_line(tmp_path, text, message):
    import re
    config = tmp_path / 'other.py'
    config.write_text(text)
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'analysis' / 'get_flops.py'),
                           str(config), '--shape', '32'], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
