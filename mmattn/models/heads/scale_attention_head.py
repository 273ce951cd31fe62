"""The scale-attention head of hierarchical multi-scale attention (Tao et al. 2020)."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmattn.registry import MODELS

__all__ = ['ScaleAttentionHead']


@MODELS.register_module()
class ScaleAttentionHead(BaseModule):
    """Per-pixel scale weights for :class:`HierarchicalMultiScaleSegmentor`.

    Tao, Sapra and Catanzaro 2020, "Hierarchical Multi-Scale Attention for Semantic
    Segmentation" (arXiv 2005.10821); the layout is NVIDIA semantic-segmentation's
    ``make_attn_head`` (``network/utils.py``) with its defaults (``MSCALE_INNER_3x3=True``,
    ``MSCALE_DROPOUT=False``, ``SEGATTN_BOT_CH=256``), which is what the released PSA
    checkpoints hold under ``scale_attn.*``::

        a = sigmoid(conv1x1(relu(bn(conv3x3(relu(bn(conv3x3(x))))))))

    ``num_convs`` 3x3 conv-norm-ReLU units (no conv bias), optional dropout, then a 1x1 conv to
    one channel without bias and a sigmoid. ``x`` is the OCR head's features (after its
    dropout), ``a`` in (0, 1) is the weight of the *lower* of two scales.

    Key mapping to the released layout: ``scale_attn.conv{i}.weight`` ->
    ``convs.{i}.conv.weight``, ``scale_attn.bn{i}.*`` -> ``convs.{i}.bn.*``,
    ``scale_attn.conv2.weight`` -> ``conv_attn.weight`` (with ``num_convs=2``).

    Args:
        in_channels (int): Channels of the features the head reads (OCR mid channels, 512).
        channels (int): Bottleneck channels (256 in the release).
        num_convs (int): Number of 3x3 conv-norm-ReLU units (2 in the release; 1 is NVIDIA's
            ``--mscale_no3x3``).
        dropout_ratio (float): ``nn.Dropout`` before the last conv (NVIDIA's
            ``--mscale_dropout`` uses 0.5); 0 disables it (release).
        norm_cfg, act_cfg, conv_cfg (dict): mmcv layer configs.
    """

    def __init__(self, in_channels: int, channels: int = 256, num_convs: int = 2,
                 dropout_ratio: float = 0.0, conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_convs < 1:
            raise ValueError(f'ScaleAttentionHead: num_convs must be >= 1, got {num_convs}')
        self.in_channels = in_channels
        self.channels = channels
        self.convs = nn.Sequential(*[
            ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
            for i in range(num_convs)
        ])
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return torch.sigmoid(self.conv_attn(x))
