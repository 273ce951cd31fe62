"""GlobalContextBlock: equal to the explicit formulation and to mmcv's ContextBlock (whose
spatial pooling it replaces), identity at init, paper defaults, argument checks."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ContextBlock

from mmattn.models.layers import GlobalContextBlock, build_attention
from mmattn.testing import randomise as randomise_weights

FUSIONS = [('channel_add', ), ('channel_mul', ), ('channel_add', 'channel_mul')]


def randomise(m, seed=0):
    """Every parameter random (the zero-initialised last convs included), eval mode."""
    return randomise_weights(m, seed, scale=0.3).eval()


def reference_gc(m, x):
    """The GC block written out from the paper: softmax over the HW positions of a 1-channel
    mask, the weighted sum of x, the LayerNorm bottleneck per fusion."""
    n, c, h, w = x.shape
    if m.pooling_type == 'att':
        logits = F.conv2d(x, m.conv_mask.weight, m.conv_mask.bias).reshape(n, h * w)
        weights = torch.softmax(logits, dim=1)  # over the HW positions
        ctx = torch.einsum('nci,ni->nc', x.reshape(n, c, h * w), weights)
    else:
        ctx = x.mean(dim=(2, 3))
    ctx = ctx.reshape(n, c, 1, 1)

    def transform(seq):
        conv1, norm, _, conv2 = seq
        t = F.conv2d(ctx, conv1.weight, conv1.bias)
        t = F.layer_norm(t, [t.shape[1], 1, 1], norm.weight, norm.bias, norm.eps)
        return F.conv2d(torch.relu(t), conv2.weight, conv2.bias)

    out = x
    if 'channel_mul' in m.fusion_types:
        out = out * torch.sigmoid(transform(m.channel_mul_conv))
    if 'channel_add' in m.fusion_types:
        out = out + transform(m.channel_add_conv)
    return out


def test_paper_defaults():
    m = build_attention('gc', 64)
    assert type(m) is GlobalContextBlock and isinstance(m, ContextBlock)
    assert (m.rd_ratio, m.planes, m.pooling_type, m.fusion_types) == (1 / 16, 4, 'att',
                                                                   ('channel_add', ))
    assert m.channel_mul_conv is None


@pytest.mark.parametrize('pooling_type', ['att', 'avg'])
@pytest.mark.parametrize('fusion_types', FUSIONS)
def test_matches_explicit_formulation_and_mmcv_float64(pooling_type, fusion_types):
    m = randomise(GlobalContextBlock(32, rd_ratio=1 / 8, pooling_type=pooling_type,
                                     fusion_types=fusion_types).double())
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, reference_gc(m, x), rtol=1e-10, atol=1e-10)
    ref = ContextBlock(32, 1 / 8, pooling_type, fusion_types).double()
    ref.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(y, ref(x), rtol=1e-10, atol=1e-10)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(m(x_cl), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('pooling_type', ['att', 'avg'])
def test_identity_at_init_and_release_mul_init(pooling_type):
    x = torch.randn(2, 32, 5, 7)
    m = GlobalContextBlock(32, pooling_type=pooling_type)
    assert torch.equal(m(x), x)
    assert (m.channel_add_conv[-1].weight == 0).all() and (m.channel_add_conv[-1].bias == 0).all()
    randomise(m)
    assert not torch.allclose(m(x), x)
    m.init_weights()
    assert torch.equal(m(x), x)
    # as released, the zero last conv of the multiplicative branch gives x * sigmoid(0)
    mul = GlobalContextBlock(32, pooling_type=pooling_type, fusion_types=['channel_mul'])
    assert torch.equal(mul(x), x * 0.5)


def test_init_cfg_replaces_default_init():
    m = GlobalContextBlock(32, init_cfg=dict(type='Constant', val=0.5, layer='Conv2d'))
    assert (m.channel_add_conv[-1].weight == 0.5).all()
    assert (m.conv_mask.weight == 0.5).all()


def test_gradcheck_float64():
    m = randomise(GlobalContextBlock(8, rd_ratio=1 / 4,
                                     fusion_types=('channel_add', 'channel_mul')).double())
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x, ))


@pytest.mark.parametrize('kwargs, exc, name', [
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(in_channels=32.0), TypeError, 'in_channels'),
    (dict(rd_ratio=0), ValueError, 'rd_ratio'),
    (dict(rd_ratio='1/16'), TypeError, 'rd_ratio'),
    (dict(rd_ratio=16), ValueError, 'rd_ratio.*did you mean 1/16'),
    (dict(in_channels=8), ValueError, 'in_channels=8.*rd_ratio=0.0625'),
    (dict(pooling_type='max'), ValueError, 'pooling_type'),
    (dict(fusion_types='channel_add'), TypeError, 'fusion_types'),
    (dict(fusion_types=()), ValueError, 'fusion_types'),
    (dict(fusion_types=('channels_add', )), ValueError, 'fusion_types'),
    (dict(fusion_types=('channel_add', 'channel_add')), ValueError, 'fusion_types'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    kwargs = {'in_channels': 32, **kwargs}
    with pytest.raises(exc, match=name):
        GlobalContextBlock(**kwargs)


def test_bad_input_names_the_class():
    m = GlobalContextBlock(32)
    with pytest.raises(ValueError, match='GlobalContextBlock.*in_channels=32'):
        m(torch.randn(1, 16, 5, 5))
    with pytest.raises(ValueError, match='GlobalContextBlock.*4-D'):
        m(torch.randn(1, 32, 25))
