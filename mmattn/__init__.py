"""mmattn: attention modules for dense prediction as OpenMMLab plugins.

``import mmattn`` (or ``custom_imports=dict(imports=['mmattn'])`` in a config) applies the
compatibility fixes for the pinned stack and registers every module into the OpenMMLab
registries.
"""
from . import compat
from .version import __version__  # noqa: F401

compat.apply()

from .models import build_attention, list_attention  # noqa: E402,F401
from .models.layers import attention_cfg  # noqa: E402,F401
from . import engine  # noqa: E402,F401  (hooks: random states in checkpoints)

__all__ = ['build_attention', 'list_attention', 'attention_cfg', '__version__']
