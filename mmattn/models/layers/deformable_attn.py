"""Deformable multi-head attention of DAT (Xia et al. 2022, "Vision Transformer with Deformable
Attention", CVPR 2022, arXiv 2201.00520; DAT++ arXiv 2309.01430)."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmattn.registry import MODELS
from mmattn.utils.torch_compat import float32_or_wider
from .helpers import (build_act, check_bool, check_choice, check_divisible, check_input,
                      check_int, check_positive)

__all__ = ['DeformableAttention2d']


def _axis(n: int, device, dtype, released: bool = False) -> torch.Tensor:
    """``n`` evenly spaced points from -1 to 1 (both ends included): the pixel centres of an
    ``n``-long axis in the normalised coordinates of ``grid_sample(align_corners=True)``.
    A single point sits at 0, the centre of the map.

    ``released=True``: DAT++'s reference points ``(i + 0.5) / (n - 1) * 2 - 1``, the same
    spacing shifted by half a step (also 0 for a single point, where DAT++ divides by zero).
    """
    i = torch.arange(n, device=device, dtype=dtype)
    if released:
        return (i + 0.5) / max(n - 1, 1) * 2 - 1
    return (i * 2 - (n - 1)) / max(n - 1, 1)


class _ChannelNorm(nn.Module):
    """A norm layer built from ``norm_cfg`` over the channels of an NCHW map (LayerNorm is
    applied channels-last, as the released ``LayerNormProxy``; other norms act on NCHW)."""

    def __init__(self, norm_cfg: dict, channels: int):
        super().__init__()
        self.norm = build_norm_layer(norm_cfg, channels)[1]
        self.channels_last = isinstance(self.norm, nn.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


@MODELS.register_module()
class DeformableAttention2d(BaseModule):
    r"""Deformable multi-head attention of DAT, for ``(N, C, H, W)`` feature maps.

    Xia, Pan, Song, Li, Huang. "Vision Transformer with Deformable Attention", CVPR 2022
    (arXiv 2201.00520), the ``DAttentionBaseline`` module of the authors' code
    (LeapLabTHU/DAT) in its default relative-position-bias form (``use_pe=True, dwc_pe=False,
    fixed_pe=False, log_cpb=False``).

    What it computes, with ``G`` offset groups of ``C / G`` channels and ``M`` heads of
    ``d = C / M`` channels (head ``m`` belongs to group ``m // (M / G)``):

    1. ``q = proj_q(x)`` (1x1 conv).
    2. Offset network, per group on that group's channels of ``q`` (weights shared by the
       groups): depthwise ``k x k`` conv with stride ``r`` (padding ``k // 2``; none when
       ``k == r``, as released) -> LayerNorm over channels -> GELU -> 1x1 conv to 2 channels
       ``(dy, dx)`` without bias. Its output size ``(Hk, Wk)`` is the key grid.
    3. Reference points (``reference_grid='aligned'``): the ``Hk x Wk`` grid spread evenly
       over the map with its corner points on the corner pixels, ``ref_y[i] = -1 + 2 i /
       (Hk - 1)``, ``ref_x[j] = -1 + 2 j / (Wk - 1)`` in ``grid_sample(align_corners=True)``
       coordinates (pixel ``p`` of an ``H``-long axis is at ``-1 + 2 p / (H - 1)``); a single
       row or column sits at 0. With stride 1 the reference points are exactly the pixel
       centres. ``reference_grid='released'``: DAT++'s points ``ref_y[i] = (i + 0.5) / (Hk -
       1) * 2 - 1`` (likewise ``ref_x``), half a step further down and right.
    4. Offsets: ``dy = s * tanh(dy) / (Hk - 1)``, ``dx = s * tanh(dx) / (Wk - 1)`` with
       ``s = offset_range_factor`` (``/ 1`` when ``Hk`` or ``Wk`` is 1). The reference step is
       ``2 / (Hk - 1)``, so **a sampling point moves at most ``s / 2`` reference-grid steps
       along each axis** (``s (H - 1) / (2 (Hk - 1))`` input pixels): with ``s = 1`` the boxes
       the points can reach tile the map without overlap, and the points stay inside
       ``[-1 - s / (Hk - 1), 1 + s / (Hk - 1)]``. ``offset_range_factor=None`` uses the raw
       offsets and clamps the positions to the map, ``[-1, 1]`` (DAT++'s ``-1`` setting).
    5. ``x`` (group ``g``'s channels) is sampled bilinearly at ``pos = ref + offset`` of group
       ``g`` with ``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=True)``:
       ``Hk * Wk`` sampled features per group.
    6. ``k = proj_k(sampled)``, ``v = proj_v(sampled)`` (1x1 convs over all ``C`` channels).
    7. Every query position attends over the ``Hk * Wk`` keys, per head:
       ``softmax(q_m^T k_m / sqrt(d) + B_m) v_m``, where the relative position bias ``B_m``
       is read bilinearly (``grid_sample``, align_corners=True, zeros outside) from the
       learned table ``rpe_table[m]`` of size ``(2 fh - 1, 2 fw - 1)``, ``(fh, fw) =
       feat_size``, at the normalised displacement ``(query - pos) / 2`` (in ``[-1, 1]`` for
       points inside the map), with the positions of head ``m``'s group.
    8. ``out = proj_out(attention output)`` (1x1 conv). No residual inside the module.

    Maps of other sizes than ``feat_size``: the bias is looked up at the displacement as a
    fraction of the map size, as in the released code. On a map of exactly ``feat_size`` one
    table entry is one pixel of displacement (query ``(i, j)`` to a sample at pixel ``(y, x)``
    reads ``rpe_table[:, fh - 1 + i - y, fw - 1 + j - x]``); on an ``H x W`` map entry row
    ``fh - 1 + (i - y) (fh - 1) / (H - 1)`` is read, i.e. the table is stretched bilinearly
    (align_corners=True) to ``(2 H - 1, 2 W - 1)``. Set ``feat_size`` to the map size you train
    at; any map size works and no table is resized in place. ``use_pe=False`` drops the bias
    (and the table).

    Args:
        in_channels (int): Channels ``C`` of input and output.
        num_heads (int, optional): Attention heads ``M``; must divide ``in_channels``.
            Default: the largest divisor of ``C`` not above ``max(1, C // 32)`` (head width
            32, as in DAT++).
        num_groups (int, optional): Offset groups ``G``; must divide ``num_heads`` and
            ``in_channels``. Default: ``M // 2`` when ``M`` is even (DAT++: heads 2/4/8/16,
            groups 1/2/4/8), else 1.
        offset_stride (int): Stride ``r`` of the offset network's depthwise conv (key grid
            about ``H / r x W / r``). Default: 4 (DAT++ stage 2).
        offset_kernel_size (int): Kernel ``k`` of that depthwise conv. Default: 7 (DAT++ pairs
            kernels 9/7/5/3 with strides 8/4/2/1).
        offset_range_factor (float, optional): ``s`` above; ``None`` for unbounded offsets with
            positions clamped to the map. Default: 2.0 (DAT v1, stages 3-4).
        reference_grid (str): ``'aligned'`` or ``'released'`` (step 3). ``'released'`` puts the
            reference points where the authors' ``DAttentionBaseline`` (LeapLabTHU/DAT
            ``models/dat_blocks.py``) does, so that a released block's weights give the
            release's outputs (the grid is the only difference). The default ``'aligned'`` is
            the consistent grid: it uses the convention of the query grid and of the sampling,
            so with stride 1 the points are the pixels and with any stride the grid is
            centred on the map; DAT++'s grid is shifted half a step, so its last row and
            column of points lie outside the map, where bilinear sampling reads zero padding
            (before any offset). Default: 'aligned'.
        use_pe (bool): Add the relative position bias. Default: True.
        feat_size (int | tuple[int, int]): Map size ``(fh, fw)`` the bias table is built for
            (see above). Default: 32 (a 512 x 512 crop at stride 16).
        qkv_bias (bool): Bias in ``proj_q/k/v``. Default: True.
        attn_drop (float): Dropout on the attention weights. Default: 0.
        proj_drop (float): Dropout on the output. Default: 0.
        norm_cfg (dict, optional): Norm of the offset network. Default: LayerNorm over
            channels, ``dict(type='LN', eps=1e-5)``.
        act_cfg (dict | str, optional): Activation of the offset network. Default: GELU.
        init_cfg (dict, optional): mmengine init config; when given it replaces the released
            init (PyTorch's default conv/LayerNorm init, table ``trunc_normal(std=0.01)``).

    Deviations from the released code:
        - Reference grid and offset scale. DAT v1 puts the reference points at
          ``(i + 0.5) / Hk * 2 - 1`` (pixel centres in the *align_corners=False* convention,
          while it samples with align_corners=True) and scales offsets by ``1 / Hk``; DAT++
          scales by ``1 / (Hk - 1)`` but places the points at ``(i + 0.5) / (Hk - 1) * 2 - 1``,
          shifted half a grid step towards the bottom-right, so its last row and column of
          reference points lie outside the map. Here the points are ``-1 + 2 i / (Hk - 1)`` (the
          same convention as the query grid and the sampling, so stride 1 samples exactly the
          pixels; ``reference_grid='released'`` restores DAT++'s) and the scale is DAT++'s
          ``s / (Hk - 1)``: ``s`` keeps its released meaning of a bound of ``s / 2`` grid
          steps. ``Hk == 1`` or ``H == 1`` give the centre instead
          of a division by zero (inf/NaN in the released code).
        - ``no_off=True`` in v1 calls ``offset.fill(0.0)`` (no such tensor method; ``fill_``
          was meant). There is no ``no_off`` switch here; zero and freeze the offset network's
          last conv (``conv_offset.3``) for fixed reference points.
        - The v1 ``fixed_pe`` branch reads ``self.n_sample``, never defined. Only the
          interpolated-table bias (and ``use_pe=False``) is implemented; ``fixed_pe``,
          ``dwc_pe`` and ``log_cpb`` are not.
        - v1 builds the table from ``kv_size`` but reshapes it with the input's ``2 H - 1``,
          which only works at one size; here the table size comes from ``feat_size`` and any
          map size is looked up as described above.
        - v1's ``offset_range_factor < 0`` squashes positions with ``tanh``; ``None`` here
          clamps them to the map as DAT++ does.
        - Under autocast the offsets, positions, bilinear sampling, bias and softmax run in
          float32 (float64 stays float64), not in the low-precision dtype.
        - v1's ``reset_parameters`` iterates ``parameters()`` instead of ``modules()`` and so
          never runs; the released init is therefore PyTorch's default, which is what is used.
        Parameter names (``proj_q/k/v/out``, ``conv_offset.{0,1.norm,3}``, ``rpe_table``)
        match the released module, so its weights load with ``feat_size`` set to its
        ``q_size``; with ``reference_grid='released'`` they also give its outputs.
    """
    _abbr_ = 'dat'

    def __init__(self,
                 in_channels: int,
                 num_heads: Optional[int] = None,
                 num_groups: Optional[int] = None,
                 offset_stride: int = 4,
                 offset_kernel_size: int = 7,
                 offset_range_factor: Optional[float] = 2.0,
                 reference_grid: str = 'aligned',
                 use_pe: bool = True,
                 feat_size: Union[int, Sequence[int]] = 32,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 norm_cfg: Optional[dict] = dict(type='LN', eps=1e-5),
                 act_cfg: Union[dict, str, None] = dict(type='GELU'),
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_int('in_channels', in_channels, 1, owner)
        if num_heads is None:
            num_heads = max(1, in_channels // 32)
            while in_channels % num_heads:
                num_heads -= 1
        check_int('num_heads', num_heads, 1, owner)
        check_divisible('in_channels', in_channels, 'num_heads', num_heads, owner)
        if num_groups is None:
            num_groups = num_heads // 2 if num_heads % 2 == 0 else 1
        check_int('num_groups', num_groups, 1, owner)
        check_divisible('num_heads', num_heads, 'num_groups', num_groups, owner)
        check_divisible('in_channels', in_channels, 'num_groups', num_groups, owner)
        check_int('offset_stride', offset_stride, 1, owner)
        check_int('offset_kernel_size', offset_kernel_size, 1, owner)
        if offset_range_factor is not None:
            check_positive('offset_range_factor', offset_range_factor, owner)
        for name, flag in (('use_pe', use_pe), ('qkv_bias', qkv_bias)):
            check_bool(name, flag, owner)
        check_choice('reference_grid', reference_grid, ('aligned', 'released'), owner)
        if isinstance(feat_size, int) and not isinstance(feat_size, bool):
            feat_size = (feat_size, feat_size)
        if not isinstance(feat_size, (tuple, list)) or len(feat_size) != 2:
            raise TypeError(f'{owner}: feat_size must be an int or a pair of ints (h, w), '
                            f'got {feat_size!r}')
        for value in feat_size:
            check_int('feat_size', value, 1, owner)
        for name, p in (('attn_drop', attn_drop), ('proj_drop', proj_drop)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f'{owner}: {name} must be a probability in [0, 1), got {p!r}')

        self.in_channels = in_channels
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.head_channels = in_channels // num_heads
        self.group_channels = in_channels // num_groups
        self.offset_stride = offset_stride
        self.offset_kernel_size = offset_kernel_size
        self.offset_range_factor = (None if offset_range_factor is None else
                                    float(offset_range_factor))
        self.use_pe = use_pe
        self.reference_grid = reference_grid
        self.feat_size = tuple(feat_size)
        self.scale = self.head_channels ** -0.5

        # released: no padding when kernel == stride (non-overlapping windows), else k // 2
        self.offset_padding = 0 if offset_kernel_size == offset_stride else offset_kernel_size // 2
        # the depthwise conv needs H + 2 * padding >= kernel
        self.min_size = max(1, offset_kernel_size - 2 * self.offset_padding)

        cg = self.group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, offset_kernel_size, offset_stride, self.offset_padding, groups=cg),
            _ChannelNorm(norm_cfg, cg) if norm_cfg is not None else nn.Identity(),
            build_act(act_cfg),
            nn.Conv2d(cg, 2, 1, bias=False))
        self.proj_q = nn.Conv2d(in_channels, in_channels, 1, bias=qkv_bias)
        self.proj_k = nn.Conv2d(in_channels, in_channels, 1, bias=qkv_bias)
        self.proj_v = nn.Conv2d(in_channels, in_channels, 1, bias=qkv_bias)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_pe:
            fh, fw = self.feat_size
            self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * fh - 1, 2 * fw - 1))
        else:
            self.register_parameter('rpe_table', None)
        self.init_weights()

    def init_weights(self):
        if self.init_cfg:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()
        if self.rpe_table is not None:
            nn.init.trunc_normal_(self.rpe_table, std=0.01)  # timm's default bounds +-2

    # ------------------------------------------------------------------------- pieces
    def _points(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reference points ``(Hk, Wk, 2)`` and sampling positions ``(N * G, Hk, Wk, 2)``,
        both ``(x, y)`` in align_corners=True coordinates, in float32 or wider."""
        n, _, h, w = q.shape
        g = self.num_groups
        offset = self.conv_offset(q.reshape(n * g, self.group_channels, h, w))
        hk, wk = offset.shape[-2:]
        dtype = float32_or_wider(offset.dtype)
        offset = offset.to(dtype)
        released = self.reference_grid == 'released'
        ref_x, ref_y = torch.meshgrid(_axis(wk, q.device, dtype, released),
                                      _axis(hk, q.device, dtype, released),
                                      indexing='xy')
        reference = torch.stack((ref_x, ref_y), dim=-1)
        dy, dx = offset[:, 0], offset[:, 1]
        if self.offset_range_factor is not None:
            dy = dy.tanh() * (self.offset_range_factor / max(hk - 1, 1))
            dx = dx.tanh() * (self.offset_range_factor / max(wk - 1, 1))
        pos = reference + torch.stack((dx, dy), dim=-1)
        if self.offset_range_factor is None:
            pos = pos.clamp(-1., 1.)
        return reference, pos

    def _sample(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Bilinear samples ``(N, C, Hk, Wk)`` of each group's channels of ``x`` at its
        positions ``pos`` ``(N * G, Hk, Wk, 2)``, in the dtype of ``x``."""
        n, c, h, w = x.shape
        grouped = x.reshape(n * self.num_groups, self.group_channels, h, w).to(pos.dtype)
        sampled = F.grid_sample(grouped, pos, mode='bilinear', padding_mode='zeros',
                                align_corners=True)
        return sampled.reshape(n, c, *pos.shape[1:3]).to(x.dtype)

    def _position_bias(self, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Relative position bias ``(N, M, H * W, Hk * Wk)`` from ``rpe_table``."""
        ng, hk, wk, _ = pos.shape
        g = self.num_groups
        n = ng // g
        qx, qy = torch.meshgrid(_axis(w, pos.device, pos.dtype),
                                _axis(h, pos.device, pos.dtype), indexing='xy')
        queries = torch.stack((qx, qy), dim=-1).reshape(1, h * w, 1, 2)
        displacement = (queries - pos.reshape(ng, 1, hk * wk, 2)) * 0.5
        table = self.rpe_table.to(pos.dtype)
        th, tw = table.shape[-2:]
        table = table.reshape(1, g, self.num_heads // g, th, tw).expand(n, -1, -1, -1, -1)
        bias = F.grid_sample(table.reshape(ng, self.num_heads // g, th, tw), displacement,
                             mode='bilinear', padding_mode='zeros', align_corners=True)
        return bias.reshape(n, self.num_heads, h * w, hk * wk)

    @torch.no_grad()
    def sampling_points(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The reference points and the sampling positions for ``x``, each
        ``(N, G, Hk, Wk, 2)`` as ``(x, y)`` in ``grid_sample(align_corners=True)`` coordinates
        (what the released module returns besides its output, for visualisation)."""
        check_input(self, x, self.in_channels, min_size=self.min_size)
        reference, pos = self._points(self.proj_q(x))
        n, g = x.shape[0], self.num_groups
        pos = pos.reshape(n, g, *pos.shape[1:])
        return reference.expand_as(pos), pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.in_channels, min_size=self.min_size)
        n, c, h, w = x.shape
        m, d = self.num_heads, self.head_channels
        q = self.proj_q(x)
        _, pos = self._points(q)
        sampled = self._sample(x, pos)
        n_keys = sampled.shape[-2] * sampled.shape[-1]
        k = self.proj_k(sampled).reshape(n, m, d, n_keys)
        v = self.proj_v(sampled).reshape(n, m, d, n_keys)
        logits = torch.einsum('bhcq,bhck->bhqk', q.reshape(n, m, d, h * w), k) * self.scale
        logits = logits.to(pos.dtype)
        if self.rpe_table is not None:
            logits = logits + self._position_bias(pos, h, w)
        attn = self.attn_drop(logits.softmax(dim=-1)).to(v.dtype)
        out = torch.einsum('bhqk,bhck->bhcq', attn, v).reshape(n, c, h, w)
        return self.proj_drop(self.proj_out(out))
