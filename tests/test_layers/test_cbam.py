"""CBAM: equality with the written-out channel and spatial gates, closed forms,
the released initialisation, errors."""
import pytest
import torch
import torch.nn.functional as F

from _guards import randomise as _randomise

from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import CBAM, build_attention
from mmattn.models.layers.helpers import channel_max, global_max


def _sigmoid(t):
    return 1.0 / (1.0 + torch.exp(-t))


def _reference(x, w1, b1, w2, b2, conv_w=None, bn=None):
    """The paper's equations: channel gate from a shared MLP on the avg- and max-pooled
    vectors, then a spatial gate from conv([max over C, mean over C]) and BatchNorm (eval)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    avg = flat.sum(-1) / (h * w)
    mx = flat.max(-1).values

    def mlp(v):
        hidden = torch.einsum('kc,nc->nk', w1, v) + b1
        hidden = torch.where(hidden > 0, hidden, torch.zeros_like(hidden))
        return torch.einsum('ck,nk->nc', w2, hidden) + b2

    x1 = x * _sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    if conv_w is None:
        return x1
    maps = torch.stack([x1.max(dim=1).values, x1.sum(dim=1) / c], dim=1)   # [max, mean]
    z = F.conv2d(maps, conv_w, padding=conv_w.shape[-1] // 2)
    mean, var, gamma, beta, eps = bn
    z = (z - mean) / torch.sqrt(var + eps) * gamma + beta
    return x1 * _sigmoid(z)


def _weights(module):
    args = [module.fc1.weight[:, :, 0, 0], module.fc1.bias,
            module.fc2.weight[:, :, 0, 0], module.fc2.bias]
    if module.no_spatial:
        return args
    bn = module.spatial_norm
    return args + [module.spatial_conv.weight,
                   (bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)]


@pytest.mark.parametrize('kwargs,hw', [(dict(), (9, 11)), (dict(rd_ratio=1 / 8, kernel_size=3), (4, 5)),
                                       (dict(no_spatial=True), (5, 3)), (dict(), (1, 1))])
def test_matches_written_out_formula_float64(kwargs, hw):
    module = _randomise(CBAM(32, **kwargs)).double().eval()
    x = torch.randn(2, 32, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _reference(x, *_weights(module))
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_zero_weights_give_two_gates_of_one_half():
    module = CBAM(32).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.spatial_norm.weight.fill_(1.0)    # identity BN: mean 0, var 1, beta 0
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(module(x), x * 0.5 * 0.5)


def test_spatial_pool_order_is_max_then_mean():
    # channel gate fixed at 0.5 (zero MLP); the spatial conv reads only input map 0 at its
    # centre tap, so the spatial gate is sigmoid(max over channels / sqrt(1 + eps))
    module = CBAM(32).double().eval()
    with torch.no_grad():
        for p in (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias):
            p.zero_()
        module.spatial_conv.weight.zero_()
        module.spatial_conv.weight[0, 0, 3, 3] = 1.0
        module.spatial_norm.weight.fill_(1.0)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    x1 = 0.5 * x
    gate = torch.sigmoid(x1.amax(dim=1, keepdim=True) / (1 + module.spatial_norm.eps) ** 0.5)
    torch.testing.assert_close(module(x), x1 * gate, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('train', [False, True])
def test_released_init_starts_the_spatial_gate_at_one_half(train):
    module = CBAM(32)
    assert module.spatial_norm.weight.abs().sum() == 0           # zeroed as released
    assert module.fc1.bias.abs().sum() == 0 and module.fc2.bias.abs().sum() == 0
    assert module.spatial_norm.momentum == 0.01 and module.spatial_norm.eps == 1e-5
    fan_out_std = (2 / 49) ** 0.5                                # Kaiming normal, fan_out
    assert 0.5 * fan_out_std < module.spatial_conv.weight.std() < 1.5 * fan_out_std
    channel_only = CBAM(32, no_spatial=True)
    channel_only.load_state_dict(module.state_dict(), strict=False)
    module.train(train)
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(module(x), channel_only(x) * 0.5, rtol=0, atol=0)


@pytest.mark.parametrize('train', [False, True])
def test_gradcheck_float64(train):
    module = _randomise(CBAM(16, rd_ratio=1 / 4, kernel_size=3)).double().train(train)
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3)).requires_grad_()
    assert torch.autograd.gradcheck(module, (x, ), eps=1e-6, atol=1e-6)


def test_max_pools_on_ties():
    """Both pools give amax's values; in training both are max with indices (as released),
    which gives the gradient of a tied maximum to one of the tied entries (the same total)."""
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, :, 0, 0] = 1.0                      # a tie over the three channels at (0, 0)
    x[0, 0, 1, 1] = 2.0
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = 3.0      # a tie over two positions of channel 1
    x.requires_grad_()
    got = channel_max(x)
    assert torch.equal(got, x.amax(dim=1, keepdim=True))
    grad, = torch.autograd.grad(got.sum(), x)
    assert grad.sum(dim=1).eq(1).all()  # one unit per position, on one channel each
    assert sorted(grad[0, :, 0, 0].tolist()) == [0, 0, 1]
    got = global_max(x)
    assert torch.equal(got, x.amax(dim=(2, 3), keepdim=True))
    grad, = torch.autograd.grad(got.sum(), x)
    assert grad[0, 1].sum() == 1 and sorted(grad[0, 1].flatten().tolist()) == [0, 0, 0, 1]
    with torch.no_grad():  # no gradient needed: plain amax
        assert torch.equal(global_max(x), x.amax(dim=(2, 3), keepdim=True))
        assert torch.equal(channel_max(x), x.amax(dim=1, keepdim=True))


def test_batchnorm_train_with_one_value_raises_as_torch_does():
    module = CBAM(32).train()
    x = torch.randn(1, 32, 1, 1)
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        module(x)
    assert module.eval()(x).shape == x.shape


@pytest.mark.parametrize('kwargs,exc,words', [
    (dict(in_channels=8), ValueError, ['in_channels', 'rd_ratio']),
    (dict(in_channels=32, rd_ratio=-1), ValueError, ['rd_ratio']),
    (dict(in_channels=32, kernel_size=6), ValueError, ['kernel_size']),
    (dict(in_channels=32, kernel_size=0), ValueError, ['kernel_size']),
    (dict(in_channels=32, no_spatial='yes'), TypeError, ['no_spatial']),
    (dict(in_channels=32, norm_cfg='BN'), TypeError, ['norm_cfg']),
    (dict(in_channels=32, norm_cfg=dict(type='Nope')), ValueError, ['norm_cfg']),
    (dict(in_channels=32, act_cfg='nope'), ValueError, ['act_cfg']),
    (dict(in_channels=None), TypeError, ['in_channels']),
])
def test_bad_arguments_name_the_argument(kwargs, exc, words):
    with pytest.raises(exc) as info:
        CBAM(**kwargs)
    for word in ['CBAM'] + words:
        assert word in str(info.value)


def test_wrong_input_names_the_class():
    module = CBAM(32)
    with pytest.raises(ValueError, match='CBAM.*in_channels=32'):
        module(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match='CBAM.*4-D'):
        module(torch.randn(1, 1, 32, 4, 4))


def test_short_name_and_mmcv_plugin():
    assert type(build_attention('cbam', 32)) is CBAM
    name, layer = build_plugin_layer(dict(type='CBAM', no_spatial=True), postfix=3,
                                     in_channels=32)
    assert name == 'cbam3' and isinstance(layer, CBAM) and not hasattr(layer, 'spatial_conv')
