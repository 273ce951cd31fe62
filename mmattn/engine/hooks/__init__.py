from .random_state import ResumableRandomStateHook  # noqa: F401

__all__ = ['ResumableRandomStateHook']
