"""Convolutional Block Attention Module (CBAM)."""
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import (build_act_arg, build_norm_arg, channel_max, check_bool, check_input,
                      check_int, check_odd_kernel, global_max, reduced_channels)

__all__ = ['CBAM']


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

    Gradients of the max pools: in training the global max pool is a max with indices (as
    the release's ``F.max_pool2d``), whose backward writes into the arg-max only, 2.5x faster
    than ``amax``'s and without its full-size masks. Where several positions of a channel
    share its maximum exactly, the gradient goes to one of them rather than being split
    equally among them as ``amax``'s backward does (the values, and the gradient everywhere
    else, are the same). The channel-max map keeps ``amax``'s gradient (split on ties) and a
    boolean mask instead of the gated map for its backward.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        ratio (float): Reduction ratio ``r`` of the MLP, hidden width ``int(C / r)``.
            Default: 16.
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
                 ratio: float = 16,
                 kernel_size: int = 7,
                 no_spatial: bool = False,
                 act_cfg: Union[dict, str, None] = dict(type='ReLU'),
                 norm_cfg: dict = dict(type='BN', momentum=0.01, eps=1e-5),
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        check_odd_kernel('kernel_size', kernel_size, owner)  # 'same' padding
        check_bool('no_spatial', no_spatial, owner)
        self.in_channels = in_channels
        self.ratio = ratio
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.hidden_channels = reduced_channels(in_channels, ratio, owner)

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

    def _mlp(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(v)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = global_max(x)
        x = x * torch.sigmoid(self._mlp(avg) + self._mlp(mx))
        if self.no_spatial:
            return x
        # order [max, mean] as released, so released weights load unchanged
        pooled = torch.cat([channel_max(x), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_norm(self.spatial_conv(pooled)))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """The two gates of :meth:`forward`: ``dict(spatial=(N, H, W) or None with
        no_spatial, channel=(N, C))``. The spatial gate is the one computed on the
        channel-gated ``x * channel``, so ``forward(x) == x * channel * spatial`` (broadcast)."""
        check_input(self, x, self.in_channels)
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = global_max(x)
        a_c = torch.sigmoid(self._mlp(avg) + self._mlp(mx))
        if self.no_spatial:
            return dict(spatial=None, channel=a_c.flatten(1))
        y = x * a_c
        pooled = torch.cat([channel_max(y), y.mean(dim=1, keepdim=True)], dim=1)
        a_s = torch.sigmoid(self.spatial_norm(self.spatial_conv(pooled)))
        return dict(spatial=a_s[:, 0], channel=a_c.flatten(1))
