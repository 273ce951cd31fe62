"""mmsegmentation-only parts: the hierarchical multi-scale segmentor and its heads. Imported by a
config's ``custom_imports=dict(imports=['mmattn', 'mmattn.models.segmentors'])``; needs mmseg."""
from ..heads import MscaleOCRHead, ScaleAttentionHead  # noqa: F401
from .multiscale_attention import (HierarchicalMultiScaleSegmentor,  # noqa: F401
                                   hierarchical_fusion, two_scale_fusion)

__all__ = [
    'HierarchicalMultiScaleSegmentor', 'MscaleOCRHead', 'ScaleAttentionHead',
    'hierarchical_fusion', 'two_scale_fusion'
]
