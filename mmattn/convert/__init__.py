"""Checkpoint converters (released checkpoints of other code bases -> mmattn configs)."""
from .official_psa import (ConversionError, check_against_model,  # noqa: F401
                           convert_checkpoint, convert_state_dict, detect_variant,
                           load_released_state_dict)

__all__ = ['ConversionError', 'check_against_model', 'convert_checkpoint',
           'convert_state_dict', 'detect_variant', 'load_released_state_dict']
