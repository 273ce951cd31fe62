"""Proofs for DeformableAttention2d (DAT).

The module is compared in float64 with a formulation written out here from the maths alone:
1x1 convs as einsums, the depthwise conv by F.conv2d, LayerNorm and GELU by formula, the
reference grid by formula, bilinear sampling by explicit 4-neighbour weights (align_corners=True,
zero outside) in *pixel* coordinates, the bias table read in pixel units, softmax by hand.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mmattn.models.layers import build_attention
from mmattn.models.layers.deformable_attn import DeformableAttention2d

NAME = 'DeformableAttention2d'


# ----------------------------------------------------------------------------- plain formulation
def _bilinear_px(img, u, v):
    """Bilinear samples of ``img`` (N, C, H, W) at pixel coordinates ``u`` (column), ``v``
    (row), both (N, P): the 4 neighbours weighted by the fractional parts, neighbours outside
    the map count as zero. Returns (N, C, P)."""
    n, c, h, w = img.shape
    flat = img.reshape(n, c, h * w)
    x0, y0 = torch.floor(u), torch.floor(v)
    fx, fy = u - x0, v - y0
    out = torch.zeros(n, c, u.shape[1], dtype=img.dtype)
    for xi, wx in ((x0, 1 - fx), (x0 + 1, fx)):
        for yi, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            vals = flat.gather(2, idx[:, None, :].expand(n, c, -1))
            out = out + vals * (wx * wy * inside)[:, None, :]
    return out


def _conv1x1(params, name, t):
    out = torch.einsum('oc,bc...->bo...', params[name + '.weight'][:, :, 0, 0], t)
    bias = params.get(name + '.bias')
    if bias is not None:
        out = out + bias.reshape(1, -1, *([1] * (t.dim() - 2)))
    return out


def _plain_offsets(mod, q):
    """Offset network by hand: (N*G, 2, Hk, Wk), channel 0 = dy, channel 1 = dx."""
    p = dict(mod.named_parameters())
    b, c, h, w = q.shape
    g = mod.num_groups
    cg = c // g
    k, r = mod.offset_kernel_size, mod.offset_stride
    pad = 0 if k == r else k // 2
    t = F.conv2d(q.reshape(b * g, cg, h, w), p['conv_offset.0.weight'], p['conv_offset.0.bias'],
                 stride=r, padding=pad, groups=cg)
    mu = t.mean(1, keepdim=True)
    var = ((t - mu) ** 2).mean(1, keepdim=True)
    t = (t - mu) / torch.sqrt(var + 1e-5)
    t = t * p['conv_offset.1.norm.weight'].reshape(1, -1, 1, 1) + \
        p['conv_offset.1.norm.bias'].reshape(1, -1, 1, 1)
    t = 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))
    return torch.einsum('oc,bchw->bohw', p['conv_offset.3.weight'][:, :, 0, 0], t)


def _plain_reference(n, grid='aligned'):
    """Reference coordinates along an n-long key axis: -1 + 2 i / (n - 1), 0 when n == 1
    (``'aligned'``); or as the released DAT++ ``_get_ref_points`` writes them
    (``'released'``): ``linspace(0.5, n - 0.5, n)``, divided by ``n - 1``, times 2, minus 1."""
    if grid == 'released':
        assert n > 1, 'the released grid divides by n - 1'
        return torch.linspace(0.5, n - 0.5, n, dtype=torch.float64).div(n - 1.0).mul(2.0) - 1.0
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.tensor([-1 + 2 * i / (n - 1) for i in range(n)], dtype=torch.float64)


def _plain_positions(mod, q):
    """Sampling positions (py, px), each (N*G, Hk, Wk), normalised to [-1, 1] by corners."""
    off = _plain_offsets(mod, q)
    hk, wk = off.shape[-2:]
    ry = _plain_reference(hk, mod.reference_grid)[:, None]
    rx = _plain_reference(wk, mod.reference_grid)[None, :]
    s = mod.offset_range_factor
    if s is None:
        return (ry + off[:, 0]).clamp(-1, 1), (rx + off[:, 1]).clamp(-1, 1)
    py = ry + s * torch.tanh(off[:, 0]) / max(hk - 1, 1)
    px = rx + s * torch.tanh(off[:, 1]) / max(wk - 1, 1)
    return py, px


def plain_forward(mod, x):
    p = dict(mod.named_parameters())
    b, c, h, w = x.shape
    m, g = mod.num_heads, mod.num_groups
    d, cg, mg = c // m, c // g, m // g
    q = _conv1x1(p, 'proj_q', x)
    py, px = _plain_positions(mod, q)
    hk, wk = py.shape[-2:]
    ns = hk * wk
    # align_corners=True: normalised -1 is pixel 0, +1 is pixel size - 1
    sy = (py.reshape(b * g, ns) + 1) / 2 * (h - 1)
    sx = (px.reshape(b * g, ns) + 1) / 2 * (w - 1)
    sampled = _bilinear_px(x.reshape(b * g, cg, h, w), sx, sy).reshape(b, c, ns)
    k = _conv1x1(p, 'proj_k', sampled).reshape(b, m, d, ns)
    v = _conv1x1(p, 'proj_v', sampled).reshape(b, m, d, ns)
    logits = torch.einsum('bmcq,bmcn->bmqn', q.reshape(b, m, d, h * w), k) / math.sqrt(d)
    if mod.rpe_table is not None:
        fh, fw = mod.feat_size
        table = p['rpe_table']
        qy = torch.arange(h, dtype=x.dtype).repeat_interleave(w)  # query rows, row-major
        qx = torch.arange(w, dtype=x.dtype).repeat(h)
        # table entry (fh - 1, fw - 1) is zero displacement; one query-map pixel of
        # displacement is (fh - 1) / (h - 1) table entries
        rows = (fh - 1) + (qy[None, :, None] - sy[:, None, :]) * (fh - 1) / (h - 1)
        cols = (fw - 1) + (qx[None, :, None] - sx[:, None, :]) * (fw - 1) / (w - 1)
        tables = table.reshape(1, g, mg, *table.shape[1:]).expand(b, -1, -1, -1, -1)
        bias = _bilinear_px(tables.reshape(b * g, mg, *table.shape[1:]),
                            cols.reshape(b * g, -1), rows.reshape(b * g, -1))
        logits = logits + bias.reshape(b, m, h * w, ns)
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    attn = e / e.sum(-1, keepdim=True)
    out = torch.einsum('bmqn,bmcn->bmcq', attn, v).reshape(b, c, h, w)
    return _conv1x1(p, 'proj_out', out)


# ----------------------------------------------------------------------------- helpers
def _module(seed=0, offset_std=1.0, table_std=0.3, **kwargs):
    torch.manual_seed(seed)
    mod = DeformableAttention2d(**kwargs).double().eval()
    with torch.no_grad():
        for name, prm in mod.named_parameters():
            if name == 'conv_offset.3.weight':
                prm.normal_(0, offset_std)
            elif name == 'rpe_table':
                prm.normal_(0, table_std)
            elif prm.dim() == 1:
                prm.add_(0.2 * torch.randn_like(prm))
    return mod


def _x(c, h, w, n=2, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, c, h, w, dtype=torch.float64)


EQUALITY_CASES = {
    # map larger than feat_size (stretched table), 2 groups, offsets leaving the map
    'groups2_stretched': dict(kw=dict(in_channels=16, num_heads=2, num_groups=2,
                                      offset_stride=2, offset_kernel_size=3, feat_size=(5, 4)),
                              hw=(7, 6)),
    # 4 heads in 2 groups, map == feat_size, odd stride, factor 1
    'heads4_exact_size': dict(kw=dict(in_channels=16, num_heads=4, num_groups=2,
                                      offset_stride=3, offset_kernel_size=5,
                                      offset_range_factor=1.0, feat_size=(9, 7)),
                              hw=(9, 7)),
    # kernel == stride: no padding, even kernel
    'kernel_eq_stride': dict(kw=dict(in_channels=8, num_heads=2, num_groups=1, offset_stride=2,
                                     offset_kernel_size=2, offset_range_factor=3.0,
                                     feat_size=4), hw=(6, 5)),
    # unbounded offsets clamped to the map
    'clamped': dict(kw=dict(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                            offset_kernel_size=3, offset_range_factor=None, feat_size=6),
                    hw=(7, 6)),
    # defaults of stride/kernel/factor/feat_size, no bias
    'defaults_no_pe': dict(kw=dict(in_channels=8, use_pe=False), hw=(12, 10)),
    # DAT++'s reference grid, with a stretched table and 2 groups (a released block's layout)
    'released_grid': dict(kw=dict(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                                  offset_kernel_size=3, feat_size=(5, 4),
                                  reference_grid='released'), hw=(7, 6)),
    # DAT++'s grid with the stage-2 setting (kernel 7, stride 4), map == feat_size
    'released_grid_stage2': dict(kw=dict(in_channels=16, num_heads=4, num_groups=2,
                                         offset_stride=4, offset_kernel_size=7,
                                         offset_range_factor=1.0, feat_size=(12, 8),
                                         reference_grid='released'), hw=(12, 8)),
}


# ----------------------------------------------------------------------------- numerical proofs
@pytest.mark.parametrize('case', list(EQUALITY_CASES))
def test_matches_plain_formulation_float64(case):
    spec = EQUALITY_CASES[case]
    mod = _module(**spec['kw'])
    x = _x(spec['kw']['in_channels'], *spec['hw'])
    with torch.no_grad():
        y = mod(x)
        ref = plain_forward(mod, x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


def test_offset_network_and_positions_match_plain():
    mod = _module(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                  offset_kernel_size=3)
    x = _x(16, 7, 6)
    with torch.no_grad():
        reference, pos = mod.sampling_points(x)
        py, px = _plain_positions(mod, _conv1x1(dict(mod.named_parameters()), 'proj_q', x))
    assert pos.shape == reference.shape == (2, 2, 4, 3, 2)  # Hk = (7+2-3)//2+1, Wk = 3
    torch.testing.assert_close(pos[..., 0], px.reshape(2, 2, 4, 3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pos[..., 1], py.reshape(2, 2, 4, 3), rtol=1e-12, atol=1e-12)
    # random offsets: the sampling really is deformed, and some points leave the map
    assert (pos - reference).abs().min() > 0
    assert (pos.abs() > 1).any()


def test_zero_offsets_sample_at_reference_grid():
    mod = _module(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                  offset_kernel_size=3)
    with torch.no_grad():
        mod.conv_offset[3].weight.zero_()
        reference, pos = mod.sampling_points(_x(16, 7, 6))
    assert torch.equal(pos, reference)
    ry, rx = _plain_reference(4), _plain_reference(3)
    torch.testing.assert_close(ry, torch.tensor([-1., -1 / 3, 1 / 3, 1.], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(reference[0, 0, :, :, 1], ry[:, None].expand(4, 3), rtol=0,
                               atol=1e-15)
    torch.testing.assert_close(reference[0, 0, :, :, 0], rx[None, :].expand(4, 3), rtol=0,
                               atol=1e-15)


def test_released_reference_grid_is_half_a_step_off():
    mod = _module(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                  offset_kernel_size=3, reference_grid='released')
    aligned = _module(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                      offset_kernel_size=3)
    x = _x(16, 7, 6)
    with torch.no_grad():
        reference, _ = mod.sampling_points(x)
        reference_aligned, _ = aligned.sampling_points(x)
        assert (mod(x) - aligned(x)).abs().max() > 1e-3  # same weights: the grid matters
    # Hk = 4: (i + 0.5) / 3 * 2 - 1; the last row lies outside the map
    expected_y = torch.tensor([-2 / 3, 0., 2 / 3, 4 / 3], dtype=torch.float64)
    torch.testing.assert_close(reference[0, 0, :, 0, 1], expected_y, rtol=0, atol=1e-15)
    torch.testing.assert_close(reference[0, 0, 0, :, 0], _plain_reference(3, 'released'),
                               rtol=0, atol=1e-15)
    # half a step of the aligned grid (step 2 / (n - 1)) further down and right
    torch.testing.assert_close(reference[..., 1] - reference_aligned[..., 1],
                               torch.full_like(reference[..., 1], 1 / 3), rtol=0, atol=1e-15)
    torch.testing.assert_close(reference[..., 0] - reference_aligned[..., 0],
                               torch.full_like(reference[..., 0], 1 / 2), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="reference_grid must be one of"):
        DeformableAttention2d(16, reference_grid='dat++')


def test_offset_channel_order_is_dy_dx():
    mod = _module(in_channels=8, num_heads=1, num_groups=1, offset_stride=2,
                  offset_kernel_size=3)
    with torch.no_grad():
        mod.conv_offset[3].weight[1].zero_()  # channel 1 (dx) silenced
        reference, pos = mod.sampling_points(_x(8, 6, 6))
    assert torch.equal(pos[..., 0], reference[..., 0])
    assert (pos[..., 1] != reference[..., 1]).all()


def test_stride1_zero_offsets_sample_x_exactly_and_reduce_to_full_attention():
    """Stride 1 puts the reference points on the pixel centres; with zero offsets the sampled
    features are x itself and, on a map of feat_size, the module is full multi-head attention
    with a Swin-style bias ``table[m, fh-1 + yi - yj, fw-1 + xi - xj]`` (integer lookup)."""
    h, w = 5, 4
    mod = _module(in_channels=8, num_heads=2, num_groups=2, offset_stride=1,
                  offset_kernel_size=3, feat_size=(h, w))
    with torch.no_grad():
        mod.conv_offset[3].weight.zero_()
    x = _x(8, h, w)
    with torch.no_grad():
        q = mod.proj_q(x)
        _, pos = mod._points(q)
        sampled = mod._sample(x, pos)
        torch.testing.assert_close(sampled, x, rtol=0, atol=1e-13)
        y = mod(x)
    p = dict(mod.named_parameters())
    n, c, m, d = 2, 8, 2, 4
    k = _conv1x1(p, 'proj_k', x).reshape(n, m, d, h * w)
    v = _conv1x1(p, 'proj_v', x).reshape(n, m, d, h * w)
    logits = torch.einsum('bmcq,bmcn->bmqn', q.reshape(n, m, d, h * w), k) / math.sqrt(d)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    rows = (h - 1) + yy[:, None] - yy[None, :]
    cols = (w - 1) + xx[:, None] - xx[None, :]
    logits = logits + p['rpe_table'][:, rows, cols][None]
    attn = torch.softmax(logits, -1)
    out = torch.einsum('bmqn,bmcn->bmcq', attn, v).reshape(n, c, h, w)
    torch.testing.assert_close(y, _conv1x1(p, 'proj_out', out), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('factor', [0.5, 1.0, 2.0, 4.0])
def test_offset_bound_is_factor_over_key_grid_size(factor):
    """|pos - ref| <= s / (Hk - 1) along y and s / (Wk - 1) along x (normalised), i.e. s / 2
    reference-grid steps, s (H - 1) / (2 (Hk - 1)) input pixels; saturated weights reach it."""
    h, w = 11, 7
    mod = _module(in_channels=8, num_heads=1, num_groups=1, offset_stride=3,
                  offset_kernel_size=5, offset_range_factor=factor)
    with torch.no_grad():
        mod.conv_offset[3].weight.mul_(1e4)
        reference, pos = mod.sampling_points(_x(8, h, w))
    hk, wk = pos.shape[2:4]
    assert (hk, wk) == (4, 3)
    dx, dy = (pos - reference).unbind(-1)
    bound_y, bound_x = factor / (hk - 1), factor / (wk - 1)
    assert dy.abs().max() <= bound_y * (1 + 1e-12)
    assert dx.abs().max() <= bound_x * (1 + 1e-12)
    assert dy.abs().max() >= bound_y * (1 - 1e-9)  # tanh saturated: the bound is attained
    assert dx.abs().max() >= bound_x * (1 - 1e-9)
    step_y = 2 / (hk - 1)  # distance between neighbouring reference points
    assert dy.abs().max() <= factor / 2 * step_y * (1 + 1e-12) <= factor * step_y
    pixels_y = dy.abs().max() * (h - 1) / 2
    assert pixels_y <= factor * (h - 1) / (2 * (hk - 1)) * (1 + 1e-12)


def test_unbounded_offsets_are_clamped_to_the_map():
    mod = _module(in_channels=8, num_heads=1, num_groups=1, offset_stride=2,
                  offset_kernel_size=3, offset_range_factor=None)
    with torch.no_grad():
        _, pos = mod.sampling_points(_x(8, 6, 6))
    assert pos.abs().max() == 1
    assert (pos.abs() == 1).any() and (pos.abs() < 1).any()


def test_gradcheck_sampling_attention_and_bias():
    mod = _module(in_channels=4, num_heads=2, num_groups=2, offset_stride=2,
                  offset_kernel_size=3, feat_size=3, offset_std=0.7)
    x = _x(4, 4, 3, n=1).requires_grad_()
    table = mod.rpe_table.detach().clone().requires_grad_()
    w_off = mod.conv_offset[3].weight.detach().clone().requires_grad_()
    with torch.no_grad():  # random offsets: away from the kinks of bilinear interpolation
        reference, pos = mod.sampling_points(x)
        assert (pos - reference).abs().min() > 1e-4

    def fn(x, table, w_off):
        return torch.func.functional_call(
            mod, {'rpe_table': table, 'conv_offset.3.weight': w_off}, (x, ))

    assert torch.autograd.gradcheck(fn, (x, table, w_off))


# ----------------------------------------------------------------------------- sizes, dtypes
@pytest.mark.parametrize('hw', [(1, 1), (1, 6), (5, 1), (3, 3)])
def test_tiny_maps_are_finite(hw):
    mod = _module(in_channels=8)  # defaults: stride 4, kernel 7 -> a 1x1 or 1x2 key grid
    y = mod(_x(8, *hw))
    assert y.shape == (2, 8, *hw)
    assert torch.isfinite(y).all()


def test_float32_close_to_float64():
    mod = _module(in_channels=16, num_heads=2, num_groups=2, offset_stride=2,
                  offset_kernel_size=3, feat_size=5)
    x = _x(16, 7, 6)
    with torch.no_grad():
        y64 = mod(x)
        y32 = mod.float()(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- construction
def test_defaults():
    mod = build_attention('dat', 16)
    assert isinstance(mod, DeformableAttention2d)
    assert (mod.in_channels, mod.num_heads, mod.num_groups) == (16, 1, 1)
    assert (mod.offset_stride, mod.offset_kernel_size, mod.offset_range_factor) == (4, 7, 2.0)
    assert mod.feat_size == (32, 32) and mod.rpe_table.shape == (1, 63, 63)
    assert mod._abbr_ == 'dat'
    big = DeformableAttention2d(256)
    assert (big.num_heads, big.num_groups, big.head_channels) == (8, 4, 32)
    assert (DeformableAttention2d(96).num_heads, DeformableAttention2d(96).num_groups) == (3, 1)
    assert DeformableAttention2d(100).num_heads == 2  # largest divisor of 100 not above 3
    assert DeformableAttention2d(16, use_pe=False).rpe_table is None
    assert DeformableAttention2d(16, feat_size=(6, 4)).rpe_table.shape == (1, 11, 7)


def test_released_init_and_init_cfg():
    torch.manual_seed(0)
    mod = DeformableAttention2d(64, feat_size=16)
    table = mod.rpe_table.detach()
    assert 0.008 < table.std() < 0.012 and table.abs().max() <= 2
    assert mod.conv_offset[3].weight.abs().sum() > 0  # PyTorch default conv init
    with torch.no_grad():
        mod.rpe_table.zero_()
    mod.init_weights()
    assert mod.rpe_table.abs().sum() > 0
    cfg = dict(type='Constant', val=0.5, bias=0.0, layer='Conv2d')
    mod = DeformableAttention2d(16, init_cfg=cfg)
    assert torch.all(mod.proj_q.weight == 0.5) and torch.all(mod.conv_offset[3].weight == 0.5)


BAD_ARGS = [
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(in_channels='16'), TypeError, 'in_channels'),
    (dict(in_channels=16, num_heads=3), ValueError, 'num_heads'),
    (dict(in_channels=16, num_heads=0), ValueError, 'num_heads'),
    (dict(in_channels=16, num_heads=2.0), TypeError, 'num_heads'),
    (dict(in_channels=16, num_heads=4, num_groups=3), ValueError, 'num_groups'),
    (dict(in_channels=16, num_heads=4, num_groups=0), ValueError, 'num_groups'),
    (dict(in_channels=16, num_groups=True), TypeError, 'num_groups'),
    (dict(in_channels=16, offset_stride=0), ValueError, 'offset_stride'),
    (dict(in_channels=16, offset_stride=1.5), TypeError, 'offset_stride'),
    (dict(in_channels=16, offset_kernel_size=0), ValueError, 'offset_kernel_size'),
    (dict(in_channels=16, offset_kernel_size='3'), TypeError, 'offset_kernel_size'),
    (dict(in_channels=16, offset_range_factor=0), ValueError, 'offset_range_factor'),
    (dict(in_channels=16, offset_range_factor=-1), ValueError, 'offset_range_factor'),
    (dict(in_channels=16, offset_range_factor='2'), TypeError, 'offset_range_factor'),
    (dict(in_channels=16, feat_size=0), ValueError, 'feat_size'),
    (dict(in_channels=16, feat_size=(4, )), TypeError, 'feat_size'),
    (dict(in_channels=16, feat_size=(4, 0)), ValueError, 'feat_size'),
    (dict(in_channels=16, feat_size='32'), TypeError, 'feat_size'),
    (dict(in_channels=16, use_pe='yes'), TypeError, 'use_pe'),
    (dict(in_channels=16, qkv_bias=None), TypeError, 'qkv_bias'),
    (dict(in_channels=16, attn_drop=1.0), ValueError, 'attn_drop'),
    (dict(in_channels=16, proj_drop=-0.1), ValueError, 'proj_drop'),
]


@pytest.mark.parametrize('kwargs,exc,arg', BAD_ARGS, ids=[f'{a}-{i}' for i, (_, _, a) in
                                                          enumerate(BAD_ARGS)])
def test_bad_arguments_name_the_argument(kwargs, exc, arg):
    with pytest.raises(exc, match=re.escape(arg)):
        DeformableAttention2d(**kwargs)


def test_bad_inputs_name_the_class():
    mod = DeformableAttention2d(16, offset_stride=4, offset_kernel_size=4)  # no padding
    assert mod.min_size == 4
    x = torch.randn(1, 16, 4, 5)
    assert mod(x).shape == x.shape
    for bad in (torch.randn(1, 8, 4, 5), torch.randn(16, 4, 5), torch.randn(1, 16, 3, 5),
                torch.randn(1, 16, 5, 3)):
        with pytest.raises(ValueError, match=NAME):
            mod(bad)
    with pytest.raises(ValueError, match=NAME):
        mod.sampling_points(torch.randn(1, 16, 3, 3))
    with pytest.raises(TypeError, match=NAME):
        mod(x.numpy())
