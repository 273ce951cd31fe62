from .attention_backbone import AttentionBackbone  # noqa: F401
