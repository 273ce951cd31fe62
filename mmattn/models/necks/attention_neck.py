"""``AttentionNeck``: an attention module on each level of a multi-level feature list."""
import copy
from typing import Optional, Sequence

import torch.nn as nn
from mmengine.model import BaseModule

from mmattn.registry import MODELS

from ..layers.factory import attention_cfg, resolve_attention_cfg


@MODELS.register_module()
class AttentionNeck(BaseModule):
    """Apply an attention module to each level of the backbone's outputs (per-level channels).

    Channels and level count are unchanged, so the neck drops in between any backbone and head
    of mmseg, mmpose or mmdet. Levels not listed in ``levels`` pass through untouched.

    Args:
        in_channels (Sequence[int]): channels of each input level.
        attention (dict | str): the module's config without ``in_channels`` (e.g.
            ``dict(type='CBAM')``) or a short name of ``mmattn.list_attention()``.
        levels (Sequence[int], optional): indices of the levels to attend; default all.
        residual (bool): return ``x + attention(x)`` instead of ``attention(x)``.
    """

    def __init__(self, in_channels: Sequence[int], attention, levels: Optional[Sequence[int]] = None,
                 residual: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(in_channels, int) or not all(isinstance(c, int) for c in in_channels):
            raise TypeError(f'AttentionNeck: in_channels must be a list of ints (one per level), '
                            f'got {in_channels!r}')
        self.in_channels = list(in_channels)
        num_levels = len(self.in_channels)
        self.levels = list(range(num_levels)) if levels is None else list(levels)
        bad = [i for i in self.levels if not -num_levels <= i < num_levels]
        if bad:
            raise ValueError(f'AttentionNeck: levels {bad} out of range for {num_levels} input '
                             f'levels (in_channels={self.in_channels})')
        self.levels = sorted({i % num_levels for i in self.levels})
        self.residual = residual
        self.attentions = nn.ModuleDict()
        for i in self.levels:
            if isinstance(attention, str):
                cfg = attention_cfg(attention, self.in_channels[i])
            else:
                cfg = dict(resolve_attention_cfg(copy.deepcopy(attention)),
                           in_channels=self.in_channels[i])
            self.attentions[str(i)] = MODELS.build(cfg)

    def forward(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(self.in_channels):
            got = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(f'AttentionNeck expects {len(self.in_channels)} feature levels with '
                             f'channels {self.in_channels}, got {got}')
        outs = list(inputs)
        for key, attention in self.attentions.items():
            i = int(key)
            y = attention(outs[i])
            outs[i] = outs[i] + y if self.residual else y
        return tuple(outs)
