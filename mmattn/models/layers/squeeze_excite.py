"""Squeeze-and-Excitation (SE) channel attention."""
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import build_act_arg, check_input, check_int, rd_ratio_arg, reduced_channels

__all__ = ['SqueezeExcitation']


@MODELS.register_module()
class SqueezeExcitation(BaseModule):
    """Squeeze-and-Excitation block.

    Hu, Shen, Albanie, Sun, Wu. "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2019,
    arXiv:1709.01507 (released code: hujie-frank/SENet, Caffe).

    Computes a per-channel gate from the globally average-pooled feature and rescales the input::

        s = gate(fc2(act(fc1(avgpool(x)))))      # (N, C, 1, 1)
        out = x * s

    ``fc1`` maps ``C -> hidden`` and ``fc2`` maps ``hidden -> C``, both with bias, written as 1x1
    convolutions (identical to fully connected layers on a 1x1 map; the forward applies their
    weights as linear layers). ``hidden = int(C * rd_ratio)``, or ``make_divisible(C *
    rd_ratio, channels_divisor)`` when ``channels_divisor`` is given.

    Rounding with ``channels_divisor = d``: ``C * rd_ratio`` is rounded to the nearest multiple
    of ``d`` (halves up), not below ``d``, and one more ``d`` is added when that result is
    more than 10% below ``C * rd_ratio`` (``round_limit=0.9``: torchvision's / MobileNetV2's
    ``_make_divisible`` and timm's ``make_divisible`` default). timm's ``SEModule`` calls it
    with ``round_limit=0`` (nearest multiple, never raised), so the two differ where the
    nearest multiple is more than 10% low: at ``C=190``, ``rd_ratio=1/16``, ``d=8`` (``C *
    rd_ratio = 11.875``) timm's ``SEModule`` has 8 hidden channels and this module 16. Choose
    ``rd_ratio`` so that ``C * rd_ratio`` is already a multiple of ``d`` to match any of them.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Hidden width as a fraction of ``C`` (the paper's ``1 / r``).
            Default: 1/16. ``ratio=r`` (the divisor) is its deprecated spelling.
        channels_divisor (int, optional): Round the hidden width to a multiple of this (the
            rule above). Default: None, plain ``int(C * rd_ratio)`` as in the paper.
        act_cfg (dict | str | None): Activation between the two fc layers. Default: ReLU.
        gate_cfg (dict | str | None): Gating function. Default: Sigmoid.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Initialisation: PyTorch's defaults for the two convs (what PyTorch ports such as
    torchvision's ``SqueezeExcitation`` use); the Caffe release's fillers are not reproduced.

    Deviations from the released code:
        None in the computation. The released Caffe models use InnerProduct layers; the 1x1
        convs here hold the same weights reshaped to ``(out, in, 1, 1)``.
    """

    _abbr_ = 'se'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 channels_divisor: Optional[int] = None,
                 act_cfg: Union[dict, str, None] = dict(type='ReLU'),
                 gate_cfg: Union[dict, str, None] = dict(type='Sigmoid'),
                 init_cfg: Optional[Union[dict, list]] = None,
                 ratio: Optional[float] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        if channels_divisor is not None:
            check_int('channels_divisor', channels_divisor, 1, owner)
        self.in_channels = in_channels
        self.rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 16, 'ratio', ratio)
        # raises naming in_channels and rd_ratio when the bottleneck would be 0 channels wide
        self.hidden_channels = reduced_channels(in_channels, self.rd_ratio, owner,
                                                divisor=channels_divisor)
        self.fc1 = nn.Conv2d(in_channels, self.hidden_channels, 1, bias=True)
        self.act = build_act_arg(owner, 'act_cfg', act_cfg)
        self.fc2 = nn.Conv2d(self.hidden_channels, in_channels, 1, bias=True)
        self.gate = build_act_arg(owner, 'gate_cfg', gate_cfg)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        # PyTorch's default initialisation of the two 1x1 convs.
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``s`` (N, C, 1, 1) of :meth:`forward` (``forward(x) == x * s``)."""
        # the two 1x1 convs of a 1x1 map are linear layers on (N, C) (their weights viewed
        # as matrices): a cheaper kernel call each, same result
        s = x.mean(dim=(2, 3))
        s = self.act(F.linear(s, self.fc1.weight.flatten(1), self.fc1.bias))
        s = self.gate(F.linear(s, self.fc2.weight.flatten(1), self.fc2.bias))
        return s[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        return x * self.channel_gate(x)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """The channel gate of :meth:`channel_gate` as ``dict(spatial=None, channel=(N, C))``."""
        check_input(self, x, self.in_channels)
        return dict(spatial=None, channel=self.channel_gate(x).flatten(1))
