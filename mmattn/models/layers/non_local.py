"""Non-local block (embedded Gaussian) with an attention core whose memory does not grow as
(HW x HW)."""
import copy
from typing import Optional, Union

import torch
import torch.nn as nn
from mmcv.cnn import NonLocal2d
from mmengine.model import BaseModule, constant_init, normal_init

from mmattn.registry import MODELS
from .helpers import (check_bool, check_choice, check_input, check_int, check_positive,
                      rd_ratio_arg, reduced_channels)
from .softmax_attention import softmax_attention

__all__ = ['FusedNonLocal2d']


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """The conv of a ConvModule, also when ``sub_sample`` wrapped it as ``Sequential(cm, pool)``."""
    if isinstance(module, nn.Sequential):
        module = module[0]
    return module.conv


@MODELS.register_module()
class FusedNonLocal2d(NonLocal2d, BaseModule):
    """Non-local block, embedded-Gaussian by default, computed with a fused attention kernel.

    Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018, arXiv:1711.07971
    (released code: facebookresearch/video-nonlocal-net, Caffe2).

    With ``theta, phi, g`` 1x1 convs ``C -> C * rd_ratio`` (``phi`` and ``g`` optionally followed
    by a 2x2 max-pool, ``sub_sample``)::

        y_i = sum_j softmax_j(theta(x)_i . phi(x)_j) g(x)_j       # over all positions j
        z = x + W_z(y)                                             # W_z: 1x1 conv C/r -> C, norm

    The norm after ``W_z`` (BN by default) starts with zero scale and bias (``zeros_init``), so
    the block starts as the identity.

    What this subclass adds to mmcv's :class:`~mmcv.cnn.NonLocal2d` (whose weight layout, state
    dict keys and ``_abbr_`` it keeps, so its checkpoints load unchanged):

    - the attention runs in :func:`~mmattn.models.layers.softmax_attention.softmax_attention`
      (``scaled_dot_product_attention``, or blocks of query rows): memory ``O(HW * d)`` instead
      of the ``(HW x HW)`` affinity matrix mmcv materialises (``(HW)^2`` time remains); a map
      whose matrix fits one 4 MiB block per sample is computed explicitly, which is faster
      there on CPU;
      ``mode='dot_product'`` is reassociated as ``theta (phi^T g) / N_k`` (linear in HW);
    - the paper's defaults: ``use_scale=False`` (mmcv: True) and a BN after ``W_z`` (mmcv: none);
    - argument validation with ``ValueError``/``TypeError`` naming the argument, input checks,
      mmengine ``init_cfg``; ``init_weights()`` also works after construction with
      ``sub_sample=True`` (mmcv's raises ``AttributeError`` there, as the pooled branches are
      wrapped in ``Sequential``).

    Args:
        in_channels (int): Channels ``C`` of the input (and output).
        rd_ratio (float): Width of ``theta, phi, g`` as a fraction of ``C``, ``1 / r`` for an
            integer ``r`` (mmcv's ``NonLocal2d`` builds ``C // r`` channels; ``self.reduction``
            is that ``r``). Default: 1/2. ``reduction=r`` is its deprecated spelling.
        use_scale (bool): Divide the affinities by ``sqrt(C * rd_ratio)`` before the softmax
            (embedded Gaussian only). Default: False, as in the paper.
        sub_sample (bool): 2x2 max-pool after ``phi`` and ``g`` (the paper's variant that cuts
            the pairwise cost by 4). Default: False.
        mode (str): ``'embedded_gaussian'`` (paper's default), ``'gaussian'`` (``theta``,
            ``phi`` are the identity) or ``'dot_product'`` (no softmax, affinities divided by the
            number of key positions). mmcv's ``'concatenation'`` needs the explicit pairwise
            tensor and is not offered (use mmcv's ``NonLocal2d``). Default: 'embedded_gaussian'.
        conv_cfg (dict, optional): Conv layer config. Default: ``dict(type='Conv2d')``.
        norm_cfg (dict, optional): Norm after ``W_z``; None gives a biased conv, zero-initialised
            instead. Default: ``dict(type='BN')``.
        std (float): Std of the normal init of the convs (biases 0). Default: 0.01.
        zeros_init (bool): Zero-init the norm after ``W_z`` (identity at init); False gives it a
            normal init with ``std``. Default: True.
        init_cfg (dict | list[dict], optional): mmengine initialisation config; when given it
            replaces the default initialisation (mmengine then also runs the ``ConvModule``
            children's own ``init_weights``, as for any module built from them). Default: None.

    Deviations from the released code:
        The release's configuration (``NONLOCAL.*``) scales the affinities by
        ``1/sqrt(C * rd_ratio)`` (``USE_SCALE=True``) and max-pools ``phi, g``
        (``USE_MAXPOOL=True``); the paper has no scaling and presents the max-pool as an
        optional trick, so both are off by default here: pass ``use_scale=True,
        sub_sample=True`` for the released block. Its other settings are the defaults here:
        normal init std 0.01 for all convs (``W_z`` included), a BN after ``W_z`` with scale
        and bias initialised to 0. mmcv's defaults (``use_scale=True``, no norm) are
        not the defaults here either; passing them reproduces mmcv's ``NonLocal2d`` exactly
        (same outputs, tested).
    """

    _abbr_ = 'nonlocal_block'

    def __init__(self,
                 in_channels: int,
                 rd_ratio: Optional[float] = None,
                 use_scale: bool = False,
                 sub_sample: bool = False,
                 mode: str = 'embedded_gaussian',
                 conv_cfg: Optional[dict] = dict(type='Conv2d'),
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 std: float = 0.01,
                 zeros_init: bool = True,
                 init_cfg: Optional[Union[dict, list]] = None,
                 reduction: Optional[int] = None):
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        rd_ratio = rd_ratio_arg(owner, rd_ratio, 1 / 2, 'reduction', reduction)
        reduction = round(1 / rd_ratio)
        if abs(reduction * rd_ratio - 1) > 1e-6:
            raise ValueError(f'{owner}: rd_ratio must be 1/r for an integer r (mmcv\'s '
                             f'NonLocal2d builds in_channels // r channels), got {rd_ratio!r}')
        reduced_channels(in_channels, rd_ratio, owner)  # raises when C // r == 0
        check_choice('mode', mode, ('embedded_gaussian', 'gaussian', 'dot_product'), owner)
        for name, value in (('use_scale', use_scale), ('sub_sample', sub_sample),
                            ('zeros_init', zeros_init)):
            check_bool(name, value, owner)
        for name, value in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f'{owner}: {name} must be a dict or None, got '
                                f'{type(value).__name__} ({value!r})')
        check_positive('std', std, owner)
        super().__init__(
            in_channels,
            sub_sample=sub_sample,
            conv_cfg=conv_cfg,
            reduction=reduction,
            use_scale=use_scale,
            norm_cfg=norm_cfg,
            mode=mode,
            std=std,
            zeros_init=zeros_init)
        # _NonLocalNd's super().__init__() reached BaseModule without init_cfg
        self.init_cfg = copy.deepcopy(init_cfg)
        self.rd_ratio = rd_ratio
        self.std = std
        self.zeros_init = zeros_init
        self.init_weights()

    def init_weights(self, std: Optional[float] = None, zeros_init: Optional[bool] = None):
        """Paper init (normal ``std`` for the convs; zero norm after ``W_z``), or
        mmengine's ``init_cfg`` when one was given. mmcv's constructor calls this with
        ``std``/``zeros_init`` before they are stored."""
        if self.init_cfg:
            BaseModule.init_weights(self)
            return
        std = self.std if std is None else std
        zeros_init = self.zeros_init if zeros_init is None else zeros_init
        branches = [self.g] if self.mode == 'gaussian' else [self.g, self.theta, self.phi]
        for branch in branches:
            normal_init(_conv_of(branch), std=std)
        if self.conv_out.norm_cfg is None:
            last = self.conv_out.conv
        else:
            normal_init(self.conv_out.conv, std=std)  # as released (mmcv keeps Kaiming here)
            last = self.conv_out.norm
        if zeros_init:
            constant_init(last, 0)
        else:
            normal_init(last, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 2x2 max-pool of sub_sample needs at least a 2x2 map
        check_input(self, x, self.in_channels, min_size=2 if self.sub_sample else 1)
        n, _, h, w = x.shape
        # (N, L, d) layouts: positions as rows
        value = self.g(x).flatten(2).transpose(1, 2)
        if self.mode == 'gaussian':
            query = x.flatten(2).transpose(1, 2)
            key = (self.phi(x) if self.sub_sample else x).flatten(2).transpose(1, 2)
        else:
            query = self.theta(x).flatten(2).transpose(1, 2)
            key = self.phi(x).flatten(2).transpose(1, 2)
        if self.mode == 'dot_product':
            # (theta phi^T / N_k) g == theta (phi^T g) / N_k: a (d x d) matrix, not (HW x N_k)
            y = torch.matmul(query, torch.matmul(key.transpose(1, 2), value)) / key.shape[1]
            y = y.transpose(1, 2)
        else:
            scale = 1.0
            if self.mode == 'embedded_gaussian' and self.use_scale:
                scale = query.shape[-1]**-0.5
            y = softmax_attention(query, key, value, scale, transpose_out=True)  # (N, d, HW)
        # y in x's memory format: the transposed (N, d, HW) result viewed as a map is
        # channels_last, and W_z's BatchNorm, meeting an output gradient in x's format, would
        # take its mixed-layout backward: 1.45-1.8x slower on CPU (a copy of the d-channel
        # map, as mmcv's .contiguous()). The same-layout backward allocates one full-size
        # temporary more, which is what timm's NonLocalAttn (channels_last y) saves: 14% of
        # the fwd+bwd peak at 8x192x16x12 in float32, for 5% more time
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and \
            not x.is_contiguous()
        y = y.reshape(n, self.inter_channels, h, w).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return x + self.conv_out(y)
