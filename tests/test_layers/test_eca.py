"""EfficientChannelAttention: adaptive kernel, equality with a written-out channel
convolution, closed forms with hand-set kernels, errors."""
import math

import pytest
import torch
from mmcv.cnn import build_plugin_layer

from mmattn.models.layers import EfficientChannelAttention, build_attention


def _sigmoid(t):
    return 1.0 / (1.0 + torch.exp(-t))


def _reference(x, kernel):
    """y_c = sum_j kernel[j] * avg_{c + j - p} (zero outside 0..C-1, p = (k - 1) / 2);
    out = x * sigmoid(y), one loop per tap so the indexing is explicit."""
    n, c, h, w = x.shape
    k = kernel.numel()
    p = (k - 1) // 2
    avg = x.sum(dim=(2, 3)) / (h * w)                     # (N, C)
    y = torch.zeros_like(avg)
    for ch in range(c):
        for j in range(k):
            src = ch + j - p
            if 0 <= src < c:
                y[:, ch] += kernel[j] * avg[:, src]
    return x * _sigmoid(y)[:, :, None, None]


@pytest.mark.parametrize('c,k', [(64, 3), (128, 5), (256, 5), (512, 5), (16, 3), (2, 1), (1, 1)])
def test_adaptive_kernel_size(c, k):
    # the paper's rule, written out: t = int(|(log2 C + b) / gamma|), odd t kept, even t + 1
    t = int(abs((math.log2(c) + 1) / 2))
    assert (t if t % 2 else t + 1) == k
    module = EfficientChannelAttention(c)
    assert module.kernel_size == k
    assert module.conv.kernel_size == (k, ) and module.conv.padding == ((k - 1) // 2, )
    assert module.conv.bias is None


def test_adaptive_kernel_follows_gamma_and_b():
    # C=64, gamma=1, b=1: t = 7 -> 7; gamma=2, b=3: t = 4 -> 5
    assert EfficientChannelAttention(64, gamma=1, b=1).kernel_size == 7
    assert EfficientChannelAttention(64, gamma=2, b=3).kernel_size == 5
    assert EfficientChannelAttention(64, kernel_size=9).kernel_size == 9


@pytest.mark.parametrize('c,kernel_size,hw', [(16, None, (5, 7)), (16, 5, (3, 1)),
                                              (8, 7, (1, 1)), (64, None, (2, 3))])
def test_matches_written_out_formula_float64(c, kernel_size, hw):
    module = EfficientChannelAttention(c, kernel_size=kernel_size).double().eval()
    with torch.no_grad():
        module.conv.weight.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, c, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = _reference(x, module.conv.weight.reshape(-1))
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_unit_impulse_kernel_gates_each_channel_by_its_own_mean():
    module = EfficientChannelAttention(64).double()        # k = 3
    with torch.no_grad():
        module.conv.weight.zero_()
        module.conv.weight[0, 0, 1] = 1.0                  # centre tap
    x = torch.randn(2, 64, 5, 7, dtype=torch.float64)
    expected = x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_shifted_impulse_reads_the_next_channel_and_zero_pads():
    # a tap right of centre is cross-correlation with channel c + 1; the last channel sees the
    # zero padding, so its gate is exactly sigmoid(0) = 0.5
    module = EfficientChannelAttention(16, kernel_size=3).double()
    with torch.no_grad():
        module.conv.weight.zero_()
        module.conv.weight[0, 0, 2] = 1.0
    x = torch.randn(2, 16, 4, 3, dtype=torch.float64)
    avg = x.mean(dim=(2, 3))
    gate = torch.cat([torch.sigmoid(avg[:, 1:]), torch.full_like(avg[:, :1], 0.5)], dim=1)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs,exc,word', [
    (dict(in_channels=16, kernel_size=4), ValueError, 'kernel_size'),
    (dict(in_channels=16, kernel_size=0), ValueError, 'kernel_size'),
    (dict(in_channels=16, kernel_size=3.0), TypeError, 'kernel_size'),
    (dict(in_channels=16, gamma=0), ValueError, 'gamma'),
    (dict(in_channels=16, gamma='2'), TypeError, 'gamma'),
    (dict(in_channels=16, b='1'), TypeError, 'b'),
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(in_channels='16'), TypeError, 'in_channels'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, word):
    with pytest.raises(exc, match=f'EfficientChannelAttention: {word} '):
        EfficientChannelAttention(**kwargs)


def test_wrong_input_names_the_class():
    module = EfficientChannelAttention(16)
    with pytest.raises(ValueError, match='EfficientChannelAttention.*in_channels=16'):
        module(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match='EfficientChannelAttention.*4-D'):
        module(torch.randn(1, 16, 4))


def test_short_name_and_mmcv_plugin():
    assert type(build_attention('eca', 16)) is EfficientChannelAttention
    name, layer = build_plugin_layer(dict(type='EfficientChannelAttention'), postfix=2,
                                     in_channels=16)
    assert name == 'eca2' and isinstance(layer, EfficientChannelAttention)
