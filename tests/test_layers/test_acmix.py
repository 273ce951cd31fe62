"""ACmix: numerical proofs against the released formulation, closed forms of both
paths, gradients, the memory claim (no kernel_att^2-fold unfold) and the argument checks."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmattn.models.layers import build_attention
from mmattn.models.layers.acmix import ACmix


# ----------------------------------------------------------------------------- the reference
def released_forward(m, x):
    """The released-code computation, written from its equations: reflection-padded k, v and
    pe unfolded kernel_att^2-fold, logits q_scaled . (k_j + pe_p - pe_j) including the pe_p
    term, softmax over the window; the convolution path written as explicit shifts."""
    n, _, h, w = x.shape
    heads, hd, ka = m.head, m.out_channels // m.head, m.kernel_att
    s, dil, kc = m.stride, m.dilation, m.kernel_conv
    pad = dil * (ka - 1) // 2
    ho, wo = -(-h // s), -(-w // s)

    def conv1x1(conv, t):
        return torch.einsum('oi,nihw->nohw', conv.weight[:, :, 0, 0], t) + \
            conv.bias.view(1, -1, 1, 1)

    q, k, v = conv1x1(m.conv1, x), conv1x1(m.conv2, x), conv1x1(m.conv3, x)
    c = q.shape[1]
    loc_w = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, w).repeat(h, 1)
    loc_h = torch.linspace(-1, 1, h, dtype=x.dtype).view(h, 1).repeat(1, w)
    pe = conv1x1(m.conv_p, torch.stack([loc_w, loc_h])[None])  # (1, hd, h, w)

    q_att = q.reshape(n * heads, hd, h, w)[:, :, ::s, ::s] * hd**-0.5
    q_pe = pe[:, :, ::s, ::s]

    def unfold(t):
        t = F.pad(t, (pad, ) * 4, mode='reflect')
        cols = F.unfold(t, ka, dilation=dil, stride=s)
        return cols.view(t.shape[0], hd, ka * ka, ho, wo)

    unfold_k = unfold(k.reshape(n * heads, hd, h, w))
    unfold_v = unfold(v.reshape(n * heads, hd, h, w))
    unfold_pe = unfold(pe)
    logits = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_pe)).sum(1)
    att = logits.softmax(1)
    out_att = (att.unsqueeze(1) * unfold_v).sum(2).reshape(n, c, ho, wo)

    # convolution path: f[n, i, d] = sum_s fc[i, s] * stacked[n, s, d]; output channel o
    # (group d = o // heads) = bias[o] + sum_{i,a,b} W[o, i, a, b] * f[n, i, d](y*s+a-p, x*s+b-p)
    stacked = torch.cat([t.reshape(n, heads, hd, h, w) for t in (q, k, v)], 1)
    f = torch.einsum('is,nsdhw->nidhw', m.fc.weight[:, :, 0, 0], stacked)
    pc = (kc - 1) // 2
    f = F.pad(f, (pc, pc, pc, pc))
    weight = m.dep_conv.weight
    out_conv = torch.empty(n, c, ho, wo, dtype=x.dtype)
    for o in range(c):
        g = f[:, :, o // heads]  # (n, kc^2, h + 2pc, w + 2pc)
        acc = m.dep_conv.bias[o].expand(n, ho, wo).clone()
        for a in range(kc):
            for b in range(kc):
                window = g[:, :, a:a + (ho - 1) * s + 1:s, b:b + (wo - 1) * s + 1:s]
                acc = acc + torch.einsum('i,nihw->nhw', weight[o, :, a, b], window)
        out_conv[:, o] = acc
    return m.rate1 * out_att + m.rate2 * out_conv


def randomised(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


# in, out, kernel_att, head, kernel_conv, stride, dilation, (h, w)
CONFIGS = [
    (8, None, 3, 2, 3, 1, 1, (5, 6)),
    (16, None, 7, 4, 3, 1, 1, (9, 11)),
    (8, 12, 5, 3, 5, 1, 2, (11, 9)),
    (8, None, 3, 2, 3, 2, 1, (7, 8)),
    (8, None, 5, 4, 1, 3, 1, (10, 7)),
    (8, None, 1, 2, 3, 1, 1, (2, 3)),
    (8, None, 7, 8, 3, 1, 1, (4, 4)),  # the smallest map the default window allows
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: 'in{}-out{}-ka{}-h{}-kc{}-s{}-d{}'.format(
    *c[:7]))
def test_matches_released_formulation_float64(cfg):
    cin, cout, ka, head, kc, s, dil, (h, w) = cfg
    m = randomised(ACmix(cin, cout, ka, head, kc, s, dil).double())
    torch.manual_seed(3)
    x = torch.randn(2, cin, h, w, dtype=torch.float64)
    y = m(x)
    ref = released_forward(m, x)
    assert y.shape == (2, cout or cin, -(-h // s), -(-w // s))
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    # the positional term matters: zeroing conv_p changes the output
    with torch.no_grad():
        m.conv_p.weight.zero_()
    if ka > 1:
        assert not torch.allclose(m(x), y, rtol=1e-6, atol=1e-6)


def test_channels_last_and_batch_one_match_reference():
    m = randomised(ACmix(8, kernel_att=3, head=2, dilation=2)).double()
    x = torch.randn(1, 8, 7, 5, dtype=torch.float64)
    ref = released_forward(m, x)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), ref,
                               rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- closed forms
def test_init_is_the_released_one():
    m = ACmix(16, kernel_conv=5)
    assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5
    kc = 5
    expected = torch.zeros(kc * kc, kc, kc)
    for i in range(kc * kc):
        expected[i, i // kc, i % kc] = 1
    assert m.dep_conv.weight.shape == (16, kc * kc, kc, kc)
    assert torch.equal(m.dep_conv.weight, expected.expand(16, -1, -1, -1))
    assert isinstance(m.dep_conv.bias, torch.nn.Parameter)  # released code deletes it
    assert m.dep_conv.bias.shape == (16, ) and not m.dep_conv.bias.any()
    assert m.dep_conv.padding == (2, 2) and m.dep_conv.groups == 4
    assert 'dep_conv.bias' in m.state_dict()
    assert m.fc.bias is None
    assert ACmix._abbr_ == 'acmix' and m.in_channels == 16 and m.out_channels == 16


@pytest.mark.parametrize('kc', [3, 5])
def test_conv_path_shift_operators_reproduce_shifted_copies(kc):
    """rate1=0, v = x, fc sending v of head 0 to mixed map i0 only: with the shift-operator
    init, output channel o is x's channel o // head shifted by offset i0 (zero filled)."""
    c, head, h, w = 8, 2, 6, 7
    m = ACmix(c, head=head, kernel_conv=kc).double()
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    pc = (kc - 1) // 2
    with torch.no_grad():
        m.rate1.zero_()
        m.rate2.fill_(1.0)
        m.conv3.weight.copy_(torch.eye(c, dtype=torch.float64)[:, :, None, None])
        m.conv3.bias.zero_()
    xp = F.pad(x, (pc, ) * 4)
    for i0 in range(kc * kc):
        with torch.no_grad():
            m.fc.weight.zero_()
            m.fc.weight[i0, 2 * head] = 1.0  # stacked index 2*head: v, head 0
        dy, dx = i0 // kc - pc, i0 % kc - pc
        shifted = xp[:, :, pc + dy:pc + dy + h, pc + dx:pc + dx + w]
        expected = shifted[:, torch.arange(c) // head]
        torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('ka', [3, 5])
def test_attention_path_uniform_logits_is_reflect_padded_mean(ka):
    """With k = 0 and no positional encoding every logit is 0: the attention path is the mean
    of v over the reflection-padded window."""
    c, h, w = 8, 6, 5
    m = randomised(ACmix(c, kernel_att=ka, head=2)).double()
    with torch.no_grad():
        for p in (m.conv2.weight, m.conv2.bias, m.conv_p.weight, m.rate2):
            p.zero_()
        m.rate1.fill_(1.0)
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    v = m.conv3(x)
    pad = (ka - 1) // 2
    expected = F.avg_pool2d(F.pad(v, (pad, ) * 4, mode='reflect'), ka, stride=1)
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_released_checkpoint_without_conv_bias_loads_strictly():
    src = randomised(ACmix(8, head=2, kernel_att=3))
    state = {k: v for k, v in src.state_dict().items() if k != 'dep_conv.bias'}
    dst = randomised(ACmix(8, head=2, kernel_att=3), seed=5)
    dst.load_state_dict(state, strict=True)
    assert not dst.dep_conv.bias.any()
    torch.testing.assert_close(dst.dep_conv.weight, src.dep_conv.weight)
    assert 'dep_conv.bias' not in state  # the caller's dict is left alone


def test_init_cfg_replaces_released_init():
    m = ACmix(8, head=2, init_cfg=dict(type='Constant', val=0.25, layer='Conv2d'))
    assert torch.all(m.conv1.weight == 0.25) and torch.all(m.dep_conv.weight == 0.25)
    assert m.rate1.item() == 0.5


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_float64():
    m = randomised(ACmix(8, head=2, kernel_att=3)).double()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, ))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- memory
class LargestOutput(TorchDispatchMode):
    """Records the largest storage (in elements) any op produces, views counted by their
    base storage, so a strided view of a padded map costs nothing but a copy does."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out, ):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.itemsize)
        return out


def _fwd_bwd_largest(fn, x):
    meter = LargestOutput()
    saved = []

    def pack(t):
        saved.append(max(t.numel(), t.untyped_storage().nbytes() // t.itemsize))
        return t

    with meter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).square().sum().backward()
    return meter.largest, max(saved)


@pytest.mark.parametrize('ka,stride', [(7, 1), (5, 2)])
def test_no_kernel_att_squared_unfold(monkeypatch, ka, stride):
    n, c, h, w = 2, 16, 12, 12
    m = randomised(ACmix(c, kernel_att=ka, head=4, stride=stride))
    x = torch.randn(n, c, h, w, requires_grad=True)
    unfolded = ka * ka * n * c * (h // stride) * (w // stride)  # one unfolded k

    # the meter does catch the unfold formulation (so the assertions below can fail)
    ref_largest, _ = _fwd_bwd_largest(lambda t: released_forward(m, t), x)
    assert ref_largest >= unfolded

    def no_unfold(*args, **kwargs):
        raise AssertionError('ACmix must not unfold k and v')

    monkeypatch.setattr(F, 'unfold', no_unfold)
    monkeypatch.setattr(torch.nn.Unfold, 'forward', no_unfold)
    largest, largest_saved = _fwd_bwd_largest(m, x)
    assert largest < unfolded / 2, (largest, unfolded)
    assert largest_saved < unfolded / 2, (largest_saved, unfolded)
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize('kwargs,exc,name', [
    (dict(in_channels=0), ValueError, 'in_channels'),
    (dict(in_channels=8.0), TypeError, 'in_channels'),
    (dict(in_channels=True), TypeError, 'in_channels'),
    (dict(out_channels=0), ValueError, 'out_channels'),
    (dict(out_channels=10), ValueError, 'head'),
    (dict(head=0), ValueError, 'head'),
    (dict(head='4'), TypeError, 'head'),
    (dict(head=3), ValueError, 'out_channels=8 must be divisible by head=3'),
    (dict(kernel_att=4), ValueError, 'kernel_att'),
    (dict(kernel_att=0), ValueError, 'kernel_att'),
    (dict(kernel_att=3.0), TypeError, 'kernel_att'),
    (dict(kernel_conv=2), ValueError, 'kernel_conv'),
    (dict(kernel_conv=-1), ValueError, 'kernel_conv'),
    (dict(stride=0), ValueError, 'stride'),
    (dict(stride=1.5), TypeError, 'stride'),
    (dict(dilation=0), ValueError, 'dilation'),
    (dict(dilation=None), TypeError, 'dilation'),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(in_channels=8, head=4)
    args.update(kwargs)
    with pytest.raises(exc, match=re.escape(name)) as info:
        ACmix(**args)
    assert 'ACmix' in str(info.value)


@pytest.mark.parametrize('kwargs,ok,bad', [
    (dict(), (4, 4), (3, 8)),
    (dict(kernel_att=3, dilation=2), (3, 3), (8, 2)),
    (dict(kernel_att=5, stride=2), (3, 5), (2, 5)),
])
def test_too_small_map_raises_naming_module_and_size(kwargs, ok, bad):
    m = ACmix(8, head=2, **kwargs)
    assert m(torch.randn(1, 8, *ok)).shape[1] == 8
    with pytest.raises(ValueError, match=rf'ACmix needs a feature map of at least '
                       rf'{ok[0]}x{ok[0]}'):
        m(torch.randn(1, 8, *bad))


def test_wrong_input_raises():
    m = build_attention('acmix', 8, head=2)
    assert isinstance(m, ACmix)
    with pytest.raises(ValueError, match='ACmix was built for in_channels=8'):
        m(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match='ACmix expects a 4-D input'):
        m(torch.randn(8, 6, 6))
    with pytest.raises(TypeError, match='ACmix expects a tensor'):
        m([[1.0]])


def test_export_with_stride_and_dilation():
    m = randomised(ACmix(8, head=2, kernel_att=3, stride=2, dilation=2)).eval()
    x = torch.randn(1, 8, 7, 6)
    exported = torch.export.export(m, (x, ))
    torch.testing.assert_close(exported.module()(x), m(x), rtol=1e-5, atol=1e-5)
