"""DANet: position attention (PAM), channel attention (CAM) and the two combined."""
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from mmattn.utils.torch_compat import autocast_enabled

from .helpers import check_input, check_int, rd_ratio_arg, reduced_channels
from .softmax_attention import softmax_attention

__all__ = ['DANetPositionAttention', 'DANetChannelAttention', 'DANetDualAttention']


@MODELS.register_module()
class DANetPositionAttention(BaseModule):
    """DANet position attention module (PAM): self-attention over all spatial positions.

    Fu, Liu, Tian, Li, Bao, Fang, Lu. "Dual Attention Network for Scene Segmentation",
    CVPR 2019, arXiv:1809.02983 (released code: junfu1115/DANet, ``PAM_Module``).

    With 1x1 convs (with bias) ``B = query_conv(x)``, ``D = key_conv(x)`` (``C -> C *
    rd_ratio``, the released ``C // 8``) and ``V = value_conv(x)`` (``C -> C``)::

        S = softmax_j(B_i . D_j)          # (HW x HW), rows sum to 1; no 1/sqrt(d) scaling
        out_i = gamma * sum_j S_ij V_j + x_i

    ``gamma`` is a learnable scalar initialised to 0, so the module starts as the identity.
    ``S`` is never materialised (:func:`~mmattn.models.layers.softmax_attention.softmax_attention`,
    ``scale=1``): on CPU in blocks of query rows with the explicit formulation's arithmetic (the
    flash kernel would need ``B``, ``D`` padded to ``C`` channels, 8x their multiply-adds), on
    CUDA in ``scaled_dot_product_attention``. Memory is ``O(HW * C)`` plus one
    ``rows x HW`` block instead of ``O((HW)^2)``.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Width of the query/key convs as a fraction of ``C`` (floored).
            Default: 1/8. ``reduction=r`` (the divisor) is its deprecated spelling.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Parameter names follow the release (``query_conv``, ``key_conv``, ``value_conv``,
    ``gamma``), so its ``PAM_Module`` weights load unchanged. Initialisation: PyTorch's default
    for the convs (the release does not re-initialise them), ``gamma = 0``.

    Deviations from the released code:
        None in the computation (the release forms ``S`` explicitly with ``bmm`` + softmax; the
        blockwise and fused computations give the same result and gradients, tested in
        float64).
    """

    _abbr_ = 'danet_pam'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 init_cfg: Optional[Union[dict, list]] = None,
                 reduction: Optional[float] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        self.in_channels = in_channels
        self.rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 8, 'reduction', reduction)
        self.key_channels = reduced_channels(in_channels, self.rd_ratio, owner)
        self.query_conv = nn.Conv2d(in_channels, self.key_channels, 1)
        self.key_conv = nn.Conv2d(in_channels, self.key_channels, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        for conv in (self.query_conv, self.key_conv, self.value_conv):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """``V S^T`` as an (N, C, H, W) map: the term ``gamma`` scales (no input check)."""
        n, c, h, w = x.shape
        query = self.query_conv(x).flatten(2).transpose(1, 2)  # (N, HW, C/r)
        key = self.key_conv(x).flatten(2).transpose(1, 2)  # (N, HW, C/r)
        value = self.value_conv(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        # (N, C, HW) as released (V S^T from the transposed views, no copy where S is formed)
        out = softmax_attention(query, key, value, scale=1.0, transpose_out=True)
        return out.reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        # x + gamma * attention in one kernel and one allocation
        return torch.addcmul(x, self.gamma, self.attention(x))


@MODELS.register_module()
class DANetChannelAttention(BaseModule):
    """DANet channel attention module (CAM): attention between channels, no projections.

    Fu, Liu, Tian, Li, Bao, Fang, Lu. "Dual Attention Network for Scene Segmentation",
    CVPR 2019, arXiv:1809.02983 (released code: junfu1115/DANet, ``CAM_Module``).

    With ``X`` the input reshaped to ``(C, HW)``::

        E = X X^T                                   # (C x C) channel affinities
        A = softmax(max(E) - E, dim=-1)             # released form; max over the last dim
        out = gamma * (A X) + x

    ``gamma`` (the paper's ``beta``) is a learnable scalar initialised to 0 (identity at init).
    Softmax is invariant to a per-row shift, so ``softmax(max(E) - E) == softmax(-E)``; this is
    what is computed (the row max is only a stabiliser, which ``softmax`` applies itself).
    ``E`` and the softmax are evaluated in float32 under autocast or for half/bfloat16 inputs:
    ``E`` sums ``HW`` products and overflows float16 on large maps.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    The parameter is named ``gamma`` as in the release, so ``CAM_Module`` weights load.

    Deviations from the released code:
        None in the computation. The paper writes ``softmax(E)`` (attending to similar
        channels); the release, which produced the published numbers, uses ``max(E) - E``
        (i.e. ``softmax(-E)``, attending to dissimilar channels), and that is followed here.
    """

    _abbr_ = 'danet_cam'

    def __init__(self, in_channels: int, init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        check_int('in_channels', in_channels, 1, type(self).__name__)
        self.in_channels = in_channels
        self.gamma = nn.Parameter(torch.zeros(1))
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        nn.init.zeros_(self.gamma)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """``A X`` as an (N, C, H, W) map: the term ``gamma`` scales (no input check)."""
        feat = x.flatten(2)  # (N, C, HW)
        device_type = x.device.type
        if (autocast_enabled(device_type)
                or feat.dtype in (torch.float16, torch.bfloat16)):
            with torch.autocast(device_type, enabled=False):
                feat32 = feat.float()
                energy = torch.bmm(feat32, feat32.transpose(1, 2))
                attn = torch.softmax(-energy, dim=-1).to(feat.dtype)
        else:
            energy = torch.bmm(feat, feat.transpose(1, 2))
            attn = torch.softmax(-energy, dim=-1)
        return torch.bmm(attn, feat).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        return torch.addcmul(x, self.gamma, self.attention(x))


@MODELS.register_module()
class DANetDualAttention(BaseModule):
    """DANet dual attention: position (PAM) and channel (CAM) attention on the same input,
    summed, as a residual plug-in block.

    Fu, Liu, Tian, Li, Bao, Fang, Lu. "Dual Attention Network for Scene Segmentation",
    CVPR 2019, arXiv:1809.02983 (released code: junfu1115/DANet, ``DANetHead``).

    Computes, with the two submodules' attention terms and scalars (both 0 at init)::

        out = x + pam.gamma * PAM_attn(x) + cam.gamma * CAM_attn(x)
            = pam(x) + cam(x) - x

    i.e. the sum of the two branches with the input counted once, so the block is the identity
    at init and can be inserted anywhere in a backbone or neck.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Query/key width of the position attention as a fraction of ``C``.
            Default: 1/8. ``reduction=r`` (the divisor) is its deprecated spelling.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Submodules ``pam`` (:class:`DANetPositionAttention`) and ``cam``
    (:class:`DANetChannelAttention`).

    Deviations from the released code:
        The released ``DANetHead`` is a segmentation head: it reduces the backbone feature to
        ``C/4`` with two separate 3x3 conv-BN-ReLU stems, runs PAM on one and CAM on the other,
        passes each output (which includes its own ``+ x``) through another 3x3 conv-BN-ReLU and
        sums those. This block keeps only the attention part on a shared input and sums
        ``pam(x) + cam(x)`` with the input counted once; wrap it with convs to rebuild the head
        (mmseg's ``DAHead`` is that head).
    """

    _abbr_ = 'danet'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 init_cfg: Optional[Union[dict, list]] = None,
                 reduction: Optional[float] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        self.rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 8, 'reduction', reduction)
        reduced_channels(in_channels, self.rd_ratio, owner)  # raises naming this class
        self.in_channels = in_channels
        self.pam = DANetPositionAttention(in_channels, rd_ratio=self.rd_ratio)
        self.cam = DANetChannelAttention(in_channels)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        self.pam.init_weights()
        self.cam.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        out = torch.addcmul(x, self.pam.gamma, self.pam.attention(x))
        return out.addcmul_(self.cam.gamma, self.cam.attention(x))
