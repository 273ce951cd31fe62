"""Training-engine components a config selects by type; nothing here changes mmengine itself.

* ``runner_type = 'ResumableRunner'``: atomic checkpoints, resume from the last complete one,
  random states in checkpoints (:class:`ResumableRunner`, :class:`AtomicCheckpointHook`,
  :class:`ResumableRandomStateHook`).
* ``optim_wrapper = dict(type='PortableAmpOptimWrapper', ...)``: mixed precision that also
  trains on a CPU-only machine (bfloat16).
"""
from .hooks import AtomicCheckpointHook, ResumableRandomStateHook  # noqa: F401
from .optim import PortableAmpOptimWrapper  # noqa: F401
from .runner import ResumableRunner  # noqa: F401

__all__ = [
    'AtomicCheckpointHook', 'PortableAmpOptimWrapper', 'ResumableRandomStateHook',
    'ResumableRunner'
]
