"""SPDConv: the space-to-depth order of the paper's code, losslessness, equality
with a written-out conv + BN + SiLU, odd maps, errors."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import SPDConv, build_attention
from mmattn.models.layers.spd_conv import space_to_depth
from mmattn.registry import MODELS
from mmattn.testing import randomise


def _explicit_s2d_2(x):
    # the paper's code, written out
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]],
                     dim=1)


def _looped_s2d(x, s):
    # block j * s + i holds the sub-grid x[..., i::s, j::s] (row phase i varies fastest)
    blocks = []
    for j in range(s):
        for i in range(s):
            blocks.append(x[..., i::s, j::s])
    return torch.cat(blocks, dim=1)


def depth_to_space(x, scale):
    """The inverse of ``space_to_depth``: block ``j * scale + i`` of the channels back to the
    sub-grid ``x[..., i::scale, j::scale]``, one slice assignment per block."""
    n, cs, h, w = x.shape
    c = cs // (scale * scale)
    out = x.new_empty(n, c, h * scale, w * scale)
    for j in range(scale):
        for i in range(scale):
            block = j * scale + i
            out[..., i::scale, j::scale] = x[:, block * c:(block + 1) * c]
    return out


def test_space_to_depth_scale2_matches_explicit_slicing():
    x = torch.randn(2, 3, 6, 8)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 12, 3, 4)
    assert torch.equal(y, _explicit_s2d_2(x))
    # not pixel_unshuffle's (channel-major) order
    assert not torch.equal(y, F.pixel_unshuffle(x, 2))


def test_space_to_depth_scale3_matches_loops():
    x = torch.randn(1, 2, 9, 6)
    y = space_to_depth(x, 3)
    assert y.shape == (1, 18, 3, 2)
    assert torch.equal(y, _looped_s2d(x, 3))
    assert torch.equal(_looped_s2d(x[..., :8, :6], 2), _explicit_s2d_2(x[..., :8, :6]))


@pytest.mark.parametrize('scale', [1, 2, 3, 4])
@pytest.mark.parametrize('channels_last', [False, True])
def test_space_to_depth_is_lossless(scale, channels_last):
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = space_to_depth(x, scale)
    assert y.shape == (2, 3 * scale * scale, 12 // scale, 12 // scale)
    assert torch.equal(depth_to_space(y, scale), x)  # lossless: every value kept, in place
    z = torch.randn(1, 2 * scale * scale, 3, 2)
    assert torch.equal(space_to_depth(depth_to_space(z, scale), scale), z)


def test_space_to_depth_errors():
    with pytest.raises(ValueError, match='divisible by scale=2'):
        space_to_depth(torch.randn(1, 2, 5, 4), 2)
    with pytest.raises(ValueError, match='4-D'):
        space_to_depth(torch.randn(2, 4, 4), 2)
    with pytest.raises(ValueError, match='scale'):
        space_to_depth(torch.randn(1, 2, 4, 4), 0)


@pytest.mark.parametrize('scale,k,out', [(2, 3, 12), (2, 1, 5), (3, 3, 8), (2, 5, None)])
def test_module_equals_written_out_conv_bn_silu(scale, k, out):
    torch.manual_seed(0)
    module = SPDConv(4, out_channels=out, scale=scale, kernel_size=k).double().eval()
    randomise(module.conv.bn, seed=5)
    x = torch.randn(2, 4, 6 * scale // 2 * 2, 4 * scale // 2 * 2, dtype=torch.float64)
    conv, bn = module.conv.conv, module.conv.bn
    assert conv.bias is None and conv.stride == (1, 1)
    s2d = _explicit_s2d_2(x) if scale == 2 else _looped_s2d(x, scale)
    y = F.conv2d(s2d, conv.weight, None, 1, k // 2)
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    ref = y * torch.sigmoid(y)  # SiLU
    got = module(x)
    expected_out = out if out is not None else 8  # default out_channels = 2 * in_channels
    assert got.shape == (2, expected_out, x.shape[2] // scale, x.shape[3] // scale)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_no_norm_gives_conv_bias_and_named_activation():
    torch.manual_seed(0)
    module = SPDConv(2, 3, norm_cfg=None, act_cfg='relu').double()
    assert module.conv.conv.bias is not None
    with torch.no_grad():
        module.conv.conv.bias.normal_()
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    ref = F.relu(F.conv2d(_explicit_s2d_2(x), module.conv.conv.weight, module.conv.conv.bias,
                          1, 1))
    torch.testing.assert_close(module(x), ref, rtol=1e-12, atol=1e-12)


def test_odd_map_raises_without_pad_odd():
    module = SPDConv(4, 6)
    with pytest.raises(ValueError, match=r'SPDConv needs H and W divisible by scale=2.*pad_odd'):
        module(torch.randn(1, 4, 7, 6))
    with pytest.raises(ValueError, match='SPDConv'):
        module(torch.randn(1, 4, 6, 5))
    with pytest.raises(ValueError, match='divisible by scale=3'):
        SPDConv(4, 6, scale=3)(torch.randn(1, 4, 6, 8))


@pytest.mark.parametrize('scale,hw', [(2, (7, 5)), (2, (7, 6)), (3, (7, 8)), (2, (1, 1))])
def test_pad_odd_equals_zero_padding_by_hand(scale, hw):
    torch.manual_seed(0)
    module = SPDConv(3, 4, scale=scale, pad_odd=True).double().eval()
    randomise(module.conv.bn, seed=5)
    h, w = hw
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    hp, wp = -(-h // scale) * scale, -(-w // scale) * scale
    padded = torch.zeros(2, 3, hp, wp, dtype=torch.float64)
    padded[..., :h, :w] = x
    y = module(x)
    assert y.shape == (2, 4, hp // scale, wp // scale)
    torch.testing.assert_close(y, module(padded), rtol=0, atol=0)
    # pad_odd changes nothing on a divisible map
    even = torch.randn(1, 3, 2 * scale, scale, dtype=torch.float64)
    module_no_pad = SPDConv(3, 4, scale=scale).double().eval()
    module_no_pad.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(even), module_no_pad(even), rtol=0, atol=0)


def test_export_with_pad_odd():
    module = SPDConv(4, 6, scale=2, pad_odd=True).eval()
    x = torch.randn(1, 4, 7, 5)
    exported = torch.export.export(module, (x, ))
    torch.testing.assert_close(exported.module()(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(scale=1), ValueError, 'scale must be >= 2'),
    (dict(scale=2.0), TypeError, 'scale must be an int'),
    (dict(kernel_size=2), ValueError, 'kernel_size must be odd'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be >= 1'),
    (dict(out_channels=0), ValueError, 'out_channels must be >= 1'),
    (dict(pad_odd='yes'), TypeError, 'pad_odd must be a bool'),
    (dict(norm_cfg='BN'), TypeError, 'norm_cfg must be a dict'),
    (dict(act_cfg='nope'), ValueError, 'unknown activation'),
])
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SPDConv(4, **kwargs)
    with pytest.raises(ValueError, match='SPDConv: in_channels must be >= 1'):
        SPDConv(0)


def test_defaults_registry_plugin_and_init_cfg():
    module = build_attention('spd', 8)
    assert isinstance(module, SPDConv) and module.out_channels == 16
    assert module.conv.conv.kernel_size == (3, 3) and module.conv.conv.stride == (1, 1)
    assert type(module.conv.bn).__name__ == 'BatchNorm2d'
    assert isinstance(module.conv.activate, torch.nn.SiLU)
    assert module.conv.conv.in_channels == 32
    assert MODELS.get('SPDConv') is SPDConv
    name, layer = build_plugin_layer(dict(type='SPDConv', out_channels=4), postfix=1,
                                     in_channels=2)
    assert name == 'spd1' and isinstance(layer, SPDConv)
    const = SPDConv(2, 3, init_cfg=dict(type='Constant', val=0.5, layer='Conv2d'))
    assert torch.all(const.conv.conv.weight == 0.5)


def test_forward_backward_and_autocast():
    module = SPDConv(4, 6).train()
    x = torch.randn(2, 4, 6, 4, requires_grad=True)
    module(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = module.eval()(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
