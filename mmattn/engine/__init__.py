"""Training-engine additions: hooks that make interrupted runs resume exactly."""
from .hooks import ResumableRandomStateHook  # noqa: F401

__all__ = ['ResumableRandomStateHook']
