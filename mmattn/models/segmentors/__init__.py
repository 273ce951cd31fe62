from .multiscale_attention import (HierarchicalMultiScaleSegmentor,  # noqa: F401
                                   hierarchical_fusion, two_scale_fusion)

__all__ = ['HierarchicalMultiScaleSegmentor', 'hierarchical_fusion', 'two_scale_fusion']
