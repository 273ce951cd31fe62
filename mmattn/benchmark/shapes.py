"""Feature shapes where the shipped configs put attention modules.

HRNet-W48 has four branches of 48/96/192/384 channels at strides 4/8/16/32 of the input; the
shipped PSA configs put a module in every BasicBlock of stages 2-4 (the released PSA placement), so a module sees
those four shapes. Inputs: UDP-Pose 256x192 and 384x288 (COCO), OCRNet 512x1024 crops
(Cityscapes).
"""
import re
from typing import Dict, List, NamedTuple, Sequence

__all__ = ['FeatureShape', 'SHAPE_SETS', 'HRNET_W48_CHANNELS', 'HRNET_STRIDES', 'parse_shapes',
           'branch_shapes']

HRNET_W48_CHANNELS = (48, 96, 192, 384)
HRNET_STRIDES = (4, 8, 16, 32)


class FeatureShape(NamedTuple):
    """One feature map ``(C, H, W)`` and where it comes from."""
    channels: int
    height: int
    width: int
    source: str = ''

    @property
    def label(self) -> str:
        return f'{self.channels}x{self.height}x{self.width}'

    @property
    def pixels(self) -> int:
        return self.height * self.width


def branch_shapes(height: int, width: int, source: str,
                  channels: Sequence[int] = HRNET_W48_CHANNELS,
                  strides: Sequence[int] = HRNET_STRIDES) -> List[FeatureShape]:
    """The HRNet branch shapes of an ``height x width`` input."""
    return [FeatureShape(c, height // s, width // s, f'{source} s{s}')
            for c, s in zip(channels, strides)]


SHAPE_SETS: Dict[str, List[FeatureShape]] = {
    'pose256': branch_shapes(256, 192, 'pose 256x192'),
    'pose384': branch_shapes(384, 288, 'pose 384x288'),
    'city': branch_shapes(512, 1024, 'cityscapes 512x1024'),
}

_CUSTOM = re.compile(r'^(\d+)[x:](\d+)x(\d+)$')


def parse_shapes(tokens: Sequence[str]) -> List[FeatureShape]:
    """Shapes from tokens: a set name (``pose256``, ``pose384``, ``city``), a set name with a
    branch (``city:s4``, ``pose256:s32``) or an explicit ``CxHxW`` (``512x128x256``)."""
    shapes: List[FeatureShape] = []
    for token in tokens:
        name, _, branch = token.partition(':')
        if name in SHAPE_SETS:
            found = SHAPE_SETS[name]
            if branch:
                found = [s for s in found if s.source.endswith(' ' + branch)]
                if not found:
                    raise ValueError(f'unknown branch {branch!r} of {name} (s4, s8, s16, s32)')
            shapes.extend(found)
            continue
        match = _CUSTOM.match(token)
        if not match:
            raise ValueError(f'unknown shape {token!r}: use one of {", ".join(SHAPE_SETS)} '
                             f'(optionally :s4/:s8/:s16/:s32) or CxHxW, e.g. 512x128x256')
        c, h, w = (int(g) for g in match.groups())
        shapes.append(FeatureShape(c, h, w, 'custom'))
    return shapes
