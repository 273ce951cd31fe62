"""DANet PAM / CAM / dual: equal to the explicit released formulation, identity at
init, PAM never allocates the (HW x HW) matrix, CAM robust in half precision, argument checks."""
import pytest
import torch

from _guards import NoLargeTensors
from _torch_support import requires_cpu_float16

import mmattn.models.layers.softmax_attention as softmax_attention_module
from mmattn.models.layers import (DANetChannelAttention, DANetDualAttention,
                                  DANetPositionAttention, build_attention)
from mmattn.testing import randomise as randomise_weights
from mmattn.testing.plain import plain_danet_cam_term as reference_cam_term
from mmattn.testing.plain import plain_danet_pam_term as reference_pam_term


def randomise(m, seed=0):
    """Random values for every parameter, the zero-initialised gammas included."""
    randomise_weights(m, seed, scale=0.3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith('gamma'):
                p.fill_(0.7 if 'cam' not in name else -0.4)
    return m.eval()


def test_defaults_and_names():
    pam = build_attention('danet_pam', 64)
    assert type(pam) is DANetPositionAttention and pam.rd_ratio == 1 / 8
    assert pam.query_conv.out_channels == pam.key_conv.out_channels == 8
    assert pam.value_conv.out_channels == 64 and pam.query_conv.bias is not None
    # the release's parameter names, so its PAM_Module / CAM_Module weights load
    assert set(pam.state_dict()) == {
        f'{conv}.{p}' for conv in ('query_conv', 'key_conv', 'value_conv')
        for p in ('weight', 'bias')} | {'gamma'}
    assert set(build_attention('danet_cam', 64).state_dict()) == {'gamma'}
    dual = build_attention('danet', 64)
    assert type(dual) is DANetDualAttention and dual.pam.rd_ratio == 1 / 8


@pytest.mark.parametrize('hw', [(5, 7), (1, 1), (12, 3)])
@pytest.mark.parametrize('rd_ratio', [1 / 8, 1 / 2])
def test_pam_matches_explicit_float64(hw, rd_ratio):
    m = randomise(DANetPositionAttention(16, rd_ratio=rd_ratio).double())
    x = torch.randn(2, 16, *hw, dtype=torch.float64)
    expected = m.gamma * reference_pam_term(m, x) + x
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(m(x_cl), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('hw', [(5, 7), (1, 1), (12, 3)])
def test_cam_matches_explicit_float64(hw):
    m = randomise(DANetChannelAttention(8).double())
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    expected = m.gamma * reference_cam_term(x) + x
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_dual_is_sum_of_branches_with_input_once_float64():
    m = randomise(DANetDualAttention(16).double())
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    expected = (x + m.pam.gamma * reference_pam_term(m.pam, x) +
                m.cam.gamma * reference_cam_term(x))
    y = m(x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, m.pam(x) + m.cam(x) - x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('cls', [DANetPositionAttention, DANetChannelAttention,
                                 DANetDualAttention])
def test_identity_at_init(cls):
    m = cls(16)
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(m(x), x)
    randomise(m)
    assert not torch.allclose(m(x), x)
    m.init_weights()
    assert torch.equal(m(x), x)


def test_init_cfg_replaces_default_init():
    m = DANetPositionAttention(16, init_cfg=dict(type='Constant', val=0.5, layer='Conv2d'))
    assert (m.query_conv.weight == 0.5).all() and (m.value_conv.weight == 0.5).all()
    assert m.gamma.item() == 0


@pytest.mark.parametrize('cls', [DANetPositionAttention, DANetDualAttention])
def test_pam_never_allocates_affinity_matrix(cls, monkeypatch):
    """At 40x40 the (HW x HW) matrix has 2.56M elements; every other tensor of the module
    (forward and backward, CAM's 16 x 16 included) has <= 16 * 1600.
    The CPU's blockwise path gets a 4096-element block budget (16 query rows per block), so
    that a 40x40 map is split as a large one is by the default budget."""
    monkeypatch.setattr(softmax_attention_module, 'BLOCK_ELEMENTS', 4096)
    h = w = 40
    m = randomise(cls(16)).train()
    x = torch.randn(1, 16, h, w, requires_grad=True)
    with NoLargeTensors(h * w * h * w) as guard:
        m(x).sum().backward()
    assert any('backward' in op for op in guard.ops)  # the backward pass was watched too
    assert torch.isfinite(x.grad).all()
    # the guard does catch the explicit formulation
    pam = m if cls is DANetPositionAttention else m.pam
    with pytest.raises(AssertionError, match='returned a tensor of shape'):
        with NoLargeTensors(h * w * h * w), torch.no_grad():
            reference_pam_term(pam, x)


# C <= HW: the attention output is P V, transposed; C > HW: V^T P^T straight away
@pytest.mark.parametrize('c,hw', [(8, (3, 4)), (16, (2, 3))])
def test_gradcheck_pam_float64(c, hw):
    m = randomise(DANetPositionAttention(c, rd_ratio=1 / 4).double())
    x = torch.randn(1, c, *hw, dtype=torch.float64, requires_grad=True)
    gamma = m.gamma.detach().clone().requires_grad_()
    params = dict(m.named_parameters())

    def fn(x, gamma):
        return torch.func.functional_call(m, {**params, 'gamma': gamma}, (x, ))

    assert torch.autograd.gradcheck(fn, (x, gamma))


def test_gradcheck_cam_float64():
    m = randomise(DANetChannelAttention(4).double())
    x = (0.5 * torch.randn(1, 4, 3, 4, dtype=torch.float64)).requires_grad_()
    gamma = m.gamma.detach().clone().requires_grad_()

    def fn(x, gamma):
        return torch.func.functional_call(m, {'gamma': gamma}, (x, ))

    assert torch.autograd.gradcheck(fn, (x, gamma))


@requires_cpu_float16
def test_cam_half_precision_energy_does_not_overflow():
    # every entry of E sums HW = 1024 products ~100: ~1e5, beyond float16's 65504 (a float16
    # E is all inf and its softmax NaN)
    m = randomise(DANetChannelAttention(8))
    x = 10 + 2 * torch.randn(1, 8, 32, 32)
    ref = m(x)
    y = m.half()(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 0.02 * ref.abs().max()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m.float()(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize('cls, kwargs, exc, name', [
    (DANetPositionAttention, dict(in_channels=0), ValueError, 'in_channels'),
    (DANetPositionAttention, dict(in_channels='16'), TypeError, 'in_channels'),
    (DANetPositionAttention, dict(rd_ratio=0), ValueError, 'rd_ratio'),
    (DANetPositionAttention, dict(rd_ratio='1/8'), TypeError, 'rd_ratio'),
    (DANetPositionAttention, dict(in_channels=4), ValueError, 'in_channels=4.*rd_ratio'),
    (DANetChannelAttention, dict(in_channels=0), ValueError, 'in_channels'),
    (DANetChannelAttention, dict(in_channels=None), TypeError, 'in_channels'),
    (DANetDualAttention, dict(in_channels=-1), ValueError, 'in_channels'),
    (DANetDualAttention, dict(rd_ratio=True), TypeError, 'DANetDualAttention: rd_ratio'),
    (DANetDualAttention, dict(in_channels=4), ValueError, 'DANetDualAttention.*in_channels=4'),
])
def test_bad_arguments_name_the_argument(cls, kwargs, exc, name):
    kwargs = {'in_channels': 16, **kwargs}
    with pytest.raises(exc, match=name):
        cls(**kwargs)


@pytest.mark.parametrize('cls', [DANetPositionAttention, DANetChannelAttention,
                                 DANetDualAttention])
def test_bad_input_names_the_class(cls):
    m = cls(16)
    with pytest.raises(ValueError, match=f'{cls.__name__}.*in_channels=16'):
        m(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match=f'{cls.__name__}.*4-D'):
        m(torch.randn(16, 25))
