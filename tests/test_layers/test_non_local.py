"""FusedNonLocal2d: equal to the explicit (HW x HW) formulation and to mmcv's
NonLocal2d, identity at init, never allocates the affinity matrix, argument checks."""

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import NonLocal2d

from _guards import NoLargeTensors

import mmattn.models.layers.softmax_attention as softmax_attention_module
from mmattn.models.layers import FusedNonLocal2d, build_attention
from mmattn.testing import randomise as randomise_weights
from mmattn.testing.plain import plain_non_local as reference_non_local

MODES = ['embedded_gaussian', 'gaussian', 'dot_product']


def randomise(m, seed=0):
    """Every parameter and BN statistic random (the zero-initialised norm scale included), so
    the checks exercise the whole block; eval mode."""
    return randomise_weights(m, seed, scale=0.3).eval()




def test_paper_defaults():
    m = FusedNonLocal2d(16)
    assert (m.reduction, m.use_scale, m.sub_sample, m.mode) == (2, False, False,
                                                                 'embedded_gaussian')
    assert m.inter_channels == 8 and isinstance(m.conv_out.norm, nn.BatchNorm2d)
    assert type(build_attention('nonlocal', 16)) is FusedNonLocal2d


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('use_scale', [False, True])
def test_matches_explicit_formulation_and_mmcv_float64(mode, sub_sample, use_scale):
    m = randomise(FusedNonLocal2d(16, use_scale=use_scale, sub_sample=sub_sample,
                                  mode=mode).double())
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, reference_non_local(m, x), rtol=1e-10, atol=1e-10)
    # mmcv's NonLocal2d with the same weights (same state dict layout) gives the same output
    ref = NonLocal2d(16, use_scale=use_scale, sub_sample=sub_sample, mode=mode,
                     norm_cfg=dict(type='BN')).double().eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(y, ref(x), rtol=1e-10, atol=1e-10)


def test_matches_mmcv_defaults_without_norm():
    m = randomise(FusedNonLocal2d(8, use_scale=True, norm_cfg=None).double())
    ref = NonLocal2d(8).double().eval()  # mmcv's defaults: use_scale=True, no norm
    ref.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(1, 8, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x), reference_non_local(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'), None])
@pytest.mark.parametrize('sub_sample', [False, True])
def test_identity_at_init(norm_cfg, sub_sample):
    m = FusedNonLocal2d(16, norm_cfg=norm_cfg, sub_sample=sub_sample)
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(m.train()(x), x)
    assert torch.equal(m.eval()(x), x)
    # ...and init_weights() restores it after training changed the weights (mmcv's own
    # init_weights raises AttributeError here when sub_sample=True)
    randomise(m)
    assert not torch.allclose(m(x), x)
    m.init_weights()
    assert torch.equal(m(x), x)


def test_zeros_init_false_and_std():
    m = FusedNonLocal2d(16, zeros_init=False, std=0.05)
    assert m.conv_out.norm.weight.abs().sum() > 0
    assert 0.02 < m.theta.conv.weight.std() < 0.1


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('sub_sample', [False, True])
def test_never_allocates_affinity_matrix(mode, sub_sample, monkeypatch):
    """At 40x40 the (HW x N_k) matrix has >= 640k elements; every other tensor of the block
    (forward and backward) has <= 16 * 1600. Any op returning the matrix fails the test.
    The CPU's blockwise path gets a 4096-element block budget (16 query rows per block), so
    that a 40x40 map is split as a large one is by the default budget."""
    monkeypatch.setattr(softmax_attention_module, 'BLOCK_ELEMENTS', 4096)
    h = w = 40
    n_k = (h // 2) * (w // 2) if sub_sample else h * w
    m = FusedNonLocal2d(16, sub_sample=sub_sample, mode=mode, zeros_init=False).train()
    x = torch.randn(1, 16, h, w, requires_grad=True)
    with NoLargeTensors(h * w * n_k) as guard:
        m(x).sum().backward()
    assert any('backward' in op for op in guard.ops)  # the backward pass was watched too
    assert torch.isfinite(x.grad).all()
    # the guard does catch the explicit formulation
    with pytest.raises(AssertionError, match='returned a tensor of shape'):
        with NoLargeTensors(h * w * n_k), torch.no_grad():
            reference_non_local(m.eval(), x)


@pytest.mark.parametrize('mode', MODES)
def test_gradcheck_float64(mode):
    m = randomise(FusedNonLocal2d(4, mode=mode, use_scale=True, sub_sample=True).double())
    x = torch.randn(1, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    weight = m.theta.conv.weight if mode != 'gaussian' else m.g[0].conv.weight
    weight = weight.detach().clone().requires_grad_()
    name = 'theta.conv.weight' if mode != 'gaussian' else 'g.0.conv.weight'
    params = dict(m.named_parameters())
    buffers = dict(m.named_buffers())

    def fn(x, weight):
        return torch.func.functional_call(m, {**params, **buffers, name: weight}, (x, ))

    # fast mode: one random directional derivative per input instead of the full Jacobian
    assert torch.autograd.gradcheck(fn, (x, weight), fast_mode=True)


def test_gaussian_mode_under_autocast():
    # query/key are the float32 input, value a bfloat16 conv output: one dtype for SDPA
    m = randomise(FusedNonLocal2d(16, mode='gaussian'))
    x = torch.randn(2, 16, 5, 7)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    assert (y.float() - m(x)).abs().max() < 0.05 * m(x).abs().max()


@pytest.mark.parametrize('kwargs, exc, name', [
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(in_channels=16.0), TypeError, 'in_channels'),
    (dict(rd_ratio=0), ValueError, 'rd_ratio'),
    (dict(rd_ratio=0.4), ValueError, 'rd_ratio must be 1/r for an integer r'),
    (dict(in_channels=4, rd_ratio=1 / 8), ValueError, 'in_channels=4'),
    (dict(mode='concatenation'), ValueError, 'mode'),
    (dict(mode='gauss'), ValueError, 'mode'),
    (dict(use_scale=1), TypeError, 'use_scale'),
    (dict(sub_sample='yes'), TypeError, 'sub_sample'),
    (dict(zeros_init=None), TypeError, 'zeros_init'),
    (dict(norm_cfg='BN'), TypeError, 'norm_cfg'),
    (dict(conv_cfg='Conv2d'), TypeError, 'conv_cfg'),
    (dict(std=0), ValueError, 'std'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    kwargs = {'in_channels': 16, **kwargs}
    with pytest.raises(exc, match=name):
        FusedNonLocal2d(**kwargs)


def test_bad_input_names_the_class():
    m = FusedNonLocal2d(16)
    with pytest.raises(ValueError, match='FusedNonLocal2d.*in_channels=16'):
        m(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match='FusedNonLocal2d.*4-D'):
        m(torch.randn(16, 5, 5))
    with pytest.raises(ValueError, match='FusedNonLocal2d.*at least 2x2'):
        FusedNonLocal2d(16, sub_sample=True)(torch.randn(1, 16, 1, 5))


@pytest.mark.parametrize('hw', [(4, 3), (8, 6)])  # W_z sees V^T P^T directly / P V transposed
def test_output_keeps_the_input_memory_format(hw):
    """The attention result reaches W_z in x's layout (a transposed product viewed as a map
    would be channels_last, where W_z's BN backward is several times slower)."""
    m = randomise(FusedNonLocal2d(16)).train()
    seen = []
    m.conv_out.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.randn(2, 16, *hw, requires_grad=True)
    y = m(x)
    assert seen[0].is_contiguous() and y.is_contiguous()
    y_cl = m(x.detach().contiguous(memory_format=torch.channels_last))
    assert seen[1].is_contiguous(memory_format=torch.channels_last)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
