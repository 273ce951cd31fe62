"""Efficient Channel Attention (ECA)."""
import math
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import check_input, check_int, check_positive, check_odd_kernel

__all__ = ['EfficientChannelAttention', 'eca_kernel_size']


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The paper's adaptive kernel size: ``t = int(|(log2(C) + b) / gamma|)``, made odd by
    rounding an even ``t`` up (so C=64 -> 3 and C=128, 256, 512 -> 5 with gamma=2, b=1)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@MODELS.register_module()
class EfficientChannelAttention(BaseModule):
    """Efficient Channel Attention: an SE-like gate without dimensionality reduction.

    Wang, Wu, Zhu, Li, Zuo, Hu. "ECA-Net: Efficient Channel Attention for Deep Convolutional
    Neural Networks", CVPR 2020, arXiv:1910.03151 (released code: BangguWu/ECANet).

    The globally average-pooled feature is read as a length-``C`` sequence and convolved by a
    single 1-D kernel of size ``k`` (no bias, zero padding ``(k - 1) / 2``), so each channel's
    gate depends on its ``k`` neighbouring channels::

        y = conv1d(avgpool(x) as (N, 1, C))      # local cross-channel interaction
        out = x * sigmoid(y)

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        kernel_size (int, optional): Odd kernel size ``k``. Default: None, the paper's adaptive
            size from ``C``, ``gamma`` and ``b`` (see :func:`eca_kernel_size`).
        gamma (float): ``gamma`` of the adaptive rule. Default: 2.
        b (float): ``b`` of the adaptive rule. Default: 1.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    The chosen size is exposed as ``self.kernel_size``. Initialisation: PyTorch's default for
    ``Conv1d`` (the released ResNets re-initialise only ``Conv2d``, leaving ECA's ``Conv1d`` at
    the default).

    Deviations from the released code:
        None in the computation. The released ``eca_layer`` defaults to ``k_size=3``; here the
        default is the paper's adaptive kernel (3 for C=64, 5 for C=128..512).

    Loading released weights: set ``kernel_size`` per stage as the release built it (a
    checkpoint holds it only as the length of ``conv.weight``, so a wrong size fails with a
    shape mismatch). BangguWu/ECANet's ``eca_resnet*`` take one size per stage, ``k_size=[3,
    3, 3, 3]`` by default, which ``main.py --ksize`` overrides: its README trains ResNet-50
    with ``--ksize 3557``, and the released checkpoints are named after that list (ResNet-50
    ``k3557``, ResNet-101/152 ``k3357``). The adaptive default here gives 5, 5, 5, 7 at the
    Bottleneck widths 256, 512, 1024, 2048, so the first stage of ResNet-50 needs
    ``kernel_size=3`` (the first two of ResNet-101/152), and a model built with the release's
    default sizes needs ``kernel_size=3`` in every stage.
    """

    _abbr_ = 'eca'

    def __init__(self,
                 in_channels: int,
                 kernel_size: Optional[int] = None,
                 gamma: float = 2,
                 b: float = 1,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        check_positive('gamma', gamma, owner)
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f'{owner}: b must be a number, got {type(b).__name__} ({b!r})')
        if kernel_size is None:
            kernel_size = eca_kernel_size(in_channels, gamma, b)
        else:
            # an even kernel cannot be centred on its channel with symmetric padding
            check_odd_kernel('kernel_size', kernel_size, owner)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.gamma = gamma
        self.b = b
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        self.conv.reset_parameters()  # PyTorch default, as in the released models

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) of :meth:`forward` (``forward(x) == x * gate``)."""
        # channels as a 1-D sequence: the released transposed view (N, 1, C) of the pooled
        # (N, C, 1) map, on which Conv1d runs faster than on a reshaped copy
        y = x.mean(dim=(2, 3), keepdim=True).squeeze(-1)
        y = self.conv(y.transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return torch.sigmoid(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        return x * self.channel_gate(x)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """The channel gate of :meth:`channel_gate` as ``dict(spatial=None, channel=(N, C))``."""
        check_input(self, x, self.in_channels)
        return dict(spatial=None, channel=self.channel_gate(x).flatten(1))
