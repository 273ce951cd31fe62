"""Numerical proofs for PolarizedSelfAttention.

The module computes a reassociated forward; here every variant is compared with a plain
formulation written step by step the way the released code / the paper's equations do it
(separate 1x1 convs, the C/2 x HW maps formed explicitly), in float64.
"""
import math
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmattn.models.layers import PolarizedSelfAttention, build_attention
from mmattn.testing import randomise
from mmattn.testing.plain import plain_psa
from mmattn.registry import MODELS

VARIANTS = [(m, f) for m in ('parallel', 'sequential') for f in ('released', 'paper')]
TOL = dict(rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- plain reference


def released_state_dict(c, mode, seed=0, scale=0.5):
    """A released block's state dict (keys after ``...deattn.``) with random values."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    sd = {
        'conv_q_right.weight': r(1, c, 1, 1),
        'conv_v_right.weight': r(c // 2, c, 1, 1),
        'conv_q_left.weight': r(c // 2, c, 1, 1),
        'conv_v_left.weight': r(c // 2, c, 1, 1),
    }
    if mode == 'parallel':
        sd['conv_up.weight'] = r(c, c // 2, 1, 1)
    else:
        sd.update({
            'conv_up.0.weight': r(c // 2 // 4, c // 2, 1, 1), 'conv_up.0.bias': r(c // 2 // 4),
            'conv_up.1.weight': 1 + r(c // 2 // 4, 1, 1), 'conv_up.1.bias': r(c // 2 // 4, 1, 1),
            'conv_up.3.weight': r(c, c // 2 // 4, 1, 1), 'conv_up.3.bias': r(c),
        })
    return sd


def randomised(c, mode, formulation, seed=0):
    module = PolarizedSelfAttention(c, mode=mode, formulation=formulation).double()
    return randomise(module, seed, scale=0.5)


def rand_x(shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize('mode,formulation', VARIANTS)
@pytest.mark.parametrize('shape', [(2, 16, 5, 7), (1, 16, 1, 1), (1, 16, 9, 2)])
def test_matches_plain_formulation(mode, formulation, shape):
    module = randomised(16, mode, formulation)
    x = 2 * rand_x(shape)
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    torch.testing.assert_close(module(x), plain_psa(x, sd, mode, formulation), **TOL)
    with torch.no_grad():  # inference may take other kernels
        torch.testing.assert_close(module(x), plain_psa(x, sd, mode, formulation), **TOL)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y_cl = module(x_cl)
    torch.testing.assert_close(y_cl, plain_psa(x, sd, mode, formulation), **TOL)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)


# 18 is HRNet-W18's first branch: the released PSA_s floors its bottleneck to (18 // 2) // 4 = 2
@pytest.mark.parametrize('c', [16, 18])
@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
def test_loads_released_state_dict(mode, c):
    # a released block's keys (those after ``...deattn.`` in the checkpoint), loaded strictly
    sd = released_state_dict(c, mode)
    module = PolarizedSelfAttention(c, mode=mode).double()
    module.load_state_dict(sd, strict=True)
    # and state_dict() gives back the same keys and shapes, so converters round-trip
    own = module.state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {
        k: tuple(v.shape) for k, v in sd.items()}
    x = rand_x((2, c, 6, 5))
    torch.testing.assert_close(module(x), plain_psa(x, sd, mode, 'released'), **TOL)


def test_wrong_layout_fails():
    c = 16
    with pytest.raises(RuntimeError, match='conv_up'):
        PolarizedSelfAttention(c, mode='sequential').load_state_dict(
            released_state_dict(c, 'parallel'))
    with pytest.raises(RuntimeError, match='conv_up'):
        PolarizedSelfAttention(c, mode='parallel').load_state_dict(
            released_state_dict(c, 'sequential'))
    # wrong width: shapes differ
    with pytest.raises(RuntimeError, match='size mismatch'):
        PolarizedSelfAttention(32, mode='parallel').load_state_dict(
            released_state_dict(c, 'parallel'))
    # the paper form has the extra LayerNorm: strict loading of a released dict names it
    with pytest.raises(RuntimeError, match='norm_up'):
        PolarizedSelfAttention(c, formulation='paper').load_state_dict(
            released_state_dict(c, 'parallel'))


# ----------------------------------------------------------------------------- closed forms
def test_closed_form_parallel_zero_weights():
    # q_right = 0 -> uniform softmax; ctx = 0 -> a_ch = sigmoid(0) = 1/2;
    # g = 0 -> s = 0 -> softmax_HW(s) = 1/HW -> a_sp = sigmoid(1/HW)
    module = PolarizedSelfAttention(16).double()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    x = rand_x((2, 16, 5, 7))
    expected = x * (0.5 + torch.sigmoid(torch.tensor(1 / 35, dtype=torch.float64)))
    torch.testing.assert_close(module(x), expected, **TOL)
    # the same from an init_cfg (applied through mmengine)
    module = PolarizedSelfAttention(16, init_cfg=dict(type='Constant', val=0, layer='Conv2d'))
    assert all((p == 0).all() for p in module.parameters())
    xf = x.float()
    torch.testing.assert_close(module(xf), expected.float(), rtol=1e-6, atol=1e-6)


def test_closed_form_sequential():
    # conv_up.0 = 0 -> LayerNorm of a constant vector = its bias beta ->
    # a_ch = sigmoid(W3 relu(beta) + b3), independent of x. conv_v_left = 0 -> theta = 0 ->
    # per-channel softmax_HW = 1/HW -> s = sum_k g_k / HW with g = W_ql (a_ch * mean_hw(x)),
    # constant over positions: out = x * a_ch * sigmoid(sum(g) / HW).
    c, hw = 16, (4, 6)
    module = randomised(c, 'sequential', 'released')
    with torch.no_grad():
        module.conv_up[0].weight.zero_()
        module.conv_up[0].bias.zero_()
        module.conv_v_left.weight.zero_()
    x = rand_x((2, c) + hw)
    beta = module.conv_up[1].bias.flatten()
    w3, b3 = module.conv_up[3].weight.flatten(1), module.conv_up[3].bias
    a_ch = torch.sigmoid(w3 @ beta.relu() + b3)  # (C,)
    g = (a_ch * x.mean(dim=(2, 3))) @ module.conv_q_left.weight.flatten(1).T  # (N, C/2)
    a_sp = torch.sigmoid(g.sum(-1) / math.prod(hw))  # (N,)
    expected = x * a_ch.view(1, c, 1, 1) * a_sp.view(-1, 1, 1, 1)
    torch.testing.assert_close(module(x).detach(), expected.detach(), **TOL)


@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
def test_closed_form_paper_zero_weights(mode):
    # paper: a_ch = sigmoid(LayerNorm(0)) = sigmoid(beta); g = softmax(0) uniform but
    # conv_v_left = 0 -> s = 0 -> a_sp = 1/2 (no softmax over HW in the paper's spatial branch)
    module = PolarizedSelfAttention(16, mode=mode, formulation='paper').double()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.norm_up.bias.copy_(rand_x((16, 1, 1), seed=3))
    x = rand_x((2, 16, 3, 5))
    a_ch = torch.sigmoid(module.norm_up.bias).view(1, 16, 1, 1)
    expected = x * (a_ch + 0.5) if mode == 'parallel' else x * a_ch * 0.5
    torch.testing.assert_close(module(x).detach(), expected.detach(), **TOL)


# ----------------------------------------------------------------------------- gradients
# 3x2: C/2 = 8 > HW, released PSA_s scales x by a_ch; 3x4: it scales conv_v_left's weights
@pytest.mark.parametrize('hw', [(3, 2), (3, 4)])
@pytest.mark.parametrize('mode,formulation', VARIANTS)
def test_gradcheck(mode, formulation, hw):
    module = randomised(16, mode, formulation)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = rand_x((1, 16, *hw)).requires_grad_()

    def fn(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (x, ))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- efficiency
class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns (with ``new_only``, only those on
    new memory: views and in-place results are left out)."""

    def __init__(self, new_only: bool = False):
        super().__init__()
        self.shapes = []
        self.new_only = new_only

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in (out if isinstance(out, (tuple, list)) else (out, )):
            if isinstance(t, torch.Tensor):
                if self.new_only and t.untyped_storage().data_ptr() in inputs:
                    continue
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize('mode,formulation', VARIANTS)
def test_no_half_channel_map_formed(mode, formulation):
    # N=2, C/2=8, H=5, W=7 are all distinct, so a (N, C/2, HW) map is recognisable
    module = PolarizedSelfAttention(16, mode=mode, formulation=formulation)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad(), _Shapes() as rec:
        module(x)
    big = [s for s in rec.shapes if s in {(2, 8, 35), (2, 8, 5, 7)}]
    if mode == 'sequential' and formulation == 'released':
        # theta and its per-channel softmax are the only ones PSA_s needs
        assert len(big) == 2, rec.shapes
    else:
        assert big == [], rec.shapes


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_sequential_small_map_copies_nothing_full_size(dtype):
    # C/2 = 8 > HW = 6: theta is projected from y = x * a_ch; y and the output are the only
    # full-size (N*C*HW) results, and nothing else is larger (a folded transpose of y or
    # weights broadcast per sample would be)
    module = PolarizedSelfAttention(16, mode='sequential').eval()
    x = torch.randn(3, 16, 2, 3)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16), _Shapes(True) as rec:
        module(x)
    numels = [math.prod(s) for s in rec.shapes]
    allowed = 3 if dtype == torch.bfloat16 else 2  # under autocast also x's 16-bit copy
    assert numels.count(3 * 16 * 6) <= allowed, rec.shapes
    assert max(numels) <= 3 * 16 * 6, rec.shapes


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_sequential_small_map_inference_peak_below_released(dtype):
    """At HRNet-W48's last branch (C/2 = 192 > HW = 48) the inference peak, kernel temporaries
    included (allocator events), stays below the released code's: a copy of ``x * a_ch`` or
    of weights broadcast per sample inside a kernel would exceed it."""
    from mmattn.benchmark.memory import cpu_peak_bytes
    module = PolarizedSelfAttention(384, mode='sequential').eval()
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    x = torch.randn(8, 384, 8, 6)

    def peak(fn):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                             enabled=dtype == torch.bfloat16):
            fn()  # first call: allocator and kernel set-up outside the measurement
            return cpu_peak_bytes(fn)

    ours = peak(lambda: module(x))
    released = peak(lambda: plain_psa(x, sd, 'sequential', 'released'))
    assert ours < released, (ours, released)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize('hw', [(9, 7), (2, 3)])  # HW > C/2 and HW < C/2 (PSA_s differs)
@pytest.mark.parametrize('mode,formulation', VARIANTS)
def test_autocast_bfloat16_all_variants(mode, formulation, hw):
    module = randomised(16, mode, formulation).float()
    x = rand_x((2, 16, *hw), dtype=torch.float32).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = module(x)
    assert torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    with torch.no_grad():
        ref = module(x)
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_large_logits_stay_finite():
    # softmax over HW of large logits must not overflow (float32 and bfloat16 autocast)
    module = PolarizedSelfAttention(16)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(50)
    x = 10 * torch.randn(1, 16, 16, 16)
    assert torch.isfinite(module(x)).all()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(module(x).float()).all()


# ----------------------------------------------------------------------------- init
@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
def test_released_init(mode):
    c = 256
    torch.manual_seed(0)
    module = PolarizedSelfAttention(c, mode=mode)
    std = math.sqrt(2 / c)  # kaiming normal, fan_in = C, gain sqrt(2)
    for name in ('conv_v_right', 'conv_q_left', 'conv_v_left'):
        w = getattr(module, name).weight
        assert abs(w.std().item() / std - 1) < 0.03, name
        assert abs(w.mean().item()) < 0.03 * std, name
    assert abs(module.conv_q_right.weight.std().item() / std - 1) < 0.25
    # conv_up keeps PyTorch's default (kaiming uniform a=sqrt(5): |w| <= 1/sqrt(fan_in))
    up = module.conv_up if mode == 'parallel' else module.conv_up[0]
    assert up.weight.abs().max() <= 1 / math.sqrt(c // 2)
    assert up.weight.std() < 0.8 * std


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize('kwargs,exc,pattern', [
    (dict(in_channels=15), ValueError, r'in_channels=15 must be even'),
    (dict(in_channels=0), ValueError, r'in_channels must be >= 2'),
    (dict(in_channels=16.0), TypeError, r'in_channels must be an int'),
    (dict(in_channels=True), TypeError, r'in_channels must be an int'),
    (dict(in_channels=6, mode='sequential'), ValueError,
     r"in_channels=6 is too small for mode='sequential'"),
    (dict(in_channels=16, mode='para'), ValueError,
     r"mode must be one of \['parallel', 'sequential'\]"),
    (dict(in_channels=16, formulation='official'), ValueError,
     r"formulation must be one of \['released', 'paper'\]"),
])
def test_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        PolarizedSelfAttention(**kwargs)
    assert 'PolarizedSelfAttention' in str(info.value)


def test_sequential_paper_needs_only_even_channels():
    # no bottleneck in the paper form, so 12 channels are fine there
    module = PolarizedSelfAttention(12, mode='sequential', formulation='paper')
    assert module(torch.randn(1, 12, 3, 4)).shape == (1, 12, 3, 4)


def test_wrong_input_names_the_module():
    module = PolarizedSelfAttention(16)
    with pytest.raises(ValueError, match=re.escape('PolarizedSelfAttention was built for '
                                                   'in_channels=16')):
        module(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match='PolarizedSelfAttention expects a 4-D input'):
        module(torch.randn(16, 4, 4))


def test_registry_and_factory():
    assert MODELS.get('PolarizedSelfAttention') is PolarizedSelfAttention
    assert PolarizedSelfAttention._abbr_ == 'polarized_attn'
    assert build_attention('psa_p', 16).mode == 'parallel'
    psa_s = build_attention('psa_s', 16, formulation='paper')
    assert (psa_s.mode, psa_s.formulation) == ('sequential', 'paper')
    built = MODELS.build(dict(type='PolarizedSelfAttention', in_channels=32, mode='sequential'))
    assert built.in_channels == 32 and built.conv_up[0].out_channels == 4


def test_export_paper_sequential():
    # the contract test exports the released forms; the paper form takes other code paths
    module = randomised(16, 'sequential', 'paper').float().eval()
    x = torch.randn(2, 16, 5, 7)
    exported = torch.export.export(module, (x, ))
    torch.testing.assert_close(exported.module()(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k', [1, 2, 6])
def test_row_products_and_weighted_pool_equal_bmm_with_gradients(k):
    """The two contractions with hand-written backward (fast for few rows) give bmm's values
    and gradients, in float64; K=6 takes the batched-GEMM branch of the backward."""
    from mmattn.models.layers.polarized_self_attention import row_products, weighted_pool
    gen = torch.Generator().manual_seed(k)
    rows = torch.randn(3, k, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(3, k, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    feats = torch.randn(3, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    for fast, plain in ((row_products(rows, feats), rows @ feats),
                        (weighted_pool(weights, feats), weights @ feats.transpose(1, 2))):
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12)
        grad = torch.randn_like(plain)
        inputs = (rows if fast.shape[-1] == 7 else weights, feats)
        for a, b in zip(torch.autograd.grad(fast, inputs, grad),
                        torch.autograd.grad(plain, inputs, grad)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = row_products(rows.float(), feats.float())
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert rows.grad.dtype == torch.float64 and torch.isfinite(feats.grad).all()
