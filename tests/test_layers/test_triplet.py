"""TripletAttention: equality with the three branches written out by axis (no
permutes), closed forms, gradcheck through the rotations, the released initialisation, errors."""
import pytest
import torch
import torch.nn.functional as F

from _guards import randomise as _randomise

from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import TripletAttention, build_attention


def _gate(max_map, mean_map, branch):
    """sigmoid(BN(conv([max, mean]))) for (N, A, B) maps; BN in eval form."""
    z = F.conv2d(torch.stack([max_map, mean_map], dim=1), branch.conv.weight,
                 padding=branch.conv.weight.shape[-1] // 2)[:, 0]
    bn = branch.norm
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return 1.0 / (1.0 + torch.exp(-z))


def _reference(x, module):
    """Each branch pools over one axis and gates over the other two, in the released layout:
    cw: pool over H, map rows C, columns W; hc: pool over W, map rows H, columns C;
    hw: pool over C, map rows H, columns W. Output: mean of the branches."""
    n, c, h, w = x.shape
    g_cw = _gate(x.max(dim=2).values, x.sum(dim=2) / h, module.cw)                  # (N, C, W)
    g_hc = _gate(x.max(dim=3).values.transpose(1, 2), (x.sum(dim=3) / w).transpose(1, 2),
                 module.hc)                                                         # (N, H, C)
    outs = [x * g_cw[:, :, None, :], x * g_hc.transpose(1, 2)[:, :, :, None]]
    if module.hw is not None:
        g_hw = _gate(x.max(dim=1).values, x.sum(dim=1) / c, module.hw)              # (N, H, W)
        outs.append(x * g_hw[:, None])
    return sum(outs) / len(outs)


@pytest.mark.parametrize('c,kwargs,hw', [(8, dict(), (9, 11)), (8, dict(kernel_size=3), (4, 6)),
                                         (16, dict(no_spatial=True), (5, 7)),
                                         (5, dict(kernel_size=5), (1, 3))])
def test_matches_written_out_formula_float64(c, kwargs, hw):
    module = _randomise(TripletAttention(c, **kwargs)).double().eval()
    x = torch.randn(2, c, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(module(x), _reference(x, module), rtol=1e-10, atol=1e-10)


def _identity_bn_zero_conv(module):
    with torch.no_grad():
        for branch in (module.cw, module.hc, module.hw):
            if branch is not None:
                branch.conv.weight.zero_()
                branch.norm.weight.fill_(1.0)
                branch.norm.bias.zero_()
    return module.eval()   # running mean 0, var 1 as constructed


@pytest.mark.parametrize('no_spatial', [False, True])
def test_zero_convs_give_half_per_branch_and_half_overall(no_spatial):
    module = _identity_bn_zero_conv(TripletAttention(8, no_spatial=no_spatial))
    x = torch.randn(2, 8, 9, 11)
    torch.testing.assert_close(module(x), x * 0.5, rtol=1e-7, atol=0)


def test_released_init_and_constant_spatial_branch():
    module = TripletAttention(8)
    assert torch.equal(module.cw.norm.weight, torch.ones(1))
    assert torch.equal(module.hc.norm.weight, torch.ones(1))
    assert torch.equal(module.hw.norm.weight, torch.zeros(1))   # released 'SpatialGate' rule
    assert module.cw.norm.momentum == 0.01 and module.cw.conv.bias is None
    # the zeroed norm makes the spatial branch exactly x * 0.5, so the full module is
    # (2 * two-branch output + 0.5 x) / 3 with the same rotated-branch weights
    two = TripletAttention(8, no_spatial=True)
    two.load_state_dict(module.state_dict(), strict=False)
    module.eval(), two.eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float32)
    torch.testing.assert_close(module(x), (2 * two(x) + 0.5 * x) / 3, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('train', [False, True])
def test_gradcheck_float64_through_rotations(train):
    module = _randomise(TripletAttention(2, kernel_size=3)).double().train(train)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64,  # C, H, W all distinct
                    generator=torch.Generator().manual_seed(3)).requires_grad_()
    assert torch.autograd.gradcheck(module, (x, ), eps=1e-6, atol=1e-6)


def test_channels_last_and_transposed_views_match():
    module = _randomise(TripletAttention(8)).double().eval()
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    ref = module(x)
    torch.testing.assert_close(module(x.contiguous(memory_format=torch.channels_last)), ref,
                               rtol=1e-12, atol=1e-12)
    # a non-contiguous input (a transposed view) gives the same result as its copy
    xt = torch.randn(2, 8, 5, 7, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(module(xt), module(xt.contiguous()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs,exc,word', [
    (dict(in_channels=8, kernel_size=4), ValueError, 'kernel_size'),
    (dict(in_channels=8, kernel_size=-1), ValueError, 'kernel_size'),
    (dict(in_channels=8, kernel_size='7'), TypeError, 'kernel_size'),
    (dict(in_channels=8, no_spatial=1), TypeError, 'no_spatial'),
    (dict(in_channels=8, norm_cfg=None), TypeError, 'norm_cfg'),
    (dict(in_channels=8, norm_cfg=dict(type='Nope')), ValueError, 'norm_cfg'),
    (dict(in_channels=0), ValueError, 'in_channels'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    with pytest.raises(exc, match=f'TripletAttention: {word}'):
        TripletAttention(**kwargs)


def test_wrong_input_names_the_class():
    module = TripletAttention(8)
    with pytest.raises(ValueError, match='TripletAttention.*in_channels=8'):
        module(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match='TripletAttention.*4-D'):
        module(torch.randn(1, 8, 4))


def test_short_name_and_mmcv_plugin():
    assert type(build_attention('triplet', 8)) is TripletAttention
    name, layer = build_plugin_layer(dict(type='TripletAttention'), postfix=1, in_channels=8)
    assert name == 'triplet1' and isinstance(layer, TripletAttention)
