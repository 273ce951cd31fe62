"""Where mmattn registers its modules.

mmattn registers into mmengine's root ``MODELS`` registry, as mmcv's bricks and plugins do.
mmseg, mmpose and mmdet each have a child registry of that root, and an unscoped lookup falls back
to the parent, so a module registered here is found from every downstream scope with nothing more
than ``custom_imports=dict(imports=['mmattn'])`` in a config. A child registry of our own would
only be reachable as ``mmattn.Name`` from those scopes, which is not how users write configs.
"""
from mmengine.registry import MODELS

__all__ = ['MODELS']
