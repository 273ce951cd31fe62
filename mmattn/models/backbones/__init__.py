from .attention_backbone import AttentionBackbone  # noqa: F401
from .pretrained import PretrainedWeightsError, ensure_pretrained  # noqa: F401
