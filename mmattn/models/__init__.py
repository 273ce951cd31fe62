"""Models registered on ``import mmattn``: the attention layers, ``AttentionBackbone``,
``AttentionNeck`` and the block plugins. The mmsegmentation-only parts (``segmentors``,
``heads``) are imported on demand (``custom_imports`` of ``mmattn.models.segmentors``)."""
from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .layers import build_attention, list_attention  # noqa: F401
from .necks import *  # noqa: F401,F403
from .plugins import add_block_plugins  # noqa: F401
