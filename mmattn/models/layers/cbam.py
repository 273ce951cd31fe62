"""Convolutional Block Attention Module (CBAM)."""
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import (build_act_arg, build_norm_arg, channel_max, check_bool, check_input,
                      check_int, check_odd_kernel, global_max, rd_ratio_arg, reduced_channels)

__all__ = ['CBAM', 'spatial_gate']


def spatial_gate(x: torch.Tensor, conv: nn.Module, norm: nn.Module) -> torch.Tensor:
    """The spatial gate of CBAM and of each branch of Triplet attention (its "Z-pool" gate):
    ``sigmoid(norm(conv([max_c(x), mean_c(x)])))``, (N, 1, H, W), the maps over dim 1 stacked
    in the released order ``[max, mean]``; the max is
    :func:`~mmattn.models.layers.helpers.channel_max` (with indices in training)."""
    mx = channel_max(x)
    return torch.sigmoid(norm(conv(torch.cat([mx, x.mean(dim=1, keepdim=True)], dim=1))))


@MODELS.register_module()
class CBAM(BaseModule):
    """Convolutional Block Attention Module: a channel gate followed by a spatial gate.

    Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module", ECCV 2018,
    arXiv:1807.06521 (released code: Jongchan/attention-module).

    Channel gate: one MLP ``C -> C/r -> C`` (ReLU between) shared by the average- and the
    max-pooled descriptors, summed, sigmoid::

        a_c = sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))     # (N, C, 1, 1)
        x'  = x * a_c

    Spatial gate on ``x'``: the channel-max and channel-mean maps, concatenated in that order,
    a ``k x k`` conv 2 -> 1 without bias, a norm, sigmoid::

        a_s = sigmoid(norm(conv([max_c(x'), mean_c(x')])))  # (N, 1, H, W)
        out = x' * a_s

    Both MLP layers have a bias, as the released ``nn.Linear`` layers do (so ``mlp``'s output
    bias enters the sum twice); they are written as 1x1 convs, the same weights reshaped.

    Gradients of the max pools: in training both are a max with indices, as in the release
    (``F.max_pool2d`` over the positions, ``torch.max`` over the channels), whose backward
    writes into the arg-max only: faster than ``amax``'s and without its full-size masks.
    Where several positions of a channel (or channels of a position) share the maximum
    exactly, the gradient goes to one of them rather than being split equally among them as
    ``amax``'s backward does (the values, and the gradient everywhere else, are the same).

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Hidden width of the MLP as a fraction of ``C`` (the paper's
            ``1 / r``), ``int(C * rd_ratio)``. Default: 1/16. ``ratio=r`` (the divisor) is
            its deprecated spelling.
        kernel_size (int): Odd size of the spatial conv. Default: 7.
        no_spatial (bool): Channel gate only. Default: False.
        act_cfg (dict | str | None): Activation inside the MLP. Default: ReLU.
        norm_cfg (dict): Norm after the spatial conv. Default: BatchNorm with the released
            ``momentum=0.01, eps=1e-5``. A BatchNorm in train mode cannot normalise a single
            value per channel (batch 1 with a 1x1 map) and raises as torch does; use eval mode.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Initialisation (the released ResNet's loop, applied to this module): MLP weights at
    PyTorch's default (``nn.Linear``'s and a 1x1 ``nn.Conv2d``'s coincide), all biases zero,
    spatial conv Kaiming-normal (fan_out), and the spatial norm's weight zero, so the spatial
    gate starts as a constant 0.5.

    Deviations from the released code:
        None in the computation. Only the 'avg' + 'max' pooling of the paper is offered (the
        release also has optional 'lp'/'lse' pooling, unused in its experiments); the spatial
        kernel size and the norm are configurable.
    """

    _abbr_ = 'cbam'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 kernel_size: int = 7,
                 no_spatial: bool = False,
                 act_cfg: Union[dict, str, None] = dict(type='ReLU'),
                 norm_cfg: dict = dict(type='BN', momentum=0.01, eps=1e-5),
                 init_cfg: Optional[Union[dict, list]] = None,
                 ratio: Optional[float] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        check_odd_kernel('kernel_size', kernel_size, owner)  # 'same' padding
        check_bool('no_spatial', no_spatial, owner)
        self.in_channels = in_channels
        self.rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 16, 'ratio', ratio)
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.hidden_channels = reduced_channels(in_channels, self.rd_ratio, owner)

        self.fc1 = nn.Conv2d(in_channels, self.hidden_channels, 1, bias=True)
        self.act = build_act_arg(owner, 'act_cfg', act_cfg)
        self.fc2 = nn.Conv2d(self.hidden_channels, in_channels, 1, bias=True)
        if not no_spatial:
            self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2,
                                          bias=False)
            self.spatial_norm = build_norm_arg(owner, norm_cfg, 1)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        for fc in (self.fc1, self.fc2):
            fc.reset_parameters()
            nn.init.zeros_(fc.bias)
        if not self.no_spatial:
            nn.init.kaiming_normal_(self.spatial_conv.weight, mode='fan_out')
            if getattr(self.spatial_norm, 'weight', None) is not None:
                nn.init.zeros_(self.spatial_norm.weight)
            if getattr(self.spatial_norm, 'bias', None) is not None:
                nn.init.zeros_(self.spatial_norm.bias)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate ``a_c`` (N, C, 1, 1) of ``x``."""
        n = x.shape[0]
        # the shared MLP (1x1 convs of a 1x1 map: linear layers) on both pooled vectors at once
        pooled = torch.cat([x.mean(dim=(2, 3)), global_max(x).flatten(1)])
        z = self.act(F.linear(pooled, self.fc1.weight.flatten(1), self.fc1.bias))
        z = F.linear(z, self.fc2.weight.flatten(1), self.fc2.bias)
        return torch.sigmoid(z[:n] + z[n:])[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        x = x * self.channel_gate(x)
        if self.no_spatial:
            return x
        return x * spatial_gate(x, self.spatial_conv, self.spatial_norm)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """The two gates of :meth:`forward`: ``dict(spatial=(N, H, W) or None with
        no_spatial, channel=(N, C))``. The spatial gate is the one computed on the
        channel-gated ``x * channel``, so ``forward(x) == x * channel * spatial`` (broadcast)."""
        check_input(self, x, self.in_channels)
        a_c = self.channel_gate(x)
        if self.no_spatial:
            return dict(spatial=None, channel=a_c.flatten(1))
        a_s = spatial_gate(x * a_c, self.spatial_conv, self.spatial_norm)
        return dict(spatial=a_s[:, 0], channel=a_c.flatten(1))
