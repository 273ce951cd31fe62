"""``softmax(scale * Q K^T) V`` without the (Lq x Lk) matrix: the attention core shared by
Non-local and DANet's position attention.

Three implementations, chosen per call by :func:`softmax_attention`:

* on CPU, a map whose whole matrix fits one block (:data:`BLOCK_ELEMENTS` per sample): the
  explicit form under autograd, the fastest there;
* :class:`ChunkedSoftmaxAttention`, on CPU for a larger map with ``d != dv`` (DANet PAM:
  ``d = C/8``, ``dv = C``). PyTorch's CPU flash kernel needs ``d == dv``; padding ``d`` up to
  ``dv`` would multiply the ``Q K^T`` work by ``dv / d`` (8 for PAM, 1.8x the explicit
  formulation in all). The chunked form does the explicit formulation's arithmetic on blocks of
  query rows: memory ``O(rows x Lk)`` instead of ``O(Lq x Lk)``, and its backward recomputes
  each block's probabilities (``Q K^T`` at width ``d``, a small fraction of the ``dv``-wide
  products) instead of keeping them;
* :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels)
  otherwise: on CPU with ``d == dv``, and on CUDA, whose memory-efficient kernel accepts
  ``dv != d``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from mmattn.utils.torch_compat import float32_or_wider, is_compiling

__all__ = ['softmax_attention', 'ChunkedSoftmaxAttention', 'chunk_rows', 'BLOCK_ELEMENTS']

# elements of one (rows x Lk) block per batch element: 4 MiB in float32, which keeps a block
# in cache-friendly sizes and the whole working set of the backward (three blocks) small
BLOCK_ELEMENTS = 2**20
_MIN_ROWS = 16


def chunk_rows(num_queries: int, num_keys: int, block_elements: Optional[int] = None) -> int:
    """Query rows per block: ``block_elements // num_keys`` (default :data:`BLOCK_ELEMENTS`,
    read at call time), at least 16, at most all."""
    if block_elements is None:
        block_elements = BLOCK_ELEMENTS
    return max(1, min(num_queries, max(_MIN_ROWS, block_elements // max(num_keys, 1))))


def _block_probabilities(query_rows: torch.Tensor, key_t: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys of one block of (already scaled) query rows. ``torch.softmax``
    works row by row in cache, which beats separate max/exp/sum passes over the block."""
    return torch.softmax(torch.bmm(query_rows, key_t), dim=-1)


def _chunked_forward(query, key, value, rows) -> torch.Tensor:
    """``softmax(query key^T) value`` block by block, all in ``value``'s dtype (``query``
    already scaled).

    The logits and probabilities of every block are written into one pair of buffers: a
    block is tens of MiB for a batch, which the C allocator may hand out as fresh pages each
    time, and faulting them in took up to half of the forward's time (8x3072x3072 in
    bfloat16: 110-250 ms from run to run with new blocks, the explicit form 235 ms)."""
    key_t = key.transpose(1, 2)
    if is_compiling() or (torch.is_grad_enabled() and
                          any(t.requires_grad for t in (query, key, value))):
        # traced (torch.export passes tensors that require grad) or differentiated: no out=
        return torch.cat([
            torch.bmm(_block_probabilities(query[:, start:start + rows], key_t), value)
            for start in range(0, query.shape[1], rows)
        ], dim=1)
    n, num_queries = query.shape[:2]
    out = value.new_empty(n, num_queries, value.shape[-1])
    logits = probs = None
    for start in range(0, num_queries, rows):
        stop = min(start + rows, num_queries)
        if logits is None or logits.shape[1] != stop - start:
            logits = value.new_empty(n, stop - start, key.shape[1])
            probs = torch.empty_like(logits)
        torch.bmm(query[:, start:stop], key_t, out=logits)
        torch.softmax(logits, dim=-1, out=probs)
        out[:, start:stop] = torch.bmm(probs, value)
    return out


def _single_block(query, key, value, scale, transpose_out: bool) -> torch.Tensor:
    """A map small enough for one block (the whole ``Lq x Lk`` matrix within the budget): the
    explicit form under autograd, which keeps ``P`` for the backward instead of recomputing it.
    16-bit inputs are treated as autocast treats the explicit form: 16-bit products and softmax
    (their kernels accumulate in float32). ``transpose_out``: ``V^T P^T`` (N, dv, Lq), the
    released Non-local / PAM product, straight from the transposed views (no copy)."""
    with torch.autocast(query.device.type, enabled=False):
        logits = torch.bmm(query * scale if scale != 1.0 else query, key.transpose(1, 2))
        # 16-bit in and out (the kernel accumulates in float32): P is rounded to 16 bits for
        # P V either way, and a float32 P costs two conversions, slow on CPU when P has
        # denormal entries (8x768x768: 3 ms -> 17 ms)
        probs = torch.softmax(logits, dim=-1)
        if transpose_out and (not probs.requires_grad or value.shape[-1] >= key.shape[1]):
            # autograd hands this product's gradient for P back transposed, and softmax's
            # backward copies it (Lq x Lk); in training that pays only where it is no larger
            # than the (Lq x dv) copy of the output it saves
            return torch.bmm(value.transpose(1, 2), probs.transpose(1, 2))
        out = torch.bmm(probs, value)
        return out.transpose(1, 2) if transpose_out else out


class ChunkedSoftmaxAttention(torch.autograd.Function):
    """``softmax(scale * Q K^T, dim=-1) V`` for ``(N, Lq, d)``, ``(N, Lk, d)``, ``(N, Lk, dv)``
    inputs of one dtype, computed on blocks of ``rows`` query rows.

    Backward (the flash-attention recurrence): with each block's ``P`` recomputed from
    ``scale * Q`` and ``K`` (a ``d``-wide product), ``dV += P^T dO``,
    ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = scale * dS K``, ``dK += scale * dS^T Q``.
    16-bit inputs: the blocks (``Q K^T``, softmax, ``P V``, and in backward ``P`` again,
    ``dO V^T``, ``dS K``, ``Q^T dS``) in 16 bits as autocast runs the explicit form, whose
    kernels accumulate in float32; ``dO V^T - rowsum(dO * O)`` (two nearly equal terms) in
    float32, rounded once after; the gradients summed over the blocks in float32.
    """

    @staticmethod
    def forward(ctx, query, key, value, scale: float, rows: int):
        with torch.autocast(query.device.type, enabled=False):
            if scale != 1.0:  # on Q (N x Lq x d), rounded once, not on every block of logits
                query = (query.to(float32_or_wider(query.dtype)) * scale).to(query.dtype)
            # the blocks in the input dtype: for 16-bit inputs, 16-bit products and softmax
            # as autocast runs the explicit form (its kernels accumulate in float32); float32
            # blocks took 1.8x the time at 8x3072x3072 in bfloat16
            out = _chunked_forward(query, key, value, rows)
        ctx.save_for_backward(query, key, value, out)
        ctx.scale, ctx.rows = scale, rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_low, k_low, value, out = ctx.saved_tensors
        rows, low = ctx.rows, value.dtype
        acc = float32_or_wider(value.dtype)
        with torch.autocast(value.device.type, enabled=False):
            # the blocks in the forward's dtype (P recomputed exactly as the forward rounded
            # it; 16-bit products and softmax as autograd runs the explicit form under
            # autocast), the gradients of Q, K, V summed over the blocks in float32
            grad_out = grad_out.contiguous()
            delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # rowsum(dO * O)
            grad_out = grad_out.to(low)
            key_t, value_t = k_low.transpose(1, 2), value.transpose(1, 2)
            grad_q = []
            # dK and dV accumulated transposed, (N, d, Lk) and (N, dv, Lk): as (Lk x d)
            # outputs of (Lk x rows) @ (rows x d) products they ran 4.7x (dK) and 1.5x (dV)
            # slower on CPU (blocks of 8 x 341 x 3072, d = 6, dv = 48)
            grad_k_t = out.new_zeros(k_low.shape[0], k_low.shape[2], k_low.shape[1], dtype=acc)
            grad_v_t = out.new_zeros(value.shape[0], value.shape[2], value.shape[1], dtype=acc)
            for start in range(0, q_low.shape[1], rows):
                stop = start + rows
                probs = _block_probabilities(q_low[:, start:stop], key_t)
                d_out = grad_out[:, start:stop]
                _accumulate(grad_v_t, d_out.transpose(1, 2), probs)
                # dO V^T - delta in float32 (the two nearly cancel), rounded once after
                d_logits = torch.bmm(d_out, value_t).to(acc).sub_(delta[:, start:stop])
                d_logits = d_logits.mul_(probs).to(low)
                grad_q.append(torch.bmm(d_logits, k_low))
                _accumulate(grad_k_t, q_low[:, start:stop].transpose(1, 2), d_logits)
            grad_q = torch.cat(grad_q, dim=1)
            if ctx.scale != 1.0:
                grad_q = grad_q * ctx.scale
        dtype = value.dtype  # that of all three inputs
        return (grad_q.to(dtype), grad_k_t.transpose(1, 2).to(dtype),
                grad_v_t.transpose(1, 2).to(dtype), None, None)


def _accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += a @ b``, ``total`` in the accumulation dtype (``baddbmm_`` where the dtypes
    agree, a 16-bit product added to the float32 sum otherwise)."""
    if a.dtype == total.dtype:
        total.baddbmm_(a, b)
    else:
        total.add_(torch.bmm(a, b))


def softmax_attention(query: torch.Tensor,
                      key: torch.Tensor,
                      value: torch.Tensor,
                      scale: float,
                      block_elements: Optional[int] = None,
                      transpose_out: bool = False) -> torch.Tensor:
    """``softmax(scale * query key^T, dim=-1) value`` for ``(N, L, d)`` inputs, without forming
    the ``(Lq x Lk)`` matrix; ``(N, Lq, dv)``, or its transpose ``(N, dv, Lq)`` with
    ``transpose_out`` (the channels-first layout of a feature map: computed as such where the
    explicit form runs, a transposed view otherwise).

    ``query``/``key`` share their last dim ``d``; ``value`` may have another (``dv``). All three
    are cast to ``value``'s dtype, so one dtype meets the kernels under autocast. On CPU a map
    whose whole matrix fits one block (``block_elements`` per batch element) takes the explicit
    form, which is fastest there; a larger one with ``d != dv`` the chunked form (blocks of
    :func:`chunk_rows` rows); otherwise ``scaled_dot_product_attention`` (one head), whose fused
    kernels tile the softmax. Where those do not apply PyTorch silently falls back to an
    explicit math path that forms the matrix: CUDA's memory-efficient kernel needs head dims
    aligned to 8, so they are zero-padded, which leaves every dot product, and so the result,
    exactly unchanged.
    """
    query = query.to(value.dtype)
    key = key.to(value.dtype)
    d, dv = query.shape[-1], value.shape[-1]
    if query.device.type == 'cpu':
        rows = chunk_rows(query.shape[1], key.shape[1], block_elements)
        if rows >= query.shape[1]:
            return _single_block(query, key, value, scale, transpose_out)
        if d != dv:
            out = ChunkedSoftmaxAttention.apply(query.contiguous(), key.contiguous(),
                                                value.contiguous(), scale, rows)
            return out.transpose(1, 2) if transpose_out else out
    # (N, 1, L, d), last dim contiguous: the fused kernels need unit stride there and PyTorch
    # silently falls back to the explicit math path otherwise (a copy for NCHW inputs, a no-op
    # for channels_last ones)
    query = query.unsqueeze(1).contiguous()
    key = key.unsqueeze(1).contiguous()
    value = value.unsqueeze(1).contiguous()
    if query.device.type != 'cpu':
        # CUDA's memory-efficient kernel needs head dims aligned to 8 (16-bit) / 4 (float32)
        pad_qk, pad_v = -(-d // 8) * 8, -(-dv // 8) * 8
        if pad_qk != d:
            query = F.pad(query, (0, pad_qk - d))
            key = F.pad(key, (0, pad_qk - d))
        if pad_v != dv:
            value = F.pad(value, (0, pad_v - dv))
    out = F.scaled_dot_product_attention(query, key, value, scale=scale)[..., :dv].squeeze(1)
    return out.transpose(1, 2) if transpose_out else out
