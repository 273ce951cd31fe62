"""Triplet attention."""
from typing import List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .cbam import spatial_gate
from .helpers import build_norm_arg, check_bool, check_input, check_int, check_odd_kernel

__all__ = ['TripletAttention']


class _ZPoolGate(nn.Module):
    """The parameters of one branch: a ``k x k`` conv 2 -> 1 without bias and a norm, used by
    :func:`~mmattn.models.layers.cbam.spatial_gate` (Z-pool over dim 1, conv, norm,
    sigmoid)."""

    def __init__(self, kernel_size: int, norm: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, 1, A, B) of an (N, D, A, B) view (pooled over D)."""
        return spatial_gate(x, self.conv, self.norm)


@MODELS.register_module()
class TripletAttention(BaseModule):
    """Triplet attention: three Z-pool gates, each on a rotated view of the tensor.

    Misra, Nalamada, Arasanipalai, Hou. "Rotate to Attend: Convolutional Triplet Attention
    Module", WACV 2021, arXiv:2010.03045 (released code: landskape-ai/triplet-attention).

    Each branch permutes ``x`` so that one of the three axes (C, H, W) becomes the "channel"
    axis, Z-pools over it (concat of max and mean), convolves the two maps ``k x k`` to one
    (no bias), normalises, applies sigmoid, multiplies, and permutes back:

    - ``cw``: pool over H, attention map over (C, W)   (released ``ChannelGateH``);
    - ``hc``: pool over W, attention map over (H, C)   (released ``ChannelGateW``);
    - ``hw``: pool over C, attention map over (H, W)   (released ``SpatialGate``).

    ``out`` is the mean of the three branch outputs, or of ``cw`` and ``hc`` with
    ``no_spatial=True``. The rotations are ``permute`` views (the released axis orders, so the
    conv weights are interchangeable), hence memory-format neutral. The rotated branches run on
    (C, W) and (H, C) maps, so their norm statistics mix channels and positions.

    Args:
        in_channels (int): Channels ``C`` of the input (and output); the module's parameters
            do not depend on it, it is checked against the input.
        kernel_size (int): Odd size of the three convs. Default: 7.
        no_spatial (bool): Drop the (H, W) branch. Default: False.
        norm_cfg (dict): Norm after each conv. Default: BatchNorm with the released
            ``momentum=0.01, eps=1e-5``. A BatchNorm in train mode cannot normalise a single
            value per channel (batch 1 with a 1x1 map in the ``hw`` branch) and raises as torch
            does; use eval mode.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Initialisation (the released ResNet's loop, applied to this module): conv weights
    Kaiming-normal (fan_out); norm biases zero; norm weights one in ``cw`` and ``hc`` but zero
    in ``hw`` (the loop zeroes norm weights under any key containing ``SpatialGate``), so the
    spatial branch starts as a constant 0.5 gate.

    Deviations from the released code:
        None in the computation. Kernel size and norm are configurable; the released module's
        unused ``gate_channels``/``reduction_ratio``/``pool_types`` arguments are dropped.
    """

    _abbr_ = 'triplet'

    def __init__(self,
                 in_channels: int,
                 kernel_size: int = 7,
                 no_spatial: bool = False,
                 norm_cfg: dict = dict(type='BN', momentum=0.01, eps=1e-5),
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        check_odd_kernel('kernel_size', kernel_size, owner)  # 'same' padding
        check_bool('no_spatial', no_spatial, owner)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.cw = _ZPoolGate(kernel_size, build_norm_arg(owner, norm_cfg, 1))
        self.hc = _ZPoolGate(kernel_size, build_norm_arg(owner, norm_cfg, 1))
        self.hw = (None if no_spatial else
                   _ZPoolGate(kernel_size, build_norm_arg(owner, norm_cfg, 1)))
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        for branch, norm_weight in ((self.cw, 1.0), (self.hc, 1.0), (self.hw, 0.0)):
            if branch is None:
                continue
            nn.init.kaiming_normal_(branch.conv.weight, mode='fan_out')
            if getattr(branch.norm, 'weight', None) is not None:
                nn.init.constant_(branch.norm.weight, norm_weight)
            if getattr(branch.norm, 'bias', None) is not None:
                nn.init.zeros_(branch.norm.bias)

    def gates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The branch gates, each broadcastable to ``x``: ``cw`` (N, C, 1, W), ``hc``
        (N, C, H, 1) and, unless ``no_spatial``, ``hw`` (N, 1, H, W); :meth:`forward` is the
        mean of ``x * gate`` over them. The rotations are views, and each gate is rotated back
        (the swaps are their own inverses)."""
        # (N, C, H, W) -> (N, H, C, W): pool over H, attend over (C, W)
        gates = [self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)]
        # (N, C, H, W) -> (N, W, H, C): pool over W, attend over (H, C)
        gates.append(self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1))
        if self.hw is not None:
            gates.append(self.hw(x))
        return gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        gates = self.gates(x)
        out = x * gates[0]
        for gate in gates[1:]:
            out = out + x * gate
        return out / len(gates)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict:
        """Summaries of the element-wise gate ``G`` of :meth:`forward` (``forward(x) == x *
        G``, ``G`` the mean of the branch gates of :meth:`gates`, broadcast to (N, C, H, W)):
        ``dict(spatial=mean of G over channels (N, H, W), channel=mean of G over positions
        (N, C))``."""
        check_input(self, x, self.in_channels)
        gates = self.gates(x)
        # each gate is constant along the axes it is broadcast over, so the means of G
        # are the broadcast sums of the gates' own means
        spatial = sum(g.mean(dim=1, keepdim=True) for g in gates) / len(gates)
        channel = sum(g.mean(dim=(2, 3), keepdim=True) for g in gates) / len(gates)
        n, c, h, w = x.shape
        return dict(spatial=spatial.expand(n, 1, h, w)[:, 0],
                    channel=channel.expand(n, c, 1, 1).flatten(1))
