"""Global context block (GCNet) with the paper's defaults and proper argument checks."""
import copy
import math
from typing import Optional, Sequence, Union

import torch
from mmcv.cnn import ContextBlock
from mmengine.model import BaseModule

from mmattn.registry import MODELS
from .helpers import check_choice, check_input, check_int, rd_ratio_arg

__all__ = ['GlobalContextBlock']

_FUSIONS = ('channel_add', 'channel_mul')


@MODELS.register_module()
class GlobalContextBlock(ContextBlock, BaseModule):
    """Global context (GC) block: one attention-pooled context vector per image, transformed by
    a bottleneck and added to (or multiplied into) every position.

    Cao, Xu, Lin, Wei, Hu. "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
    Beyond", ICCV 2019 workshops, arXiv:1904.11492 (released code: xvjiarui/GCNet, on mmdet).

    ::

        w = softmax over the HW positions of conv_mask(x)         # 1x1 conv C -> 1, with bias
        ctx = sum_j w_j x_j                                        # (N, C, 1, 1)
        t(ctx) = conv(relu(LayerNorm([P, 1, 1])(conv(ctx))))       # C -> P -> C, with biases
        out = x * sigmoid(t_mul(ctx)) + t_add(ctx)                 # each term if fused

    With the default ``fusion_types=('channel_add',)`` the last conv of the transform is
    zero-initialised, so the block starts as the identity.

    What this subclass adds to mmcv's :class:`~mmcv.cnn.ContextBlock` (whose weight layout,
    state dict keys and ``_abbr_`` it keeps, so its checkpoints load unchanged):

    - the paper's default ``rd_ratio=1/16`` (mmcv requires its ``ratio``);
    - ``ValueError``/``TypeError`` naming the argument instead of ``assert`` (a bare string for
      ``fusion_types``, an unknown pooling or fusion, a ratio leaving no bottleneck channel),
      input checks, mmengine ``init_cfg``;
    - :meth:`spatial_pool` accepts any strided input (cropped, transposed, channels_last) and
      computes the mask logits before flattening ``x`` (timm's order, a lower peak memory in
      training); the result is mmcv's.

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Bottleneck width as a fraction of ``C``, ``P = planes = int(C *
            rd_ratio)``, in ``(0, 1]``. Default: 1/16. mmcv's name ``ratio`` (the same
            fraction) is its deprecated spelling; ``self.ratio`` keeps mmcv's attribute.
        pooling_type (str): ``'att'`` (attention pooling, the paper's) or ``'avg'`` (global
            average pooling). Default: 'att'.
        fusion_types (Sequence[str]): Non-empty subset of ``('channel_add', 'channel_mul')``.
            Default: ``('channel_add',)``.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation. Default: None.

    Initialisation (as released): ``conv_mask`` Kaiming-normal (fan_in), the last conv of each
    transform zero, the other layers PyTorch's defaults.

    Deviations from the released code:
        None in the computation (mmcv's ``ContextBlock`` is the released one). As released, with
        ``'channel_mul'`` the zero last conv gives ``x * sigmoid(0) = x / 2`` at init, not the
        identity.
    """

    _abbr_ = 'context_block'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 pooling_type: str = 'att',
                 fusion_types: Sequence[str] = ('channel_add', ),
                 init_cfg: Optional[Union[dict, list]] = None,
                 ratio: Optional[float] = None):
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 16, 'ratio', ratio, old_divides=False)
        if int(in_channels * rd_ratio) < 1:  # mmcv's rounding of planes
            raise ValueError(
                f'{owner}: in_channels={in_channels} is too small for rd_ratio={rd_ratio:g} '
                f'(gives int({in_channels} * {rd_ratio:g}) = 0 bottleneck channels); use '
                f'in_channels >= {math.ceil(1 / rd_ratio)} or a larger rd_ratio')
        check_choice('pooling_type', pooling_type, ('att', 'avg'), owner)
        if not isinstance(fusion_types, (list, tuple)):
            raise TypeError(f'{owner}: fusion_types must be a list or tuple of names from '
                            f'{list(_FUSIONS)}, got {type(fusion_types).__name__} '
                            f'({fusion_types!r})')
        if not fusion_types:
            raise ValueError(f'{owner}: fusion_types must name at least one of '
                             f'{list(_FUSIONS)}, got {fusion_types!r}')
        for fusion in fusion_types:
            check_choice('fusion_types', fusion, _FUSIONS, owner)
        if len(set(fusion_types)) != len(fusion_types):
            raise ValueError(f'{owner}: fusion_types has a repeated entry: {fusion_types!r}')
        super().__init__(in_channels, rd_ratio, pooling_type=pooling_type,
                         fusion_types=tuple(fusion_types))
        self.rd_ratio = rd_ratio
        # ContextBlock's super().__init__() reached BaseModule without init_cfg
        self.init_cfg = copy.deepcopy(init_cfg)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            BaseModule.init_weights(self)
            return
        self.reset_parameters()

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """The context vector ``(N, C, 1, 1)``: softmax-weighted (``'att'``) or plain mean
        (``'avg'``) of ``x`` over the positions.

        Differs from mmcv's in two ways that leave the result unchanged: ``reshape`` instead
        of ``view`` (mmcv's ``view`` raises on a cropped or transposed map, which cannot be
        flattened without a copy), and the mask logits ``conv_mask(x)`` are computed before
        ``x`` is flattened, as timm's ``GlobalContext`` does, which lowers the peak memory of
        forward + backward to timm's.
        """
        if self.pooling_type != 'att':
            return self.avg_pool(x)
        n, c, h, w = x.shape
        weights = torch.softmax(self.conv_mask(x).reshape(n, 1, h * w), dim=-1)
        context = torch.matmul(x.reshape(n, 1, c, h * w), weights.unsqueeze(-1))
        return context.reshape(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels)
        return super().forward(x)
