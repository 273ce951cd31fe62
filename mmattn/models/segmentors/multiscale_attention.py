"""Hierarchical multi-scale attention (Tao, Sapra and Catanzaro 2020, arXiv 2005.10821)."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmseg.models.segmentors import CascadeEncoderDecoder
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.utils import add_prefix

from mmattn.registry import MODELS

__all__ = ['HierarchicalMultiScaleSegmentor', 'hierarchical_fusion', 'two_scale_fusion']


def _resize(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize to ``size`` (NVIDIA's ``scale_as`` / ``Upsample``)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        # bilinear to the same size is the identity (align_corners or not); skip the kernel
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=align_corners)


def scaled_size(size: Sequence[int], scale: float) -> tuple:
    """``floor(size * scale)`` per side: the size ``F.interpolate(scale_factor=scale,
    recompute_scale_factor=True)`` (NVIDIA's ``ResizeX``) produces."""
    return tuple(int(s * scale) for s in size)


def hierarchical_fusion(scales: Sequence[float], preds: Sequence[torch.Tensor],
                        attns: Sequence[torch.Tensor], align_corners: bool = False
                        ) -> torch.Tensor:
    """Combine per-scale predictions as NVIDIA's ``MscaleOCR.nscale_forward`` does.

    ``preds[i]`` and ``attns[i]`` come from the image resized by ``scales[i]`` and are at that
    resolution. Scales are visited from the largest to the smallest; the first gives the
    running prediction ``p``; then, for each next scale ``s`` with prediction ``q`` and
    attention ``a``:

    * ``s >= 1``: ``p = a * q + (1 - a) * down(p)`` (at the resolution of ``s``);
    * ``s < 1``: ``p = up(a * q) + (1 - up(a)) * p`` (at the resolution of ``p``; the product
      is taken before upsampling, as in the released code).

    For scales (0.5, 1.0, 2.0) the result is ``up(a_.5 p_.5) + (1 - up(a_.5)) * (a_1 p_1 +
    (1 - a_1) down(p_2))`` at the 1.0 resolution; the 2.0 attention is unused. With ``a = 1``
    everywhere it is ``up(p_min)``, with ``a = 0`` it is ``down(p_max)``.
    """
    if not (len(scales) == len(preds) == len(attns)) or not scales:
        raise ValueError(f'hierarchical_fusion: need as many preds and attns as scales, got '
                         f'{len(scales)} scales, {len(preds)} preds, {len(attns)} attns')
    order = sorted(range(len(scales)), key=lambda i: scales[i], reverse=True)
    fused = None
    for i in order:
        scale, pred, attn = scales[i], preds[i], attns[i]
        if fused is None:
            fused = pred
        elif scale >= 1.0:
            fused = _resize(fused, pred.shape[2:], align_corners)
            fused = attn * pred + (1 - attn) * fused
        else:
            size = fused.shape[2:]
            fused = _resize(attn * pred, size, align_corners) + \
                (1 - _resize(attn, size, align_corners)) * fused
    return fused


def two_scale_fusion(pred_lo: torch.Tensor, attn_lo: torch.Tensor, pred_hi: torch.Tensor,
                     align_corners: bool = False) -> torch.Tensor:
    """Training combination (NVIDIA's ``two_scale_forward``): ``up(a_lo * p_lo) + (1 -
    up(a_lo)) * p_hi`` at the resolution of ``p_hi``."""
    size = pred_hi.shape[2:]
    return _resize(attn_lo * pred_lo, size, align_corners) + \
        (1 - _resize(attn_lo, size, align_corners)) * pred_hi


def use_direct_fuse_upsampling(backbone: nn.Module) -> int:
    """Make mmseg's HRNet fuse layers upsample in one step, as the original HRNet (and the
    NVIDIA/PSA code) does; return how many upsampling modules were removed.

    mmseg's ``HRModule`` upsamples a lower-resolution branch with an ``Upsample(scale_factor=
    2**k)`` module inside ``fuse_layers[i][j]`` and then resizes the result to the target size
    again in ``forward``; the original resizes once to the target size. Both agree when every
    branch size is exactly a power-of-two multiple of the next (input sides divisible by 32,
    e.g. Cityscapes at 0.5/1.0/2.0); otherwise the two-step interpolation differs. Dropping the
    parameter-free ``Upsample`` leaves the single ``resize`` of ``forward``: the original maths,
    with unchanged state-dict keys.
    """
    from mmseg.models.backbones.hrnet import HRModule
    from mmseg.models.utils import Upsample
    removed = 0
    for module in backbone.modules():
        if not isinstance(module, HRModule) or module.fuse_layers is None:
            continue
        for row in module.fuse_layers:
            for layer in row:
                if isinstance(layer, nn.Sequential) and len(layer) and \
                        isinstance(layer[-1], Upsample):
                    layer[-1] = nn.Identity()
                    removed += 1
    return removed


@MODELS.register_module()
class HierarchicalMultiScaleSegmentor(CascadeEncoderDecoder):
    """HRNet-OCR with hierarchical multi-scale attention (Tao et al. 2020), the model of
    NVIDIA semantic-segmentation's ``ocrnet.HRNet_Mscale`` and of the released PSA Cityscapes
    checkpoints.

    A cascade of two decode heads as in mmseg's OCRNet (``decode_head[0]``: the FCN head giving
    the soft object regions, NVIDIA's ``ocr.aux_head``; ``decode_head[1]``: an OCR head with
    ``forward_with_features``, :class:`MscaleOCRHead`) plus ``scale_attn_head``
    (:class:`ScaleAttentionHead`), which reads the OCR features and predicts a per-pixel weight
    for the lower of two scales. At each scale the class logits, the auxiliary logits and the
    attention are upsampled (bilinear) to that scale's input size.

    * **Training** (``loss``): the image at ``train_scales = (lo, hi)`` (default 0.5 and 1.0);
      ``joint = up(a_lo * p_lo) + (1 - up(a_lo)) * p_hi`` for the OCR logits and, with the same
      attention, for the auxiliary logits; the decode heads' losses (their ``loss_decode``,
      e.g. CE with weight 0.4 for the auxiliary head, NVIDIA's ``OCR_ALPHA``) are taken on the
      joint predictions. ``scale_loss_weight`` > 0 adds NVIDIA's
      ``--supervised_mscale_loss_wt``: the OCR loss of each single-scale prediction, weighted.
    * **Inference** (``predict`` / ``encode_decode``): the image at every one of
      ``test_scales`` (default 0.5, 1.0, 2.0; 1.0 must be one of them), combined by
      :func:`hierarchical_fusion` exactly as ``MscaleOCR.nscale_forward`` does; the result is
      at the input resolution. ``test_scales=(1.0, )`` is plain single-scale OCRNet inference.

    Args:
        scale_attn_head (dict): config of the scale-attention head.
        train_scales (sequence of 2 floats): (lower, higher) training scales.
        test_scales (sequence of floats): inference scales; must include 1.0.
        scale_loss_weight (float): weight of the extra per-scale losses (0: off).
        direct_fuse_upsample (bool): make mmseg's HRNet fuse layers upsample in one step as
            the original HRNet does (see :func:`use_direct_fuse_upsampling`); no effect on
            other backbones.
        Other arguments as for mmseg's ``CascadeEncoderDecoder`` (``num_stages`` must be 2).
    """

    def __init__(self, backbone: dict, decode_head: List[dict], scale_attn_head: dict,
                 num_stages: int = 2, train_scales: Sequence[float] = (0.5, 1.0),
                 test_scales: Sequence[float] = (0.5, 1.0, 2.0),
                 scale_loss_weight: float = 0.0, direct_fuse_upsample: bool = True,
                 neck: Optional[dict] = None, auxiliary_head: Optional[dict] = None,
                 train_cfg: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, pretrained: Optional[str] = None,
                 init_cfg=None):
        if num_stages != 2:
            raise ValueError(f'HierarchicalMultiScaleSegmentor: num_stages must be 2 (soft '
                             f'object regions head + OCR head), got {num_stages}')
        super().__init__(num_stages=num_stages, backbone=backbone, decode_head=decode_head,
                         neck=neck, auxiliary_head=auxiliary_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         pretrained=pretrained, init_cfg=init_cfg)
        if not hasattr(self.decode_head[-1], 'forward_with_features'):
            raise TypeError(f'HierarchicalMultiScaleSegmentor: the last decode head must hand '
                            f'out its features (forward_with_features), e.g. MscaleOCRHead; '
                            f'got {type(self.decode_head[-1]).__name__}')
        if isinstance(self.test_cfg, dict) and not isinstance(self.test_cfg, ConfigDict):
            self.test_cfg = ConfigDict(self.test_cfg)  # mmseg reads test_cfg.mode
        self.scale_attn_head = MMSEG_MODELS.build(scale_attn_head)
        train_scales = tuple(float(s) for s in train_scales)
        if len(train_scales) != 2 or not train_scales[0] < train_scales[1]:
            raise ValueError(f'HierarchicalMultiScaleSegmentor: train_scales must be two '
                             f'scales (lower, higher), got {train_scales}')
        test_scales = tuple(float(s) for s in test_scales)
        if 1.0 not in test_scales or len(set(test_scales)) != len(test_scales) or \
                min(test_scales) <= 0:
            raise ValueError(f'HierarchicalMultiScaleSegmentor: test_scales must be distinct '
                             f'positive scales including 1.0 (the target scale), got '
                             f'{test_scales}')
        self.train_scales = train_scales
        self.test_scales = test_scales
        self.scale_loss_weight = float(scale_loss_weight)
        self.direct_fuse_upsample = direct_fuse_upsample
        if direct_fuse_upsample:
            use_direct_fuse_upsampling(self.backbone)

    # ------------------------------------------------------------------ one scale
    def _rescale(self, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 1.0:
            return inputs
        return _resize(inputs, scaled_size(inputs.shape[2:], scale), self.align_corners)

    def forward_scale(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One scale (NVIDIA's ``MscaleOCR._fwd``): ``cls``, ``aux`` logits and ``attn``, all
        upsampled to the size of ``inputs``, plus the backbone ``feats``."""
        feats = self.extract_feat(inputs)
        aux = self.decode_head[0].forward(feats)
        cls, ocr_feats = self.decode_head[1].forward_with_features(feats, aux)
        attn = self.scale_attn_head(ocr_feats)
        size = inputs.shape[2:]
        return dict(cls=_resize(cls, size, self.align_corners),
                    aux=_resize(aux, size, self.align_corners),
                    attn=_resize(attn, size, self.align_corners), feats=feats)

    def multi_scale_outputs(self, inputs: torch.Tensor, scales: Sequence[float]
                            ) -> Dict[float, Dict[str, torch.Tensor]]:
        return {s: self.forward_scale(self._rescale(inputs, s)) for s in scales}

    # ------------------------------------------------------------------ inference
    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: List[dict]) -> torch.Tensor:
        """Hierarchical multi-scale logits at the resolution of ``inputs``."""
        outs = self.multi_scale_outputs(inputs, self.test_scales)
        scales = list(outs)
        return hierarchical_fusion(scales, [outs[s]['cls'] for s in scales],
                                   [outs[s]['attn'] for s in scales], self.align_corners)

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        return self.encode_decode(inputs, None)

    # ------------------------------------------------------------------ training
    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        lo, hi = self.train_scales
        out_lo = self.forward_scale(self._rescale(inputs, lo))
        out_hi = self.forward_scale(self._rescale(inputs, hi))
        joint_cls = two_scale_fusion(out_lo['cls'], out_lo['attn'], out_hi['cls'],
                                     self.align_corners)
        joint_aux = two_scale_fusion(out_lo['aux'], out_lo['attn'], out_hi['aux'],
                                     self.align_corners)
        losses = dict()
        losses.update(add_prefix(self.decode_head[0].loss_by_feat(joint_aux, data_samples),
                                 'decode_0'))
        losses.update(add_prefix(self.decode_head[1].loss_by_feat(joint_cls, data_samples),
                                 'decode_1'))
        if self.scale_loss_weight > 0:
            size = out_hi['cls'].shape[2:]
            for name, pred in (('lo', _resize(out_lo['cls'], size, self.align_corners)),
                               ('hi', out_hi['cls'])):
                scale_losses = self.decode_head[1].loss_by_feat(pred, data_samples)
                for key, value in scale_losses.items():
                    if key.startswith('loss'):
                        losses[f'scale_{name}.{key}'] = value * self.scale_loss_weight
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(out_hi['feats'], data_samples))
        return losses
