"""Deformable convolution v2 from ``mmcv.ops`` with a plugin signature (Zhu et al. 2019)."""
import copy
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.ops import ModulatedDeformConv2dPack
from mmcv.ops.modulated_deform_conv import modulated_deform_conv2d
from mmengine.model import BaseModule

from mmattn.utils.torch_compat import autocast_enabled

from .helpers import check_bool, check_input, check_int

__all__ = ['DeformableConvV2']

IntPair = Union[int, Tuple[int, int]]


def _pair_arg(name: str, value, minimum: int, owner: str) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair; errors name ``name``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f'{owner}: {name} must be an int or a pair of ints, got {value!r}')
        return tuple(check_int(name, v, minimum, owner) for v in value)
    check_int(name, value, minimum, owner)
    return (value, value)


class DeformableConvV2(ModulatedDeformConv2dPack, BaseModule):
    """Modulated deformable convolution, DCNv2 (Zhu et al., "Deformable ConvNets v2: More
    Deformable, Better Results", CVPR 2019, arXiv 1811.11168), computed by mmcv's
    ``ModulatedDeformConv2d`` CPU/CUDA kernels.

    A plain conv ``conv_offset`` (same kernel, stride, padding, dilation as the main conv)
    predicts, for every output position, deformable group and kernel point, a 2-D offset
    ``(dy, dx)`` and a modulation mask ``sigmoid(m)``. The main conv then samples the input
    bilinearly at ``p + p_k + (dy, dx)`` (zero outside the map), multiplies each sample by its
    mask and applies its weights. ``conv_offset`` is zero-initialised (mmcv's and the paper's
    init), so at init every offset is 0 and every mask is ``sigmoid(0) = 0.5``: the module
    starts as the plain conv ``0.5 * (weight * x) + bias``.

    Channel layout of ``conv_offset``'s output (mmcv's): ``3 * deform_groups * kh * kw``
    channels; the first ``2 * deform_groups * kh * kw`` are the offsets, ordered per deformable
    group ``g`` and kernel point ``k = i * kw + j`` as ``dy`` at ``2 * (g * kh * kw + k)`` and
    ``dx`` at ``2 * (g * kh * kw + k) + 1``; the last ``deform_groups * kh * kw`` are the mask
    logits at ``g * kh * kw + k``.

    Args:
        in_channels (int): Input channels.
        out_channels (int, optional): Output channels; default ``in_channels``.
        kernel_size (int | tuple[int, int]): Kernel size. Default 3.
        stride (int | tuple[int, int]): Stride. Default 1.
        padding (int | tuple[int, int], optional): Zero padding. Default ``None`` means
            ``(kernel_size // 2) * dilation``, which keeps the spatial size at stride 1 (the
            kernel size must then be odd).
        dilation (int | tuple[int, int]): Dilation. Default 1.
        groups (int): Conv groups; must divide ``in_channels`` and ``out_channels``.
        deform_groups (int): Groups of input channels sharing one offset/mask field; must
            divide ``in_channels``. Default 1.
        bias (bool): Whether the main conv has a bias. Default True.
        init_cfg (dict | list[dict], optional): mmengine init config. If None, mmcv's init
            (uniform main weight, zero bias, zero ``conv_offset``). If given it is applied by
            ``BaseModule.init_weights``; unless it contains a ``Pretrained`` entry,
            ``conv_offset`` is zeroed again afterwards so the module still starts as a conv
            (also when a parent's init_cfg covering ``Conv2d`` initialises the model).

    What this adds over ``mmcv.ops.ModulatedDeformConv2dPack`` (registered by mmcv as
    ``DCNv2``, which this class does not re-register):
        - the plugin signature: ``in_channels`` first, shape-preserving defaults for
          ``out_channels`` and ``padding``; ``init_cfg`` through ``BaseModule``;
        - argument validation (groups/deform_groups dividing the channels, odd kernel for
          the default padding, positive sizes) with errors naming the argument, and input
          checks naming this class;
        - channels_last (or any non-contiguous) input: mmcv's kernels read raw memory as NCHW,
          so the input is made contiguous first;
        - autocast safety: mmcv's kernels dispatch on float32, float64 and float16 only
          (``AT_DISPATCH_FLOATING_TYPES_AND_HALF``, CPU and CUDA), so under autocast (bfloat16
          on CPU, float16 on CUDA) the offset conv and the deformable conv run in float32
          with autocast disabled, and the output is float32 (like autocast's fp32 ops). An
          input in bfloat16 (or another unsupported dtype) outside autocast is computed in
          float32 and cast back.

    Deviations from the released code:
        - None in the computation (it is mmcv's op, the same formulation as the authors'
          DCNv2 CUDA code: offsets and mask from one conv, mask = sigmoid). Under autocast the
          op runs in float32 instead of the autocast dtype.
    """

    _abbr_ = 'dcnv2'

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: IntPair = 3,
                 stride: IntPair = 1,
                 padding: Optional[IntPair] = None,
                 dilation: IntPair = 1,
                 groups: int = 1,
                 deform_groups: int = 1,
                 bias: bool = True,
                 init_cfg: Union[dict, list, None] = None):
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        if out_channels is None:
            out_channels = in_channels
        check_int('out_channels', out_channels, 1, owner)
        kernel = _pair_arg('kernel_size', kernel_size, 1, owner)
        stride = _pair_arg('stride', stride, 1, owner)
        dilation = _pair_arg('dilation', dilation, 1, owner)
        if padding is None:
            if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
                raise ValueError(f'{owner}: kernel_size must be odd when padding is None '
                                 f'(padding (k // 2) * dilation keeps the size only for odd '
                                 f'k), got {kernel_size}; or pass padding explicitly')
            padding = (kernel[0] // 2 * dilation[0], kernel[1] // 2 * dilation[1])
        else:
            padding = _pair_arg('padding', padding, 0, owner)
        check_int('groups', groups, 1, owner)
        check_int('deform_groups', deform_groups, 1, owner)
        if in_channels % groups:
            raise ValueError(f'{owner}: in_channels={in_channels} must be divisible by '
                             f'groups={groups}')
        if out_channels % groups:
            raise ValueError(f'{owner}: out_channels={out_channels} must be divisible by '
                             f'groups={groups}')
        if in_channels % deform_groups:
            raise ValueError(f'{owner}: in_channels={in_channels} must be divisible by '
                             f'deform_groups={deform_groups}')
        check_bool('bias', bias, owner)

        # mmcv's __init__ calls init_weights() (ours) twice with init_cfg still None: that
        # gives mmcv's init; init_cfg is set and applied below.
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            deform_groups=deform_groups,
            bias=bias)
        self.init_cfg = copy.deepcopy(init_cfg)
        self.init_weights()

    def init_weights(self) -> None:
        init_cfg = getattr(self, 'init_cfg', None)
        if not init_cfg:
            ModulatedDeformConv2dPack.init_weights(self)  # mmcv: conv_offset zeroed
            return
        BaseModule.init_weights(self)
        cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
        pretrained = any(str(cfg.get('type')).endswith('Pretrained') for cfg in cfgs)
        if not pretrained and hasattr(self, 'conv_offset'):
            with torch.no_grad():
                self.conv_offset.weight.zero_()
                self.conv_offset.bias.zero_()
            # A parent's init_cfg (e.g. Normal on every Conv2d) reaches conv_offset too; left
            # unmarked, this module's init_weights runs again after it, as mmcv's does.
            self._is_init = False

    def _min_size(self) -> Tuple[int, int]:
        return tuple(
            max(1, self.dilation[d] * (self.kernel_size[d] - 1) + 1 - 2 * self.padding[d])
            for d in range(2))

    def _deform_conv(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = x.to(dtype).contiguous()
        if self.conv_offset.weight.dtype == dtype:
            out = self.conv_offset(x)
        else:
            out = F.conv2d(x, self.conv_offset.weight.to(dtype), self.conv_offset.bias.to(dtype),
                           self.stride, self.padding, self.dilation)
        n_off = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = out[:, :n_off].contiguous()
        mask = torch.sigmoid(out[:, n_off:]).contiguous()
        bias = None if self.bias is None else self.bias.to(dtype)
        return modulated_deform_conv2d(x, offset, mask, self.weight.to(dtype), bias,
                                       self.stride, self.padding, self.dilation, self.groups,
                                       self.deform_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_input(self, x, self.in_channels, min_size=self._min_size())
        device_type = x.device.type
        if autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self._deform_conv(x, torch.float32)
        if x.dtype in (torch.float32, torch.float64, torch.float16):
            return self._deform_conv(x, x.dtype)
        return self._deform_conv(x, torch.float32).to(x.dtype)

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}')
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.deform_groups != 1:
            s += f', deform_groups={self.deform_groups}'
        if self.bias is None:
            s += ', bias=False'
        return s
