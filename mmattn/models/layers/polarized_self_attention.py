"""Polarized Self-Attention (PSA), parallel and sequential layouts, released and paper maths."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from mmattn.utils.torch_compat import autocast_dtype, autocast_enabled, is_compiling

from .helpers import LOW_PRECISION, check_choice, check_input, check_int, softmax_float32

__all__ = ['PolarizedSelfAttention']

_OWNER = 'PolarizedSelfAttention'


def _mat(conv: nn.Conv2d) -> torch.Tensor:
    """The (out, in) matrix of a 1x1 convolution."""
    return conv.weight.flatten(1)


def _autocast_dtype(*tensors: torch.Tensor):
    """The tensors in the dtype autocast would give a matmul here (themselves otherwise)."""
    device = tensors[0].device.type
    if not autocast_enabled(device):
        return tensors
    dtype = autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)


def _outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^T b`` for (N, K, C) and (N, K, L): ``sum_k a[:, k, :, None] * b[:, k, None, :]``.

    With K = 1 or 2 this is a sum of outer products, which BLAS batched GEMM runs 5-15x slower
    than the broadcast multiply-adds (measured on CPU: K=2, C=48, L=3072, N=8)."""
    if a.shape[1] > 4:
        return torch.bmm(a.transpose(1, 2), b)
    out = a[:, 0, :, None] * b[:, 0, None, :]
    for k in range(1, a.shape[1]):
        out.addcmul_(a[:, k, :, None], b[:, k, None, :])
    return out


def _per_sample_linear(weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``weight @ y[i]`` for every sample of ``y`` (N, C, L) and ``weight`` (O, C): (N, O, L).

    One product, three kernels, chosen by what each costs in memory besides the (N, O, L)
    result (measured on CPU at N = 8 and 32, C = 384, L = 48):

    * ``bmm`` on the weights broadcast over N: nothing more in float32 inference (a 1x1
      ``conv1d`` allocates 3x the result at N = 32); but it copies a broadcast 16-bit
      operand (N x O x C) and its backward forms the weight gradient per sample;
    * ``conv1d`` (oneDNN): the 16-bit inference kernel (half of ``bmm``'s copy), and in
      float32 training (the weight gradient in one reduction: 1.1 vs 3.4 MiB at N = 8);
    * ``matmul``: 16-bit training, where it folds the batch into one GEMM for both
      gradients (0.8 MiB vs conv1d's 1.3 at N = 8, 1.4 vs 3.8 at N = 32); in float32 it would
      fold a copy of ``y``.
    Off the CPU ``conv1d`` (cuDNN) throughout.
    """
    weight = weight.to(y.dtype)
    training = torch.is_grad_enabled() and (weight.requires_grad or y.requires_grad)
    low = y.dtype in LOW_PRECISION
    if y.device.type == 'cpu' and training and low:
        return torch.matmul(weight, y)
    if y.device.type == 'cpu' and not training and not low:
        return torch.bmm(weight.expand(y.shape[0], -1, -1), y)
    return F.conv1d(y, weight.unsqueeze(-1))


class _FewRowProducts(torch.autograd.Function):
    """A few rows times the features ``feats`` (N, C, H, W) read as (N, C, L), L = H * W:
    ``rows @ feats`` for (N, K, C) rows (contracting channels: the pooled vectors of PSA
    applied at every position) or, with ``over_positions``, ``rows @ feats^T`` for (N, K, L)
    rows (contracting positions: PSA's softmax pooling, as a row-vector product, which BLAS
    runs ~10x faster than the matrix-vector ``feats @ rows^T``). Autograd's backward of
    ``bmm`` would form the feature gradient as a K-deep batched GEMM, slow for small K; this
    one uses :func:`_outer_sum`. The features are taken (and their gradient returned) in
    their own shape, so that every use of ``x`` in PSA sums its gradient in one buffer
    (through a flattened view, autograd would keep a second full-size one)."""

    @staticmethod
    def forward(ctx, rows, feats, over_positions: bool):
        flat = feats.flatten(2)
        with torch.autocast(rows.device.type, enabled=False):
            out = torch.bmm(rows, flat.transpose(1, 2) if over_positions else flat)
        ctx.save_for_backward(rows, feats)
        ctx.over_positions = over_positions
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, feats = ctx.saved_tensors
        flat = feats.flatten(2)
        grad = grad.to(rows.dtype)
        grad_rows = grad_feats = None
        if ctx.needs_input_grad[0]:
            grad_rows = torch.bmm(grad, flat if ctx.over_positions else flat.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_feats = _outer_sum(grad, rows) if ctx.over_positions else _outer_sum(rows, grad)
            grad_feats = grad_feats.view(feats.shape)
        return grad_rows, grad_feats, None


class _GateSum(torch.autograd.Function):
    """``x * a_sp + x * a_ch`` for ``x`` (N, C, H, W), a spatial gate ``a_sp`` (N, 1, H, W)
    and a channel gate ``a_ch`` (N, C, 1, 1), with one full-size tensor per pass: the output
    (written in place into the first product), and in backward the input gradient plus one
    ``grad * x`` reduced for both gates (autograd's backward of the two products forms four)."""

    @staticmethod
    def forward(ctx, x, a_sp, a_ch):
        ctx.save_for_backward(x, a_sp, a_ch)
        return torch.mul(x, a_sp).addcmul_(x, a_ch)

    @staticmethod
    def backward(ctx, grad):
        x, a_sp, a_ch = ctx.saved_tensors
        grad_x = grad_sp = grad_ch = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mul(grad, a_sp).addcmul_(grad, a_ch).to(x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            prod = grad * x
            grad_sp = prod.sum(dim=1, keepdim=True).to(a_sp.dtype)
            grad_ch = prod.sum(dim=(2, 3), keepdim=True).to(a_ch.dtype)
        return grad_x, grad_sp, grad_ch


# Under torch.compile / torch.export the plain ops below go to the compiler instead of the
# hand-written backward Functions (which speed up eager mode): torch 2.1's compiler cannot trace
# their ``ctx.needs_input_grad``, and a compiler plans the backward of plain ops itself.


def row_products(rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``rows @ feats`` for (N, K, C) and (N, C, L) (or (N, C, H, W) read as such), in
    autocast's dtype when it is on."""
    rows, feats = _autocast_dtype(rows, feats)
    if is_compiling():
        return torch.bmm(rows, feats.flatten(2))
    return _FewRowProducts.apply(rows, feats, False)


def weighted_pool(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``weights @ feats^T`` for (N, K, L) and (N, C, L) (or (N, C, H, W) read as such), in
    autocast's dtype when it is on."""
    weights, feats = _autocast_dtype(weights, feats)
    if is_compiling():
        return torch.bmm(weights, feats.flatten(2).transpose(1, 2))
    return _FewRowProducts.apply(weights, feats, True)


@MODELS.register_module()
class PolarizedSelfAttention(BaseModule):
    """Polarized Self-Attention (Liu et al. 2021, "Polarized Self-Attention: Towards
    High-quality Pixel-wise Regression", arXiv 2107.00782; code DeLightCMU/PSA).

    Two attention branches, each keeping full resolution along one axis and collapsing the
    other (C = ``in_channels``, all q/v convolutions 1x1 without bias):

    * channel branch: ``p = softmax_HW(conv_q_right(x))`` (C -> 1), ``ctx = conv_v_right(x) @
      p`` (C -> C/2, pooled over HW), ``a_ch = sigmoid(conv_up(ctx))`` (C/2 -> C), one weight
      per channel;
    * spatial branch: ``g = avgpool(conv_q_left(x))`` (C -> C/2), ``theta = conv_v_left(x)``
      (C -> C/2), ``a_sp = sigmoid(f(g, theta))`` with one weight per position.

    ``mode='parallel'`` returns ``x * a_ch + x * a_sp`` (``PSA_p``); ``mode='sequential'``
    returns ``spatial(channel(x))``, the spatial branch run on ``x * a_ch`` (``PSA_s``).

    ``formulation='released'`` (default; the published checkpoints need it) is the authors'
    code: ``PSA_p`` has ``a_sp = sigmoid(softmax_HW(g @ theta))`` and ``conv_up`` a single conv
    C/2 -> C; ``PSA_s`` has ``a_sp = sigmoid(g @ softmax_HW(theta))`` (softmax per channel of
    ``theta``, none on ``g``) and ``conv_up`` a bottleneck conv(C/2 -> C/8, bias) ->
    LayerNorm([C/8, 1, 1]) -> ReLU -> conv(C/8 -> C, bias).
    ``formulation='paper'`` follows the paper's equations (3)-(6): ``a_ch =
    sigmoid(LayerNorm_C(conv_up(ctx)))`` and ``a_sp = sigmoid(softmax_C/2(g) @ theta)``. The
    paper writes one ``W_z`` for both layouts, so in the paper form ``conv_up`` is always the
    single conv C/2 -> C without bias, followed by ``norm_up`` = LayerNorm([C, 1, 1]); the
    bottleneck exists only in the released ``PSA_s``.

    Parameter names and shapes are the released ones (``conv_q_right``, ``conv_v_right``,
    ``conv_q_left``, ``conv_v_left``, ``conv_up`` / ``conv_up.{0,1,3}``), so a released block's
    state dict (the keys after ``...deattn.``) loads with ``strict=True``.

    Args:
        in_channels (int): Input (= output) channels C. Must be even (the branches use C/2
            channels); with ``mode='sequential'`` and the released formulation at least 8 (the
            ``conv_up`` bottleneck has ``(C // 2) // 4`` channels, floored as released, e.g. 2
            for HRNet-W18's C=18).
        mode (str): ``'parallel'`` (PSA_p) or ``'sequential'`` (PSA_s).
        formulation (str): ``'released'`` (authors' code) or ``'paper'`` (paper equations).
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when omitted,
            the released init is used: kaiming normal (fan_in, relu) on the four q/v convs,
            PyTorch's default on ``conv_up``.

    Deviations from the released code:
        * The forward is reassociated (exact up to float rounding): every product in front of
          a softmax is linear in ``x``, so the pooled vectors are computed first and contracted
          with ``x`` (e.g. ``g @ conv_v_left(x) = (W_v_left^T g) . x``), and no C/2 x HW map is
          formed except ``theta`` in the released ``PSA_s``, which needs its per-channel
          softmax. In ``PSA_s`` the channel weights are folded into ``conv_v_left`` per sample
          instead of materialising ``x * a_ch``, while those N x C/2 x C weights are the smaller
          of the two (C/2 <= HW). The three C -> C/2 convolutions over HW (and
          their activations) become matrix-vector products; what remains over HW is reading
          ``x`` a few times (and, in the released ``PSA_s``, the ``theta`` convolution).
        * The contractions of a few vectors with ``x`` (:func:`row_products`,
          :func:`weighted_pool`) have their own backward, which forms the outer products with
          broadcast multiply-adds: batched GEMM with one or two rows is 5-15x slower on CPU.
        * Softmaxes of float16/bfloat16 logits are computed in float32, and ``PSA_p``'s
          output is combined in place (``(x * a_sp).addcmul_(x, a_ch)``, with a backward that
          forms one ``grad * x`` for both gates; same maths, fewer full-size tensors).
        * No ``inplanes``/``planes``/``kernel_size``/``stride`` arguments: the released blocks
          are always built with ``planes == inplanes``, 1x1 kernels and stride 1.
        * The released method names are swapped (``spatial_pool`` computes the channel
          branch); here the names say what is computed.
    """
    _abbr_ = 'polarized_attn'

    def __init__(self, in_channels: int, mode: str = 'parallel', formulation: str = 'released',
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('in_channels', in_channels, minimum=2, owner=_OWNER)
        check_choice('mode', mode, ('parallel', 'sequential'), owner=_OWNER)
        check_choice('formulation', formulation, ('released', 'paper'), owner=_OWNER)
        if in_channels % 2:
            raise ValueError(f'{_OWNER}: in_channels={in_channels} must be even (both branches '
                             f'use in_channels/2 channels)')
        bottleneck = mode == 'sequential' and formulation == 'released'
        half = in_channels // 2
        squeezed = half // 4  # floored as in the released code
        if bottleneck and squeezed < 1:
            raise ValueError(
                f"{_OWNER}: in_channels={in_channels} is too small for mode='sequential' and "
                f"formulation='released': its conv_up bottleneck has (in_channels // 2) // 4 "
                f'= 0 channels; use in_channels >= 8')
        self.in_channels = in_channels
        self.mode = mode
        self.formulation = formulation

        # channel branch ("right" in the released code)
        self.conv_q_right = nn.Conv2d(in_channels, 1, 1, bias=False)
        self.conv_v_right = nn.Conv2d(in_channels, half, 1, bias=False)
        if bottleneck:
            # indices 0, 1, 3 are the released checkpoint keys (2 is the parameter-free ReLU)
            self.conv_up = nn.Sequential(
                nn.Conv2d(half, squeezed, 1),
                nn.LayerNorm([squeezed, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(squeezed, in_channels, 1))
        else:
            self.conv_up = nn.Conv2d(half, in_channels, 1, bias=False)
        # the paper's LayerNorm over the C outputs of W_z, before the sigmoid
        self.norm_up = nn.LayerNorm([in_channels, 1, 1]) if formulation == 'paper' else None
        # spatial branch ("left"): g = conv_q_left, theta = conv_v_left
        self.conv_q_left = nn.Conv2d(in_channels, half, 1, bias=False)
        self.conv_v_left = nn.Conv2d(in_channels, half, 1, bias=False)

        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        # the released reset_parameters: kaiming normal fan_in/relu on q/v, conv_up untouched
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, a=0, mode='fan_in', nonlinearity='relu')

    # ------------------------------------------------------------------ channel branch
    def _channel_logits(self, ctx: torch.Tensor) -> torch.Tensor:
        """``conv_up`` (and the paper's LayerNorm) on the (N, C/2) context, as vectors."""
        if isinstance(self.conv_up, nn.Sequential):
            down, norm, up = self.conv_up[0], self.conv_up[1], self.conv_up[3]  # [2] is ReLU
            h = F.linear(ctx, _mat(down), down.bias)
            h = F.layer_norm(h, h.shape[-1:], norm.weight.flatten(), norm.bias.flatten(),
                             norm.eps)
            return F.linear(h.relu(), _mat(up), up.bias)
        z = F.linear(ctx, _mat(self.conv_up), self.conv_up.bias)
        if self.norm_up is not None:
            z = F.layer_norm(z, z.shape[-1:], self.norm_up.weight.flatten(),
                             self.norm_up.bias.flatten(), self.norm_up.eps)
        return z

    def _channel_weights(self, feats: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(N, C) channel attention from x (N, C, H, W) and the conv_q_right logits (N, HW).

        ``conv_v_right(x) @ p = W_v_right @ (x @ p)``: pool x first (N, C), project after.
        """
        # float32 softmax; the pooled result is a convex combination of x, so it cannot
        # overflow in float16 whatever HW is
        p = softmax_float32(q, -1).to(feats.dtype)
        pooled = weighted_pool(p.unsqueeze(1), feats).squeeze(1)
        ctx = F.linear(pooled, _mat(self.conv_v_right))
        return torch.sigmoid(self._channel_logits(ctx))

    # ------------------------------------------------------------------ gates
    def _spatial_query(self, mean: torch.Tensor) -> torch.Tensor:
        """(N, C/2) pooled query g = avgpool(conv_q_left(.)) from the (N, C) mean."""
        g = F.linear(mean, _mat(self.conv_q_left))
        if self.formulation == 'paper':
            # the paper's softmax over the C/2 channels of the pooled query
            g = softmax_float32(g, -1).to(mean.dtype)
        return g

    def gates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The spatial gate ``a_sp`` (N, 1, H, W) and the channel gate ``a_ch`` (N, C, 1, 1)
        of ``x``: :meth:`forward` returns ``x * a_sp + x * a_ch`` (``mode='parallel'``) or
        ``x * a_ch * a_sp`` (``'sequential'``, where ``a_sp`` is the spatial branch's gate of
        ``x * a_ch``). No input check (``forward`` and :meth:`attention_maps` make it)."""
        n, c, h, w = x.shape
        # x in the dtype of the contractions: under autocast one 16-bit copy for all of them
        feats, = _autocast_dtype(x)
        mean = x.mean(dim=(2, 3))
        if self.mode == 'parallel':
            # g @ conv_v_left(x) = (W_v_left^T g) . x: one C-vector per sample instead of a
            # C/2 x HW map; stacked with conv_q_right's weights so x is read once for both
            u = torch.matmul(self._spatial_query(mean), _mat(self.conv_v_left))
            rows = torch.stack([_mat(self.conv_q_right).expand(n, c), u], dim=1)
            maps = row_products(rows, feats)  # (N, 2, HW)
            a_ch = self._channel_weights(feats, maps[:, 0])
            s = maps[:, 1]
            if self.formulation == 'released':
                s = softmax_float32(s, -1).to(x.dtype)
        else:
            q = row_products(_mat(self.conv_q_right).expand(n, 1, c), feats).squeeze(1)
            a_ch = self._channel_weights(feats, q)
            # the spatial branch sees y = x * a_ch; its pooled mean is a_ch * mean(x)
            g = self._spatial_query(a_ch * mean)
            if self.formulation == 'released':
                # theta = conv_v_left(y) needs its per-channel softmax over HW, so this
                # C/2 x HW map is unavoidable here. theta = (W_v_left diag(a_ch)) x: a_ch
                # goes where it costs less memory, into per-sample weights (N x C/2 x C)
                # while C/2 <= HW, else into y (N x C x HW)
                flat = feats.flatten(2)
                if c // 2 <= h * w:
                    wv = _mat(self.conv_v_left).unsqueeze(0) * a_ch.unsqueeze(1)
                    theta = torch.bmm(wv, flat)
                else:
                    y = flat * a_ch.to(flat.dtype).unsqueeze(-1)
                    theta = _per_sample_linear(_mat(self.conv_v_left), y)
                # autocast's 16-bit copy of x is not needed past theta: release it before
                # the softmax's float32 copies (in inference nothing else holds it)
                feats = flat = y = None
                theta = softmax_float32(theta, -1).to(theta.dtype)
                s = row_products(g.unsqueeze(1), theta)
            else:
                # g @ conv_v_left(y) = ((W_v_left^T g) * a_ch) . x
                u = torch.matmul(g, _mat(self.conv_v_left)) * a_ch
                s = row_products(u.unsqueeze(1), feats)
        return torch.sigmoid(s).view(n, 1, h, w), a_ch.view(n, c, 1, 1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        a_sp, a_ch = self.gates(x)
        if self.mode == 'parallel':
            if is_compiling():
                return x * a_sp + x * a_ch
            if not torch.is_grad_enabled():  # inference: no backward to plan for
                return torch.mul(x, a_sp).addcmul_(x, a_ch)
            return _GateSum.apply(x, a_sp, a_ch)
        # one full-size allocation in inference (in training autograd keeps a copy of the
        # product for a_ch's gradient, as x * a_sp * a_ch would)
        return torch.mul(x, a_sp).mul_(a_ch)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """The two gates of :meth:`gates` for visualisation: ``dict(spatial=a_sp (N, H, W),
        channel=a_ch (N, C))``."""
        check_input(self, x, self.in_channels)
        a_sp, a_ch = self.gates(x)
        return dict(spatial=a_sp[:, 0], channel=a_ch.flatten(1))
