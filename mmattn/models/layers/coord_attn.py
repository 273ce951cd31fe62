"""Coordinate attention."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import (build_act_arg, build_norm_arg, check_input, check_int, rd_ratio_arg,
                      reduced_channels)

__all__ = ['CoordinateAttention']


@MODELS.register_module()
class CoordinateAttention(BaseModule):
    """Coordinate attention: channel attention factorised along the two spatial directions.

    Hou, Zhou, Feng. "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021,
    arXiv:2103.02907 (released code: houqb/CoordAttention).

    The input is average-pooled along W and along H, giving two direction-aware descriptors
    that keep the position along the other axis. They are concatenated along the spatial axis,
    encoded jointly, split again and turned into one gate per direction::

        x_h = mean_W(x)                       # (N, C, H, 1)
        x_w = mean_H(x) transposed            # (N, C, W, 1)
        y   = act(norm(conv1([x_h; x_w])))    # 1x1 conv C -> mip = max(min_mip, C * rd_ratio)
        y_h, y_w = split(y, [H, W])
        a_h = sigmoid(conv_h(y_h))            # (N, C, H, 1)
        a_w = sigmoid(conv_w(y_w)) transposed # (N, C, 1, W)
        out = x * a_h * a_w

    All three 1x1 convs have a bias (as released, ``conv1`` too despite the norm after it).

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Width of the shared encoding as a fraction of ``C`` (floored, the
            released ``C // 32``). Default: 1/32. ``reduction=r`` (the divisor) is its
            deprecated spelling.
        min_mip (int): Lower bound of the encoding width ``mip``. Default: 8.
        norm_cfg (dict): Norm after ``conv1``. Default: BatchNorm. It normalises ``H + W >= 2``
            values per sample, so it also works in train mode on a batch of one.
        act_cfg (dict | str | None): Activation of the encoding. Default: h-swish
            (``x * relu6(x + 3) / 6``).
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Initialisation (the released MobileNetV2-CA's): conv weights ``N(0, 2 / (k*k*out))``, i.e.
    Kaiming-normal fan_out, conv biases zero, norm weight one and bias zero.

    Deviations from the released code:
        None.
    """

    _abbr_ = 'coord'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 min_mip: int = 8,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Union[dict, str, None] = dict(type='HSwish'),
                 init_cfg: Optional[Union[dict, list]] = None,
                 reduction: Optional[float] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        check_int('min_mip', min_mip, 1, owner)
        self.in_channels = in_channels
        self.rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 32, 'reduction', reduction)
        self.mip = max(min_mip, reduced_channels(in_channels, self.rd_ratio, owner, min_channels=0))
        self.conv1 = nn.Conv2d(in_channels, self.mip, 1, bias=True)
        self.norm = build_norm_arg(owner, norm_cfg, self.mip)
        self.act = build_act_arg(owner, 'act_cfg', act_cfg)
        self.conv_h = nn.Conv2d(self.mip, in_channels, 1, bias=True)
        self.conv_w = nn.Conv2d(self.mip, in_channels, 1, bias=True)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        for conv in (self.conv1, self.conv_h, self.conv_w):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out')
            nn.init.zeros_(conv.bias)
        if getattr(self.norm, 'weight', None) is not None:
            nn.init.ones_(self.norm.weight)
        if getattr(self.norm, 'bias', None) is not None:
            nn.init.zeros_(self.norm.bias)

    def gates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two directional gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W) of ``x``
        (``forward(x) == x * a_h * a_w``)."""
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)                      # (N, C, H, 1)
        x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (N, C, W, 1)
        # one shared encoding of both directions, so conv1/norm see H + W positions
        y = self.act(self.norm(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))                          # (N, C, H, 1)
        a_w = torch.sigmoid(self.conv_w(y_w.permute(0, 1, 3, 2)))      # (N, C, 1, W)
        return a_h, a_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        a_h, a_w = self.gates(x)
        return x * a_h * a_w

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """Summaries of the gate ``G = a_h * a_w`` of :meth:`gates` (one weight per channel
        and position, ``forward(x) == x * G``), which is neither purely spatial nor purely
        per channel: ``dict(spatial=mean of G over channels (N, H, W), channel=mean of G over
        positions (N, C))``."""
        check_input(self, x, self.in_channels)
        a_h, a_w = self.gates(x)
        # mean over H and W of a product of an H-only and a W-only factor factorises
        return dict(spatial=(a_h * a_w).mean(dim=1),
                    channel=a_h.mean(dim=(2, 3)) * a_w.mean(dim=(2, 3)))
