"""tools/analysis/visualize_attention.py and the map protocol behind it
(mmattn/visualization/attention_maps.py, the modules' own ``attention_maps`` methods).

The end-to-end cases run untrained (``checkpoint none``), shrunk HRNets on tiny images:
an mmseg OCRNet (CLI in a subprocess) and an mmpose top-down model (in-process ``main``).
"""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmattn  # noqa: F401
from mmattn.models.layers import PolarizedSelfAttention, build_attention
from mmattn.visualization import attention_maps, find_attention_modules, gain_maps, parse_site

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'visualize_attention.py')
SEG_CFG = osp.join(ROOT, 'configs', 'demo',
                   'ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py')
POSE_CFG = osp.join(ROOT, 'configs', 'psa', 'td-hm_hrnet-w32-psa-p_udp-8xb64-210e_coco-256x192.py')
# HRNet-W18-small with one HRModule in stages 3 and 4: 2x2 + 3x2 + 4x2 = 18 BasicBlocks, so 18
# PSA modules in the released placement (stages 2-4)
SEG_SHRINK = ['model.backbone.extra.stage3.num_modules=1',
              'model.backbone.extra.stage4.num_modules=1']
SEG_MODULES = {2: (1, 2, 2), 3: (1, 3, 2), 4: (1, 4, 2)}  # stage: (modules, branches, blocks)
# HRNet-W32 shrunk: 1 block per branch in stages 2 and 3, 2 in stage 4 -> 2 + 3 + 8 = 13
POSE_SHRINK = ['model.backbone.init_cfg=None',
               'model.backbone.extra.stage1.num_blocks=(1,)',
               'model.backbone.extra.stage2.num_blocks=(1,1)',
               'model.backbone.extra.stage3.num_modules=1',
               'model.backbone.extra.stage3.num_blocks=(1,1,1)',
               'model.backbone.extra.stage4.num_modules=1',
               'model.backbone.extra.stage4.num_blocks=(2,2,2,2)']
POSE_MODULES = {2: (1, 2, 1), 3: (1, 3, 1), 4: (1, 4, 2)}


def _load_tool():
    spec = importlib.util.spec_from_file_location('visualize_attention_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tool():
    return _load_tool()


@pytest.fixture
def restore_default_scope():
    """init_model switches mmengine's current default scope; put it back for other tests."""
    from mmengine.registry import DefaultScope
    before = list(DefaultScope._instance_dict)
    yield
    for name in list(DefaultScope._instance_dict):
        if name not in before:
            del DefaultScope._instance_dict[name]


def _write_image(path, h, w):
    import cv2
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                    np.full_like(x, 90)], -1).astype(np.uint8)
    cv2.circle(img, (w // 3, h // 2), max(3, min(h, w) // 5), (255, 255, 255), -1)
    assert cv2.imwrite(str(path), img)
    return str(path)


def _check_png(path, min_w=300, min_h=150):
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == 'PNG'
        w, h = im.size
        assert min_w <= w <= 8000 and min_h <= h <= 8000, (path, im.size)
        # not a blank canvas
        arr = np.asarray(im.convert('RGB'))
        assert arr.std() > 10


def _check_outputs(out_dir, stats, stages, feature_hw, n_modules):
    names = set(os.listdir(out_dir))
    expected = {f'stage{s}_{k}.png' for s in stages for k in ('spatial', 'channel')}
    expected |= {'summary.png', 'attention_stats.json'}
    assert expected <= names, sorted(names)
    for name in sorted(expected - {'attention_stats.json'}):
        _check_png(osp.join(out_dir, name))
    assert stats['num_modules'] == n_modules == len(stats['modules'])
    for rec in stats['modules']:
        assert rec['type'] == 'PolarizedSelfAttention'
        assert rec['source'] == 'module.attention_maps'
        assert rec['stage'] in stages and rec['path'].startswith(f"backbone.stage{rec['stage']}")
        h, w = feature_hw
        # branch b of HRNet works at 1/2^b of the branch-0 resolution
        assert rec['feature_size'] == [h >> rec['branch'], w >> rec['branch']], rec
        for key in ('spatial', 'channel'):
            s = rec[key]
            assert 0 < s['min'] <= s['mean'] <= s['max'] < 1, rec  # sigmoid gates
    per_stage = {}
    for rec in stats['modules']:
        per_stage.setdefault(rec['stage'], set()).add((rec['branch'], rec['block']))
    return per_stage


# ----------------------------------------------------------------------------- PSA maps
def _psa(mode, formulation, c=16):
    torch.manual_seed(0)
    module = PolarizedSelfAttention(c, mode=mode, formulation=formulation).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


def _plain_gates(module, x):
    """PSA's two gates written out with 1x1 convs (the released code / the paper's equations):
    a_ch from x, and a_sp from the input the spatial branch sees (x, or x * a_ch in PSA_s)."""
    n, c, h, w = x.shape
    # channel branch
    v = F.conv2d(x, module.conv_v_right.weight).view(n, c // 2, h * w)
    q = torch.softmax(F.conv2d(x, module.conv_q_right.weight).view(n, 1, h * w), dim=2)
    ctx = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)
    z = module.conv_up(ctx)
    if module.norm_up is not None:
        z = module.norm_up(z)
    a_ch = torch.sigmoid(z).view(n, c)
    # spatial branch
    y = x if module.mode == 'parallel' else x * a_ch.view(n, c, 1, 1)
    g = F.adaptive_avg_pool2d(F.conv2d(y, module.conv_q_left.weight), 1).view(n, 1, c // 2)
    if module.formulation == 'paper':
        g = torch.softmax(g, dim=2)
    theta = F.conv2d(y, module.conv_v_left.weight).view(n, c // 2, h * w)
    if module.formulation == 'released' and module.mode == 'sequential':
        theta = torch.softmax(theta, dim=2)
    s = torch.matmul(g, theta)
    if module.formulation == 'released' and module.mode == 'parallel':
        s = torch.softmax(s, dim=2)
    return a_ch, torch.sigmoid(s).view(n, h, w)


@pytest.mark.parametrize('formulation', ['released', 'paper'])
def test_psa_parallel_maps_reproduce_forward(formulation):
    module = _psa('parallel', formulation)
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    maps = module.attention_maps(x)
    a_sp, a_ch = maps['spatial'], maps['channel']
    assert a_sp.shape == (2, 7, 9) and a_ch.shape == (2, 16)
    out = module(x)
    recombined = x * a_ch[:, :, None, None] + x * a_sp[:, None]
    torch.testing.assert_close(recombined, out, rtol=1e-13, atol=1e-13)
    ref_ch, ref_sp = _plain_gates(module, x)
    torch.testing.assert_close(a_ch, ref_ch, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_sp, ref_sp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('formulation', ['released', 'paper'])
def test_psa_sequential_maps_reproduce_forward(formulation):
    module = _psa('sequential', formulation)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    maps = module.attention_maps(x)
    a_sp, a_ch = maps['spatial'], maps['channel']
    out = module(x)
    # PSA_s = spatial(channel(x)): the spatial gate is the one computed on x * a_ch
    torch.testing.assert_close(x * a_ch[:, :, None, None] * a_sp[:, None], out,
                               rtol=1e-13, atol=1e-13)
    ref_ch, ref_sp = _plain_gates(module, x)
    torch.testing.assert_close(a_ch, ref_ch, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_sp, ref_sp, rtol=1e-12, atol=1e-12)
    # ... and not the gate of x itself (the composition matters)
    assert not torch.allclose(a_sp, _plain_gates_on_x(module, x), atol=1e-9)


def _plain_gates_on_x(module, x):
    """The sequential module's spatial gate evaluated on x instead of x * a_ch."""
    n, c, h, w = x.shape
    g = F.adaptive_avg_pool2d(F.conv2d(x, module.conv_q_left.weight), 1).view(n, 1, c // 2)
    if module.formulation == 'paper':
        g = torch.softmax(g, dim=2)
    theta = F.conv2d(x, module.conv_v_left.weight).view(n, c // 2, h * w)
    if module.formulation == 'released':
        theta = torch.softmax(theta, dim=2)
    return torch.sigmoid(torch.matmul(g, theta)).view(n, h, w)


def test_psa_maps_leave_module_unchanged_and_work_in_float32():
    module = PolarizedSelfAttention(8).eval()
    x = torch.randn(1, 8, 5, 4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    maps = attention_maps(module, x)
    torch.testing.assert_close(x * maps['channel'][:, :, None, None] + x * maps['spatial'][:, None],
                               module(x))
    precise = attention_maps(module, x, precise=True)
    assert precise['spatial'].dtype == torch.float64
    torch.testing.assert_close(precise['spatial'].float(), maps['spatial'])
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32


# ----------------------------------------------------------------------------- other modules
@pytest.mark.parametrize('name,kwargs,combine', [
    ('se', dict(rd_ratio=1 / 4), 'channel'),
    ('eca', {}, 'channel'),
    ('cbam', dict(rd_ratio=1 / 4), 'product'),
    ('coord', {}, 'mean'),
    ('triplet', {}, 'mean'),
    ('triplet', dict(no_spatial=True), 'mean'),
])
def test_other_modules_maps(name, kwargs, combine):
    torch.manual_seed(0)
    module = build_attention(name, 16, **kwargs).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    maps = attention_maps(module, x)
    out = module(x)
    if combine == 'channel':
        assert maps['spatial'] is None
        torch.testing.assert_close(x * maps['channel'][:, :, None, None], out)
    elif combine == 'product':
        torch.testing.assert_close(
            x * maps['channel'][:, :, None, None] * maps['spatial'][:, None], out)
    else:
        # element-wise gate G = out / x: the maps are its means over channels / positions
        gate = out / x
        torch.testing.assert_close(maps['spatial'], gate.mean(dim=1))
        torch.testing.assert_close(maps['channel'], gate.mean(dim=(2, 3)))


class _SpatialGate(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def forward(self, x):
        return x * self.gate


def test_fallback_gain_is_exact_for_pure_gates():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    sp = torch.rand(2, 1, 4, 3, dtype=torch.float64)
    maps = attention_maps(_SpatialGate(sp), x)
    torch.testing.assert_close(maps['spatial'], sp[:, 0])
    ch = torch.rand(2, 5, 1, 1, dtype=torch.float64)
    maps = attention_maps(_SpatialGate(ch), x)
    torch.testing.assert_close(maps['channel'], ch[:, :, 0, 0])
    # a module that changes the resolution has no spatial map; one that changes C no channel
    maps = gain_maps(x, F.avg_pool2d(x, 2))
    assert maps['spatial'] is None and maps['channel'] is not None
    maps = gain_maps(x, x[:, :2])
    assert maps['spatial'] is not None and maps['channel'] is None


def test_own_maps_are_shape_checked():
    class Bad(nn.Module):
        def attention_maps(self, x):
            return dict(spatial=x.mean(1, keepdim=True), channel=None)

    with pytest.raises(ValueError, match=r'expected \(N, H, W\)'):
        attention_maps(Bad(), torch.randn(1, 3, 4, 4))


def test_site_parsing_and_discovery():
    assert parse_site('backbone.stage3.2.branches.1.3.deattn') == (3, 1, '2.3.deattn')
    assert parse_site('backbone.layer2.1.se') == (2, 0, '1.se')
    assert parse_site('neck.attentions.0') == ('neck', 0, 'attentions.0')
    model = nn.Sequential()
    model.add_module('a', build_attention('se', 16, rd_ratio=1 / 4))
    model.add_module('b', nn.Conv2d(16, 16, 1))
    sites = find_attention_modules(model)
    assert [s.path for s in sites] == ['a'] and sites[0].kind == 'SqueezeExcitation'


# ----------------------------------------------------------------------------- the tool
def test_cli_segmentation(tmp_path):
    image = _write_image(tmp_path / 'street.png', 64, 128)
    out_dir = tmp_path / 'maps'
    cmd = [sys.executable, TOOL, SEG_CFG, 'none', image, '--out-dir', str(out_dir),
           '--device', 'cpu', '--cfg-options', *SEG_SHRINK]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'wrote {out_dir / "summary.png"}' in proc.stdout
    assert '18 attention modules' in proc.stdout
    stats = json.loads((out_dir / 'attention_stats.json').read_text())
    assert stats['task'] == 'mmseg' and stats['input_size'] == [64, 128]
    n_modules = sum(m * b * k for m, b, k in SEG_MODULES.values())
    per_stage = _check_outputs(str(out_dir), stats, (2, 3, 4), (16, 32), n_modules)
    for stage, (_, branches, blocks) in SEG_MODULES.items():
        assert len(per_stage[stage]) == branches * blocks
        assert {b for b, _ in per_stage[stage]} == set(range(branches))


def test_pose_topdown(tool, tmp_path, restore_default_scope, capsys):
    image = _write_image(tmp_path / 'person.png', 256, 192)
    out_dir = tmp_path / 'pose'
    result = tool.main([POSE_CFG, 'none', image, '--out-dir', str(out_dir), '--device', 'cpu',
                        '--bbox', '20', '10', '150', '230', '--sort-channels',
                        '--cfg-options', *POSE_SHRINK])
    stats = result['stats']
    assert stats == json.loads((out_dir / 'attention_stats.json').read_text())
    assert stats['task'] == 'mmpose' and stats['input_size'] == [256, 192]
    assert stats['bbox_xywh'] == [20, 10, 150, 230]
    assert 'flip test disabled' in stats['notes']
    n_modules = sum(m * b * k for m, b, k in POSE_MODULES.values())
    _check_outputs(str(out_dir), stats, (2, 3, 4), (64, 48), n_modules)
    assert sorted(result['files']) == sorted(str(out_dir / f) for f in os.listdir(out_dir))
    printed = capsys.readouterr().out
    assert all(f'wrote {f}' in printed for f in result['files'])


RETINANET_CBAM = """_base_ = {base!r}
model = dict(backbone=dict(type='AttentionBackbone', backbone_type='ResNet',
                           attention_plugins=[dict(cfg=dict(type='CBAM'), position='after_conv2',
                                                   stages=(2, 3, 4))]))
"""


def test_mmdet_detector(tool, tmp_path, restore_default_scope):
    """An mmdet RetinaNet (ResNet-18 + CBAM in stages 2-4: 2 BasicBlocks each) through
    ``inference_detector``: the test pipeline's resize (shrunk here) and padding to 32."""
    import mmdet
    base = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', 'retinanet',
                    'retinanet_r18_fpn_1x_coco.py')
    config = tmp_path / 'retinanet_r18-cbam.py'
    config.write_text(RETINANET_CBAM.format(base=base))
    image = _write_image(tmp_path / 'street.png', 90, 120)
    result = tool.main([str(config), 'none', image, '--out-dir', str(tmp_path / 'o'),
                        '--device', 'cpu', '--cfg-options',
                        'test_dataloader.dataset.pipeline.1.scale=(128,96)'])
    stats = result['stats']
    assert stats['task'] == 'mmdet' and stats['input_size'] == [96, 128]
    assert stats['num_modules'] == 6
    sizes = {rec['stage']: rec['feature_size'] for rec in stats['modules']}
    assert sizes == {2: [12, 16], 3: [6, 8], 4: [3, 4]}  # strides 8, 16, 32
    assert all(rec['type'] == 'CBAM' and rec['source'] == 'module.attention_maps'
               for rec in stats['modules'])


def test_unsupported_scope_is_one_line(tool, tmp_path):
    config = tmp_path / 'cls.py'
    config.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    image = _write_image(tmp_path / 'a.png', 16, 16)
    with pytest.raises(tool.VisualizeError, match=r"default_scope is 'mmpretrain'; this tool "
                                                  r"runs configs of \('mmseg', 'mmpose', 'mmdet'\)"):
        tool.main([str(config), 'none', image])


def _entries(maps):
    """Tool entries for (spatial, channel) pairs of one stage, one block each."""
    from mmattn.visualization import AttentionSite, map_stats
    entries = []
    for i, (spatial, channel) in enumerate(maps):
        site = AttentionSite(f'backbone.layer2.{i}.probe', nn.Identity(), 2, 0, f'{i}.probe',
                             'Probe')
        record = dict(channels=channel.numel(), feature_size=list(spatial.shape),
                      source='module.attention_maps', spatial=map_stats(spatial),
                      channel=map_stats(channel))
        entries.append(dict(site=site, record=record, spatial=spatial, channel=channel))
    return entries


def test_shared_scale_shows_a_flat_gate_flat(tool, tmp_path):
    """A gate varying by 5e-6 next to one spanning 0.1-0.9: both on the stated [0, 1] scale,
    so the flat one's pixels are one colour (to a colormap step) while the sharp one's span the
    map;
    channel bars start at 0 on a shared [0, 1] y axis; titles give each map's real range."""
    import argparse

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    g = torch.Generator().manual_seed(0)
    flat_sp = 0.5 + 5e-6 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    sharp_sp = torch.linspace(0.1, 0.9, 64, dtype=torch.float64).view(8, 8)
    flat_ch = 0.5 + 5e-6 * torch.randn(16, generator=g, dtype=torch.float64)
    sharp_ch = torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    entries = _entries([(flat_sp, flat_ch), (sharp_sp, sharp_ch)])
    scale = tool.value_scale(m for e in entries for m in (e['spatial'], ))
    assert scale == (0.0, 1.0)
    assert tool.value_scale([2.5 * sharp_sp, sharp_sp - 0.3]) == (pytest.approx(-0.2),
                                                                   pytest.approx(2.25))
    args = argparse.Namespace(cmap='turbo', alpha=1.0, dpi=40, sort_channels=False)
    image = np.full((32, 32, 3), 128, np.uint8)  # uniform: pixel colours come from the map

    fig = tool.draw_spatial(str(tmp_path / 's.png'), 2, entries, image, args, 'test', scale)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    flat, sharp = (np.asarray(ax.images[0].get_array()) for ax in panels)
    # at most two neighbouring entries of the 256-colour map (0.5 sits on a boundary); a
    # per-panel scale would stretch the 1e-5 variation over the whole map (spread ~0.9)
    assert np.ptp(flat, axis=(0, 1)).max() < 0.02
    assert np.ptp(sharp, axis=(0, 1)).max() > 0.5
    (colorbar, ) = [ax for ax in fig.axes if ax.get_label() == '<colorbar>']
    assert colorbar.get_ylim() == pytest.approx((0.0, 1.0))
    assert 'min 0.499' in panels[0].get_title() and 'max 0.500' in panels[0].get_title()
    assert 'min 0.10  max 0.90' in panels[1].get_title()
    assert 'one colour scale for all panels: 0.00 to 1.00' in fig._suptitle.get_text()
    plt.close(fig)

    fig = tool.draw_channel(str(tmp_path / 'c.png'), 2, entries, image, args, 'test', scale)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 2
    for ax, values in zip(panels, (flat_ch, sharp_ch)):
        assert ax.get_ylim() == pytest.approx((0.0, 1.0))
        verts = np.concatenate([p.vertices for p in ax.collections[0].get_paths()])
        assert verts[:, 1].min() == 0.0  # bars from 0
        assert verts[:, 1].max() == pytest.approx(float(values.max()))
    assert 'one y axis for all panels: 0.00 to 1.00' in fig._suptitle.get_text()
    plt.close(fig)


# ----------------------------------------------------------------------------- errors
def test_missing_image(tool, tmp_path):
    with pytest.raises(tool.VisualizeError, match='image file not found: .*nope.png'):
        tool.main([SEG_CFG, 'none', str(tmp_path / 'nope.png')])


def test_unreadable_image(tool, tmp_path):
    bad = tmp_path / 'bad.png'
    bad.write_text('not an image')
    with pytest.raises(tool.VisualizeError, match='cannot read image'):
        tool.main([SEG_CFG, 'none', str(bad)])


def test_missing_checkpoint(tool, tmp_path):
    image = _write_image(tmp_path / 'a.png', 16, 16)
    with pytest.raises(tool.VisualizeError,
                       match=r"checkpoint file not found: .*missing.pth \(pass 'none'"):
        tool.main([SEG_CFG, str(tmp_path / 'missing.pth'), image])


def test_bbox_needs_pose_config(tool, tmp_path, restore_default_scope):
    image = _write_image(tmp_path / 'a.png', 16, 16)
    with pytest.raises(tool.VisualizeError, match='--bbox is for pose'):
        tool.main([SEG_CFG, 'none', image, '--bbox', '0', '0', '8', '8'])


def test_corrupt_checkpoint(tool, tmp_path, restore_default_scope):
    image = _write_image(tmp_path / 'a.png', 64, 128)
    ckpt = tmp_path / 'broken.pth'
    ckpt.write_bytes(b'\x00garbage')
    with pytest.raises(tool.VisualizeError, match='cannot load checkpoint .*broken.pth'):
        tool.main([SEG_CFG, str(ckpt), image, '--device', 'cpu', '--out-dir',
                   str(tmp_path / 'o'), '--cfg-options', *SEG_SHRINK])


def test_config_without_attention(tool, tmp_path, restore_default_scope):
    image = _write_image(tmp_path / 'a.png', 64, 128)
    with pytest.raises(tool.VisualizeError) as info:
        tool.main([SEG_CFG, 'none', image, '--device', 'cpu', '--out-dir', str(tmp_path / 'o'),
                   '--cfg-options', 'model.backbone.plugins=[]', *SEG_SHRINK])
    msg = str(info.value)
    assert 'no attention modules found' in msg
    # the message lists what was searched for
    assert 'PolarizedSelfAttention' in msg and 'SqueezeExcitation' in msg
    assert not (tmp_path / 'o').exists()


def test_cli_error_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, TOOL, SEG_CFG, 'none', str(tmp_path / 'x.jpg')],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'error: image file not found' in proc.stderr
    assert 'Traceback' not in proc.stderr
