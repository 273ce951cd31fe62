from .mscale_ocr_head import MscaleOCRHead  # noqa: F401
from .scale_attention_head import ScaleAttentionHead  # noqa: F401

__all__ = ['MscaleOCRHead', 'ScaleAttentionHead']
