"""ACmix: self-attention and convolution sharing one set of 1x1 projections."""
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from mmattn.utils.torch_compat import register_load_state_dict_pre_hook

from .helpers import check_divisible, check_input, check_int, softmax_float32

__all__ = ['ACmix']


def _check_odd(name: str, value, owner: str) -> int:
    check_int(name, value, 1, owner)
    if value % 2 == 0:
        raise ValueError(f'{owner}: {name} must be odd (the window is centred on each pixel), '
                         f'got {value}')
    return value


def _zero_bias_if_absent(module, state_dict, prefix, *args):
    """Load-state-dict pre-hook: checkpoints of the released code have no ``dep_conv.bias``
    (its init deleted it, so it was zero in effect); give them that zero bias so they load
    with ``strict=True``."""
    weight, bias = prefix + 'dep_conv.weight', prefix + 'dep_conv.bias'
    if weight in state_dict and bias not in state_dict:
        state_dict[bias] = torch.zeros_like(module.dep_conv.bias)


@MODELS.register_module()
class ACmix(BaseModule):
    """ACmix block of Pan et al. 2022, "On the Integration of Self-Attention and Convolution"
    (CVPR 2022, arXiv 2111.14556).

    Three shared 1x1 convolutions give ``q``, ``k``, ``v`` (``in_channels -> out_channels``, with
    bias). Both paths below read them, and the output is ``rate1 * att + rate2 * conv`` with the
    two scalar rates learned (initialised to 0.5).

    *Attention path.* ``head`` heads of ``head_dim = out_channels / head`` channels attend over a
    ``kernel_att x kernel_att`` window (dilated by ``dilation``) around each pixel, with the
    borders filled by reflection padding of ``k`` and ``v``. A 1x1 conv ``conv_p`` (2 ->
    head_dim) maps the pixel coordinates, normalised to [-1, 1] (x first, then y), to a
    positional map ``pe`` shared by all heads. For a pixel ``p`` and a window offset ``j``::

        logit_j = (q_p / sqrt(head_dim)) . (k_{p+j} + pe_p - pe_{p+j})
        att     = sum_j softmax_j(logit) * v_{p+j}

    which is what the released code computes. The term ``q_p . pe_p`` is the same for every
    ``j`` of the window and cancels in the softmax, so this implementation drops it exactly and
    uses ``logit_j = q_p . pad(k - pe)_{p+j}`` (reflection padding is linear, so padding
    ``k - pe`` equals ``pad(k) - pad(pe)``).

    *Convolution path.* The ``3 * head`` maps of ``head_dim`` channels (q heads, then k heads,
    then v heads, unscaled) are mixed by a 1x1 conv ``fc`` (``3 * head -> kernel_conv ** 2``, no
    bias) applied across that head axis, giving ``kernel_conv ** 2`` maps per channel of a head;
    a grouped conv ``dep_conv`` (``kernel_conv ** 2 * head_dim -> out_channels``,
    ``groups=head_dim``, kernel ``kernel_conv``, bias) whose kernels start as the
    ``kernel_conv ** 2`` shift operators then sums the shifted maps, as the paper's
    "shift and summation" view of a convolution.

    *Cost.* The released code unfolds ``k`` and ``v`` ``kernel_att ** 2``-fold (49 copies of
    each at the default 7). Here a Python loop (static, so ``torch.export`` unrolls it) visits
    the ``kernel_att ** 2`` window offsets; each offset is a strided slice of the padded map,
    a view that copies nothing. The logits of an offset are ``(q * k_shifted).sum(channels)``
    and the output accumulates ``att_j * v_shifted`` with ``addcmul``. Kept for backward: the
    padded ``k`` and ``v``, ``q`` and the ``head * kernel_att ** 2`` attention weights per
    pixel (``head_dim`` times less than one unfolded ``k``); the transients are one
    projection-sized product per offset, freed as the loop moves on.
    The result equals the released formulation up to floating-point rounding.

    Args:
        in_channels (int): Channels ``C`` of the input ``(N, C, H, W)``.
        out_channels (int, optional): Channels of q, k, v and of the output. Defaults to
            ``in_channels``. Must be divisible by ``head``.
        kernel_att (int): Side of the attention window (odd). Default 7.
        head (int): Number of attention heads. Default 4.
        kernel_conv (int): Kernel side of the convolution path (odd). Default 3.
        stride (int): Output stride of both paths (queries and the grouped conv are strided,
            as in the released code); the output is ``ceil(H / stride) x ceil(W / stride)``.
            Default 1 (output shape = input shape when ``out_channels == in_channels``).
        dilation (int): Dilation of the attention window (the convolution path is not
            dilated, as released). Default 1.
        init_cfg (dict or list[dict], optional): mmengine initialisation config; when given it
            replaces the released initialisation described below.

    Initialisation (no ``init_cfg``): q/k/v, ``conv_p`` and ``fc`` keep PyTorch's default
    initialisation, ``rate1 = rate2 = 0.5``, ``dep_conv``'s kernels are the shift operators
    (``weight[o, i] = 1`` at ``(i // kernel_conv, i % kernel_conv)``, else 0) and its bias is 0.

    Input: ``(N, in_channels, H, W)`` with ``H, W > dilation * (kernel_att - 1) / 2`` (the
    reflection padding needs the map to be larger than the padding).

    Deviations from the released code (LeapLabTHU/ACmix), all fixes of defects:

    - no hard-coded CUDA transfer (the released forward moves the coordinate grid with a
      ``.cuda`` call); the coordinates are created on ``x.device`` with ``x.dtype``;
    - ``dep_conv`` keeps its bias, zero-initialised (the released init helper returns None and
      its result is assigned to the bias, which deletes it); a released checkpoint, which has
      no ``dep_conv.bias``, still loads with ``strict=True`` and gets a zero bias;
    - ``dep_conv``'s padding is ``(kernel_conv - 1) / 2`` instead of a fixed 1, so
      ``kernel_conv != 3`` keeps the map size;
    - no ``kernel_att ** 2``-fold unfold of ``k`` and ``v`` (same result, far less memory, see
      *Cost*);
    - ``dilation > 1`` dilates the window (the released code pads for a dilated window but
      unfolds an undilated one, and fails on a shape mismatch);
    - with ``stride > 1`` the output is ``ceil(H / stride)`` (the released code reshapes to
      ``H // stride`` and fails when ``stride`` does not divide ``H``);
    - under float16/bfloat16 autocast the softmax of the window and its weighted sum of ``v``
      run in float32.
    """

    _abbr_ = 'acmix'

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_att: int = 7,
                 head: int = 4,
                 kernel_conv: int = 3,
                 stride: int = 1,
                 dilation: int = 1,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        out_channels = in_channels if out_channels is None else out_channels
        check_int('out_channels', out_channels, 1, owner)
        check_int('head', head, 1, owner)
        check_divisible('out_channels', out_channels, 'head', head, owner)
        _check_odd('kernel_att', kernel_att, owner)
        _check_odd('kernel_conv', kernel_conv, owner)
        check_int('stride', stride, 1, owner)
        check_int('dilation', dilation, 1, owner)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_att = kernel_att
        self.head = head
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.head_dim = out_channels // head
        self.pad_att = dilation * (kernel_att - 1) // 2

        # parameter names follow the released code, so its checkpoints load as they are
        self.rate1 = nn.Parameter(torch.full((1, ), 0.5))
        self.rate2 = nn.Parameter(torch.full((1, ), 0.5))
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * head, kernel_conv**2, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv**2 * self.head_dim, out_channels, kernel_conv, stride=stride,
            padding=(kernel_conv - 1) // 2, groups=self.head_dim, bias=True)
        register_load_state_dict_pre_hook(self, _zero_bias_if_absent)
        self.init_weights()

    def init_weights(self):
        """The released initialisation (rates 0.5, shift-operator kernels, zero conv bias),
        or ``init_cfg`` when one is given."""
        if self.init_cfg:
            super().init_weights()
            return
        kc = self.kernel_conv
        with torch.no_grad():
            self.rate1.fill_(0.5)
            self.rate2.fill_(0.5)
            weight = self.dep_conv.weight  # (out_channels, kc * kc, kc, kc)
            weight.zero_()
            for i in range(kc * kc):
                weight[:, i, i // kc, i % kc] = 1.0
            self.dep_conv.bias.zero_()

    def min_size(self) -> int:
        """Smallest H and W the forward accepts (reflection padding needs ``H, W > pad``)."""
        return self.pad_att + 1

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, '
                f'kernel_att={self.kernel_att}, head={self.head}, '
                f'kernel_conv={self.kernel_conv}, stride={self.stride}, '
                f'dilation={self.dilation}')

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels, min_size=self.min_size())
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        pe = self._positional(x.shape[-2], x.shape[-1], x)
        out_att = self._attention(q, k, v, pe)
        out_conv = self._convolution(q, k, v)
        return self.rate1 * out_att + self.rate2 * out_conv

    def _positional(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """``conv_p`` of the normalised coordinates: (1, head_dim, h, w)."""
        loc_w = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
        loc_h = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype)
        loc = torch.stack([loc_w.expand(h, w), loc_h.unsqueeze(1).expand(h, w)])
        return self.conv_p(loc.unsqueeze(0))

    def _shifted(self, padded: torch.Tensor, row: int, col: int, h_out: int,
                 w_out: int) -> torch.Tensor:
        """Window offset ``(row, col)`` of every output pixel: a strided view (no copy) of the
        padded map, (B, D, h_out, w_out)."""
        s, d = self.stride, self.dilation
        y, x = row * d, col * d
        return padded[:, :, y:y + (h_out - 1) * s + 1:s, x:x + (w_out - 1) * s + 1:s]

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   pe: torch.Tensor) -> torch.Tensor:
        n, c, h, w = q.shape
        s, ka, pad = self.stride, self.kernel_att, self.pad_att
        bh = n * self.head
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        offsets = [(i, j) for i in range(ka) for j in range(ka)]  # row-major, as F.unfold

        q = q.reshape(bh, self.head_dim, h, w)
        if s > 1:
            q = q[:, :, ::s, ::s]
        q = q * self.head_dim**-0.5
        # q_p . (k_{p+j} + pe_p - pe_{p+j}): the q_p . pe_p term is constant over the window
        # and cancels in the softmax; pad(k) - pad(pe) = pad(k - pe)
        k_pe = F.pad(k.reshape(bh, self.head_dim, h, w) - pe, (pad, ) * 4, mode='reflect')
        v_pad = F.pad(v.reshape(bh, self.head_dim, h, w), (pad, ) * 4, mode='reflect')

        logits = torch.stack(
            [(q * self._shifted(k_pe, i, j, h_out, w_out)).sum(1) for i, j in offsets], dim=1)
        # (bh, ka * ka, h_out, w_out); for 16-bit inputs the softmax and the weighted sum of
        # the window accumulate in float32
        att = softmax_float32(logits, 1)

        out = None
        for idx, (i, j) in enumerate(offsets):
            weight = att[:, idx:idx + 1]  # (bh, 1, h_out, w_out)
            value = self._shifted(v_pad, i, j, h_out, w_out)
            out = weight * value if out is None else out.addcmul(weight, value)
        return out.reshape(n, c, h_out, w_out)

    def _convolution(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, c, h, w = q.shape
        heads = [t.reshape(n, self.head, self.head_dim, h * w) for t in (q, k, v)]
        mixed = self.fc(torch.cat(heads, dim=1))  # (n, kc^2, head_dim, h*w)
        # channel d * kc^2 + i: the i-th mixed map of channel d, so group d of dep_conv sees
        # the kc^2 maps of its channel
        mixed = mixed.transpose(1, 2).reshape(n, -1, h, w)
        return self.dep_conv(mixed)
