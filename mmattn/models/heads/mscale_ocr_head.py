"""mmseg's OCRHead that also hands out the features the scale attention reads."""
from typing import List, Tuple

import torch
from mmseg.models.decode_heads import OCRHead

from mmattn.registry import MODELS

__all__ = ['MscaleOCRHead']


@MODELS.register_module()
class MscaleOCRHead(OCRHead):
    """mmseg's :class:`~mmseg.models.decode_heads.OCRHead`, unchanged, plus
    :meth:`forward_with_features`, which also returns the object-contextual features (after
    the head's dropout) that NVIDIA's ``MscaleOCR`` feeds to its scale-attention head.

    mmseg's OCR head computes what NVIDIA's ``OCR_block`` (``network/ocrnet.py``,
    ``network/ocr_utils.py``) computes, module for module:

    * ``conv3x3_ocr`` (3x3 conv, BN, ReLU) -> ``bottleneck``;
    * ``ocr_gather_head`` (softmax over HW, scale 1) -> ``spatial_gather_module``;
    * ``ocr_distri_head.object_context_block.f_pixel`` / ``f_object`` (2 x conv-BN-ReLU) /
      ``f_down`` / ``f_up`` -> ``object_context_block.query_project`` / ``key_project`` /
      ``value_project`` / ``out_project``;
    * ``ocr_distri_head.conv_bn_dropout`` (1x1 conv-BN-ReLU, Dropout2d(0.05)) ->
      ``object_context_block.bottleneck`` + the head's ``dropout`` (``dropout_ratio=0.05``);
    * ``cls_head`` -> ``conv_seg``.

    Same maths: key/query/value projections, ``key_channels ** -0.5`` scaling, softmax over
    the object regions, ``cat([context, feats])`` in that order. The one difference is that
    NVIDIA's ``conv3x3_ocr`` conv has a bias and mmcv's ConvModule (conv followed by BN) has
    none; a bias in front of a BatchNorm is redundant (``BN(Wx + b)`` equals ``BN(Wx)`` with
    ``running_mean - b``, and in training the batch mean absorbs it), so the converter folds it
    into ``bottleneck.bn.running_mean``.
    """

    def forward_with_features(self, inputs: List[torch.Tensor], prev_output: torch.Tensor
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(seg_logits, features)`` at the feature resolution; ``features`` are what
        ``conv_seg`` reads (after dropout in training)."""
        x = self._transform_inputs(inputs)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_output)
        object_context = self.object_context_block(feats, context)
        if self.dropout is not None:
            object_context = self.dropout(object_context)
        return self.conv_seg(object_context), object_context

    def forward(self, inputs, prev_output):
        return self.forward_with_features(inputs, prev_output)[0]
