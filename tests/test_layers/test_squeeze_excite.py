"""SqueezeExcitation: equality with the written-out formula, closed forms, errors."""
import pytest
import torch

from _guards import randomise as _randomise

from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import SqueezeExcitation, build_attention


def _reference(x, w1, b1, w2, b2):
    """s = sigmoid(W2 relu(W1 avg(x) + b1) + b2); out = x * s, written from the paper."""
    n, c, h, w = x.shape
    z = x.sum(dim=(2, 3)) / (h * w)                          # squeeze: (N, C)
    hidden = torch.einsum('kc,nc->nk', w1, z) + b1           # fc1
    hidden = torch.where(hidden > 0, hidden, torch.zeros_like(hidden))  # ReLU
    s = torch.einsum('ck,nk->nc', w2, hidden) + b2           # fc2
    s = 1.0 / (1.0 + torch.exp(-s))                          # sigmoid
    return x * s[:, :, None, None]                           # excite


@pytest.mark.parametrize('c,rd_ratio,hw', [(32, 1 / 16, (5, 7)), (24, 1 / 4, (3, 1)),
                                           (16, 0.4, (1, 1))])
def test_matches_written_out_formula_float64(c, rd_ratio, hw):
    module = _randomise(SqueezeExcitation(c, rd_ratio=rd_ratio)).double().eval()
    x = torch.randn(2, c, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _reference(x, module.fc1.weight[:, :, 0, 0], module.fc1.bias,
                          module.fc2.weight[:, :, 0, 0], module.fc2.bias)
    assert module.fc1.out_channels == int(c * rd_ratio)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_zero_weights_scale_by_exactly_one_half():
    module = SqueezeExcitation(32)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    x = torch.randn(2, 32, 5, 7)
    assert torch.equal(module(x), x * 0.5)


def test_init_cfg_replaces_default_init():
    module = SqueezeExcitation(32, init_cfg=dict(type='Constant', layer='Conv2d', val=0))
    assert module.fc1.weight.abs().sum() == 0 and module.fc2.weight.abs().sum() == 0
    x = torch.randn(1, 32, 3, 3)
    assert torch.equal(module(x), x * 0.5)


def test_hidden_width_and_divisor():
    assert SqueezeExcitation(64).fc1.out_channels == 4                       # int(64 / 16)
    assert SqueezeExcitation(64, channels_divisor=8).fc1.out_channels == 8   # rounded up to 8
    assert SqueezeExcitation(96, rd_ratio=1 / 4, channels_divisor=8).fc1.out_channels == 24
    # the rounding rule: 190 / 16 = 11.875 -> nearest multiple 8 is > 10% low -> 16
    assert SqueezeExcitation(190, channels_divisor=8).fc1.out_channels == 16
    assert SqueezeExcitation(96, rd_ratio=1 / 12).fc1.out_channels == 8  # 96 * (1/12) floored


def test_gate_and_activation_configurable():
    module = _randomise(SqueezeExcitation(16, rd_ratio=1 / 4, act_cfg='gelu',
                                          gate_cfg=dict(type='HSigmoid'))).double()
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    z = x.mean(dim=(2, 3))
    hidden = torch.nn.functional.gelu(z @ module.fc1.weight[:, :, 0, 0].T + module.fc1.bias)
    s = hidden @ module.fc2.weight[:, :, 0, 0].T + module.fc2.bias
    s = ((s + 3).clamp(0, 6) / 6)[:, :, None, None]   # mmcv HSigmoid: relu6(x + 3) / 6
    torch.testing.assert_close(module(x), x * s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kwargs,exc,words', [
    (dict(in_channels=8), ValueError, ['in_channels', 'rd_ratio']),     # 8 / 16 -> 0 channels
    (dict(in_channels=32, rd_ratio=0), ValueError, ['rd_ratio']),
    (dict(in_channels=32, rd_ratio='4'), TypeError, ['rd_ratio']),
    (dict(in_channels=32, rd_ratio=16), ValueError, ['rd_ratio', 'did you mean 1/16']),
    (dict(in_channels=32, rd_ratio=0.25, ratio=4), TypeError, ['rd_ratio', 'ratio=4']),
    (dict(in_channels=0), ValueError, ['in_channels']),
    (dict(in_channels=32.0), TypeError, ['in_channels']),
    (dict(in_channels=32, channels_divisor=0), ValueError, ['channels_divisor']),
    (dict(in_channels=32, act_cfg='nope'), ValueError, ['act_cfg']),
    (dict(in_channels=32, gate_cfg=dict(type='Nope')), ValueError, ['gate_cfg']),
])
def test_bad_arguments_name_the_argument(kwargs, exc, words):
    with pytest.raises(exc) as info:
        SqueezeExcitation(**kwargs)
    for word in ['SqueezeExcitation'] + words:
        assert word in str(info.value)


def test_wrong_input_names_the_class():
    module = SqueezeExcitation(32)
    with pytest.raises(ValueError, match='SqueezeExcitation.*in_channels=32'):
        module(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match='SqueezeExcitation.*4-D'):
        module(torch.randn(32, 4, 4))


def test_short_name_and_mmcv_plugin():
    assert type(build_attention('se', 32)) is SqueezeExcitation
    name, layer = build_plugin_layer(dict(type='SqueezeExcitation'), postfix=1, in_channels=32)
    assert name == 'se1' and isinstance(layer, SqueezeExcitation)
