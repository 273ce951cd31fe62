from .checkpoint_hook import AtomicCheckpointHook  # noqa: F401
from .random_state import ResumableRandomStateHook  # noqa: F401

__all__ = ['AtomicCheckpointHook', 'ResumableRandomStateHook']
