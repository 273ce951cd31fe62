"""The shared attention core (``softmax_attention``): the CPU blockwise path equals the
explicit softmax in value and gradient for every block split, keeps its blocks within budget,
and handles 16-bit inputs and autocast."""
import pytest
import torch

from _guards import NoLargeTensors
from _torch_support import requires_cpu_float16

from mmattn.models.layers.softmax_attention import (ChunkedSoftmaxAttention, chunk_rows,
                                                    softmax_attention)


def explicit(q, k, v, scale):
    return torch.softmax(scale * q @ k.transpose(1, 2), dim=-1) @ v


def qkv(n=2, lq=37, lk=29, d=4, dv=12, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, length, dim, dtype=dtype, generator=gen).requires_grad_()
            for length, dim in ((lq, d), (lk, d), (lk, dv))]


def test_chunk_rows():
    assert chunk_rows(3072, 3072) == 2**20 // 3072  # 341 rows of 4 MiB float32 blocks
    assert chunk_rows(32768, 32768) == 32
    assert chunk_rows(100, 10**7) == 16  # never fewer than 16 rows
    assert chunk_rows(10, 10) == 10  # a small map is one block
    assert chunk_rows(1600, 1600, block_elements=4096) == 16


@pytest.mark.parametrize('rows', [1, 5, 16, 36, 37])
@pytest.mark.parametrize('scale', [1.0, 0.37])
def test_blockwise_equals_explicit_float64(rows, scale):
    """Forward and all three gradients equal the explicit softmax for any block split (incl.
    a last block shorter than the others and a single block)."""
    q, k, v = qkv()
    out = ChunkedSoftmaxAttention.apply(q, k, v, scale, rows)
    ref = explicit(q, k, v, scale)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, b in zip('qkv', got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f'grad of {name}')


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('lk,dv,block_elements', [(29, 12, None), (5, 12, None),
                                                  (29, 12, 64)])
def test_transpose_out_is_the_transpose(lk, dv, block_elements, grad):
    """``transpose_out`` gives (N, dv, Lq) with the values and gradients of the transposed
    explicit form, whichever product computes it (V^T P^T where dv >= Lk or without
    gradients, P V transposed otherwise, the blockwise form with a small block)."""
    q, k, v = qkv(lk=lk, dv=dv)
    ref = explicit(q, k, v, 0.5).transpose(1, 2)
    with torch.set_grad_enabled(grad):
        out = softmax_attention(q, k, v, 0.5, block_elements=block_elements,
                                transpose_out=True)
    assert out.shape == (2, dv, 37)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if grad:
        g = torch.randn_like(ref)
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref, (q, k, v), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck():
    q, k, v = qkv(n=1, lq=6, lk=5, d=3, dv=4)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ChunkedSoftmaxAttention.apply(q, k, v, 0.8, 4), (q, k, v))


def test_large_logits_are_stable():
    """Logits of 1e4 (exp overflows without the row-max shift) give the explicit softmax."""
    q, k, v = qkv()
    with torch.no_grad():
        q.mul_(100.0)
        k.mul_(100.0)
    out = softmax_attention(q, k, v, 1.0, block_elements=64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, explicit(q, k, v, 1.0), rtol=0, atol=1e-10)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_cpu_dispatch_blockwise_for_unequal_dims_and_fused_kernel_for_equal():
    """A map larger than one block: with ``d != dv`` the blockwise form, whose largest tensor
    is one (N, rows, Lk) block; with ``d == dv`` PyTorch's flash kernel (no padding needed)."""
    q, k, v = qkv(n=1, lq=400, lk=300, d=4, dv=8, dtype=torch.float32)
    with NoLargeTensors(400 * 300) as guard:
        out = softmax_attention(q, k, v, 1.0, block_elements=300 * 20)  # 20 rows per block
        out.sum().backward()
    assert 'aten.bmm.default' in guard.ops
    assert not any('scaled_dot_product' in op for op in guard.ops)
    torch.testing.assert_close(out, explicit(q, k, v, 1.0), rtol=1e-5, atol=1e-6)
    q, k, v = qkv(n=1, lq=400, lk=300, d=8, dv=8, dtype=torch.float32)
    with NoLargeTensors(400 * 300) as guard:
        out = softmax_attention(q, k, v, 1.0, block_elements=300 * 20)
    assert any('flash_attention' in op for op in guard.ops), guard.ops
    torch.testing.assert_close(out, explicit(q, k, v, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.bfloat16,
                                   pytest.param(torch.float16, marks=requires_cpu_float16)])
def test_16_bit_inputs(dtype):
    """16-bit q, k, v: output and gradients in that dtype, as close to the float64 result as
    the explicit form computed in that dtype (as autocast runs it) comes: the blocks round P
    and the products to 16 bits as it does, the gradients are summed in float32."""
    q64, k64, v64 = qkv(lq=200, lk=150, d=8, dv=16)
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64))
    out = softmax_attention(q, k, v, 0.5, block_elements=150 * 16)
    assert out.dtype == dtype
    q16, k16, v16 = (t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64))
    out16 = explicit(q16, k16, v16, 0.5)
    q32, k32, v32 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = explicit(q32, k32, v32, 0.5)

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(out, ref) <= 1.1 * err(out16, ref) + 1e-3
    assert err(out, ref) <= 2e-2
    out.backward(torch.ones_like(out))
    out16.backward(torch.ones_like(out16))
    ref.sum().backward()
    for ours, theirs, exact in ((q, q16, q32), (k, k16, k32), (v, v16, v32)):
        assert ours.grad.dtype == dtype and torch.isfinite(ours.grad).all()
        scale = exact.grad.abs().max().item()
        assert err(ours.grad, exact.grad) <= 1.1 * err(theirs.grad, exact.grad) + 1e-3 * scale
        assert err(ours.grad, exact.grad) <= 1e-2 * scale


def test_autocast_mixed_dtypes():
    """Under CPU autocast a float32 query/key meets a bfloat16 value (a conv output): all are
    cast to the value's dtype, and the gradients come back in each input's own dtype."""
    q, k, v = qkv(lq=64, lk=64, d=4, dv=8, dtype=torch.float32)
    v16 = v.detach().bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = softmax_attention(q, k, v16, 1.0, block_elements=64 * 16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), explicit(q, k, v, 1.0), rtol=0, atol=3e-2)
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and v16.grad.dtype == torch.bfloat16


def test_map_within_one_block_takes_the_explicit_form():
    """When the whole (Lq x Lk) matrix fits the block budget the explicit form runs under
    autograd (no custom backward, no fused kernel); values and gradients equal the explicit
    softmax, for d != dv and d == dv."""
    q, k, v = qkv()
    with NoLargeTensors(10**9) as guard:
        softmax_attention(q, k, v[..., :4], 1.0)
    assert not any('scaled_dot_product' in op for op in guard.ops)
    out = softmax_attention(q, k, v, 0.37)
    assert out.grad_fn is not None and 'ChunkedSoftmaxAttention' not in type(out.grad_fn).__name__
    ref = explicit(q, k, v, 0.37)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad),
                    torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    chunked = softmax_attention(q, k, v, 0.37, block_elements=29 * 16)
    assert 'ChunkedSoftmaxAttention' in type(chunked.grad_fn).__name__


def test_export_through_the_blockwise_path(monkeypatch):
    """torch.export traces the blockwise forward with tensors that require grad, where its
    reused block buffers (out= writes) are not allowed: it takes the plain blocks there."""
    import mmattn.models.layers.softmax_attention as core
    from mmattn.models.layers import build_attention
    monkeypatch.setattr(core, 'BLOCK_ELEMENTS', 64)  # 8x8 maps in blocks of 16 rows
    module = build_attention('danet_pam', 16).eval()
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(2, 16, 8, 8)
    exported = torch.export.export(module, (x, ))
    torch.testing.assert_close(exported.module()(x), module(x), rtol=1e-5, atol=1e-6)
