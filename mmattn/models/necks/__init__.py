from .attention_neck import AttentionNeck  # noqa: F401
