"""SPD-Conv: space-to-depth followed by a non-strided convolution (Sunkara and Luo 2022)."""
import copy
from typing import Optional, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from mmattn.utils.torch_compat import is_capturing

from .helpers import act_cfg_from_name, check_bool, check_input, check_int

__all__ = ['SPDConv', 'space_to_depth']


def space_to_depth(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Rearrange ``(N, C, H, W)`` into ``(N, scale**2 * C, H / scale, W / scale)`` losslessly.

    The ``scale**2`` sub-grids ``x[..., i::scale, j::scale]`` are concatenated along channels
    with the row phase ``i`` varying fastest, i.e. block ``j * scale + i`` holds sub-grid
    ``(i, j)``. For ``scale=2`` this is exactly the order of the paper's code::

        cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)

    Note that this is *not* ``F.pixel_unshuffle``'s channel order (which interleaves the
    sub-grids per channel); weights trained with one order do not transfer to the other.
    ``H`` and ``W`` must be divisible by ``scale`` (checked, except while capturing a graph,
    as in ``check_input``, so the check adds no guards to it).
    """
    check_int('scale', scale, 1, owner='space_to_depth')
    if x.dim() != 4:
        raise ValueError(f'space_to_depth expects a 4-D (N, C, H, W) tensor, '
                         f'got shape {tuple(x.shape)}')
    n, c, h, w = x.shape
    if not is_capturing() and (h % scale or w % scale):
        raise ValueError(f'space_to_depth needs H and W divisible by scale={scale}, '
                         f'got {h}x{w}')
    # (n, c, h', i, w', j) -> (n, j, i, c, h', w'): block index j * scale + i
    y = x.reshape(n, c, h // scale, scale, w // scale, scale)
    y = y.permute(0, 5, 3, 1, 2, 4)
    return y.reshape(n, scale * scale * c, h // scale, w // scale)


@MODELS.register_module()
class SPDConv(BaseModule):
    """SPD-Conv (Sunkara and Luo, "No More Strided Convolutions or Pooling: A New CNN Building
    Block for Low-Resolution Images and Small Objects", ECML-PKDD 2022, arXiv 2208.03641).

    A lossless replacement for a strided convolution or a pooling layer: a space-to-depth
    rearrangement ``(N, C, H, W) -> (N, scale**2 * C, H / scale, W / scale)`` (see
    ``space_to_depth`` for the sub-grid order, the one of the paper's code), followed by a
    non-strided ``kernel_size`` convolution (padding ``kernel_size // 2``) with norm and
    activation -- the paper's YOLOv5 ``Conv`` block (conv, BN, SiLU) -- mapping to
    ``out_channels``. Output: ``(N, out_channels, H / scale, W / scale)``.

    Args:
        in_channels (int): Channels ``C`` of the input.
        out_channels (int, optional): Output channels. Default ``None`` means
            ``2 * in_channels``: the channel doubling of the stride-2 3x3 convs that SPD-Conv
            replaces in the paper's YOLOv5-SPD and ResNet-SPD models (the paper asks for
            fewer than ``scale**2 * in_channels`` filters). Pass
            ``in_channels * scale**2`` for a channel count that keeps every input value.
        scale (int): Downsampling factor, >= 2. Default 2 (the paper's setting).
        kernel_size (int): Odd kernel size of the non-strided conv. Default 3.
        pad_odd (bool): If True, zero-pad the bottom/right of a map whose height or width is
            not a multiple of ``scale`` (output ``ceil(H / scale) x ceil(W / scale)``);
            if False (default) such a map raises a ValueError.
        norm_cfg (dict, optional): Norm after the conv. Default ``dict(type='BN')``. With
            ``None`` the conv gets a bias.
        act_cfg (dict | str, optional): Activation (an mmcv ``act_cfg`` or a short name like
            ``'silu'``). Default ``dict(type='SiLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config, applied over
            ConvModule's default init (Kaiming normal conv, norm weight 1 / bias 0), which is
            all the module gets when it is None.

    Deviations from the released code:
        - The released YOLOv5 ``Conv`` block uses BN with ``eps=1e-3, momentum=0.03`` and
          PyTorch's default conv init; here the norm is whatever ``norm_cfg`` builds (mmcv's
          BN defaults ``eps=1e-5, momentum=0.1``) and the conv uses mmcv ConvModule's init.
        - ``scale`` other than 2 and ``pad_odd`` are additions; the released code assumes
          scale 2 and even maps.
    """

    _abbr_ = 'spd'

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 scale: int = 2,
                 kernel_size: int = 3,
                 pad_odd: bool = False,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Union[dict, str, None] = dict(type='SiLU'),
                 init_cfg: Union[dict, list, None] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        if out_channels is None:
            out_channels = 2 * in_channels
        check_int('out_channels', out_channels, 1, owner)
        check_int('scale', scale, 2, owner)
        check_int('kernel_size', kernel_size, 1, owner)
        if kernel_size % 2 == 0:
            raise ValueError(f'{owner}: kernel_size must be odd (padding kernel_size // 2 keeps '
                             f'the downsampled size), got {kernel_size}')
        check_bool('pad_odd', pad_odd, owner)
        if norm_cfg is not None and not isinstance(norm_cfg, dict):
            raise TypeError(f'{owner}: norm_cfg must be a dict or None, '
                            f'got {type(norm_cfg).__name__}')
        act_cfg = act_cfg_from_name(act_cfg)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale = scale
        self.kernel_size = kernel_size
        self.pad_odd = pad_odd
        self.conv = ConvModule(
            in_channels * scale * scale,
            out_channels,
            kernel_size,
            stride=1,
            padding=kernel_size // 2,
            norm_cfg=copy.deepcopy(norm_cfg),
            act_cfg=copy.deepcopy(act_cfg))
        self.init_weights()

    def init_weights(self):
        self.conv.init_weights()  # ConvModule's init: Kaiming normal conv, norm weight 1 bias 0
        if self.init_cfg:
            # BaseModule.init_weights applies init_cfg and then calls the init_weights of every
            # child not marked initialised, which would undo init_cfg on the ConvModule.
            self.conv.is_init = True
            super().init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        s = self.scale
        if not is_capturing():
            h, w = x.shape[-2:]
            if not self.pad_odd and (h % s or w % s):
                raise ValueError(
                    f'{type(self).__name__} needs H and W divisible by scale={s}, got {h}x{w} '
                    f'(input shape {tuple(x.shape)}); build it with pad_odd=True to zero-pad '
                    f'the bottom/right instead')
        if self.pad_odd:
            pad_h = -x.shape[-2] % s
            pad_w = -x.shape[-1] % s
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.conv(space_to_depth(x, s))

    def extra_repr(self) -> str:
        return f'scale={self.scale}, pad_odd={self.pad_odd}'
