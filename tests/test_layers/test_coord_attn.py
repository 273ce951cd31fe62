"""CoordinateAttention: equality with the written-out directional gates, closed forms,
gradcheck, the released initialisation, errors."""
import pytest
import torch

from _guards import randomise as _randomise

from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import CoordinateAttention, build_attention


def _sigmoid(t):
    return 1.0 / (1.0 + torch.exp(-t))


def _reference(x, module):
    """Written from the paper: directional means, a shared 1x1 encoding with BN (eval) and
    h-swish at every one of the H + W positions, one sigmoid gate per direction."""
    n, c, h, w = x.shape
    w1, b1 = module.conv1.weight[:, :, 0, 0], module.conv1.bias
    wh, bh = module.conv_h.weight[:, :, 0, 0], module.conv_h.bias
    ww, bw = module.conv_w.weight[:, :, 0, 0], module.conv_w.bias
    bn = module.norm

    def encode(v):                                     # v: (N, C, L) -> (N, mip, L)
        z = torch.einsum('mc,ncl->nml', w1, v) + b1[:, None]
        z = ((z - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
             * bn.weight[:, None] + bn.bias[:, None])
        return z * torch.clamp(z + 3, 0, 6) / 6       # h-swish

    pool_h = x.sum(dim=3) / w                          # (N, C, H): mean over W
    pool_w = x.sum(dim=2) / h                          # (N, C, W): mean over H
    a_h = _sigmoid(torch.einsum('cm,nmi->nci', wh, encode(pool_h)) + bh[:, None])
    a_w = _sigmoid(torch.einsum('cm,nmj->ncj', ww, encode(pool_w)) + bw[:, None])
    return torch.einsum('ncij,nci,ncj->ncij', x, a_h, a_w)


@pytest.mark.parametrize('c,kwargs,hw', [(16, dict(), (5, 7)), (64, dict(rd_ratio=1 / 4), (6, 3)),
                                         (16, dict(min_mip=2, rd_ratio=1 / 4), (1, 1)),
                                         (8, dict(), (1, 9))])
def test_matches_written_out_formula_float64(c, kwargs, hw):
    module = _randomise(CoordinateAttention(c, **kwargs)).double().eval()
    x = torch.randn(2, c, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(module(x), _reference(x, module), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('c,kwargs,mip', [(16, dict(), 8), (512, dict(), 16),
                                          (256, dict(rd_ratio=1 / 16), 16),
                                          (64, dict(min_mip=1), 2)])
def test_encoding_width(c, kwargs, mip):
    module = CoordinateAttention(c, **kwargs)
    assert module.mip == mip == module.conv1.out_channels == module.conv_h.in_channels


def test_zero_output_convs_give_gates_of_one_half():
    module = _randomise(CoordinateAttention(16)).eval()
    with torch.no_grad():
        for conv in (module.conv_h, module.conv_w):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(module(x), x * 0.5 * 0.5)


def test_gate_factorises_over_rows_and_columns():
    # with conv_w silenced, the gate out / x can vary along H only, and vice versa
    module = _randomise(CoordinateAttention(16)).double().eval()
    x = torch.rand(2, 16, 5, 7, dtype=torch.float64) + 1.0
    with torch.no_grad():
        module.conv_w.weight.zero_()
        module.conv_w.bias.zero_()
    ratio = module(x) / x
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('train', [False, True])
def test_gradcheck_float64(train):
    module = _randomise(CoordinateAttention(4, min_mip=2, rd_ratio=1 / 2)).double().train(train)
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3)).requires_grad_()
    assert torch.autograd.gradcheck(module, (x, ), eps=1e-6, atol=1e-6)


def test_released_init():
    module = CoordinateAttention(64)
    for conv in (module.conv1, module.conv_h, module.conv_w):
        assert conv.bias is not None and conv.bias.abs().sum() == 0
    std = (2 / module.conv_h.out_channels) ** 0.5      # N(0, 2 / (k*k*out)), k = 1
    assert 0.7 * std < module.conv_h.weight.std() < 1.3 * std
    assert torch.equal(module.norm.weight, torch.ones(8))
    assert type(module.act).__name__ in ('Hardswish', 'HSwish')


def test_batchnorm_trains_on_one_sample_of_one_pixel():
    # the norm sees H + W = 2 positions per sample, so even N=1, 1x1 works in train mode
    module = CoordinateAttention(16).train()
    x = torch.randn(1, 16, 1, 1)
    assert torch.isfinite(module(x)).all()


@pytest.mark.parametrize('kwargs,exc,word', [
    (dict(in_channels=16, rd_ratio=0), ValueError, 'rd_ratio'),
    (dict(in_channels=16, rd_ratio='1/32'), TypeError, 'rd_ratio'),
    (dict(in_channels=16, reduction=0), ValueError, 'reduction'),
    (dict(in_channels=16, min_mip=0), ValueError, 'min_mip'),
    (dict(in_channels=16, norm_cfg='BN'), TypeError, 'norm_cfg'),
    (dict(in_channels=16, norm_cfg=dict(type='Nope')), ValueError, 'norm_cfg'),
    (dict(in_channels=16, act_cfg='nope'), ValueError, 'act_cfg'),
    (dict(in_channels=0), ValueError, 'in_channels'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    with pytest.raises(exc, match=f'CoordinateAttention: {word}'):
        CoordinateAttention(**kwargs)


def test_wrong_input_names_the_class():
    module = CoordinateAttention(16)
    with pytest.raises(ValueError, match='CoordinateAttention.*in_channels=16'):
        module(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match='CoordinateAttention.*4-D'):
        module(torch.randn(16, 4, 4))


def test_short_name_and_mmcv_plugin():
    assert type(build_attention('coord', 16)) is CoordinateAttention
    name, layer = build_plugin_layer(dict(type='CoordinateAttention'), postfix=1,
                                     in_channels=16)
    assert name == 'coord1' and isinstance(layer, CoordinateAttention)
