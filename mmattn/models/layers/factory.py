"""Build any attention module of the zoo from a short name: ``build_attention('psa_p', 256)``."""
import difflib
from typing import Dict, List, Tuple

from mmattn.registry import MODELS

# short name -> (registered class name, defaults the short name implies)
_SHORT_NAMES: Dict[str, Tuple[str, dict]] = {
    'psa_p': ('PolarizedSelfAttention', dict(mode='parallel')),
    'psa_s': ('PolarizedSelfAttention', dict(mode='sequential')),
    'se': ('SqueezeExcitation', {}),
    'eca': ('EfficientChannelAttention', {}),
    'cbam': ('CBAM', {}),
    'nonlocal': ('FusedNonLocal2d', {}),
    'danet_pam': ('DANetPositionAttention', {}),
    'danet_cam': ('DANetChannelAttention', {}),
    'danet': ('DANetDualAttention', {}),
    'gc': ('GlobalContextBlock', {}),
    'triplet': ('TripletAttention', {}),
    'coord': ('CoordinateAttention', {}),
    'acmix': ('ACmix', {}),
    'dat': ('DeformableAttention2d', {}),
    'spd': ('SPDConv', {}),
    'dcnv2': ('DeformableConvV2', {}),
}


def list_attention() -> List[str]:
    """The short names ``build_attention`` accepts (its registered class names work too)."""
    return list(_SHORT_NAMES)


def attention_class_names() -> List[str]:
    """The registered class names behind the short names, without duplicates."""
    return list(dict.fromkeys(cls for cls, _ in _SHORT_NAMES.values()))


def resolve_attention(name: str) -> Tuple[str, dict]:
    """Map a short name or a class name to ``(class name, implied defaults)``.

    Unknown names raise a ``KeyError`` that lists the close matches and every available name.
    """
    if not isinstance(name, str):
        raise TypeError(f'attention name must be a str, got {type(name).__name__}')
    key = name.lower()
    if key in _SHORT_NAMES:
        cls_name, defaults = _SHORT_NAMES[key]
        return cls_name, dict(defaults)
    if name in attention_class_names() or MODELS.get(name) is not None:
        return name, {}
    candidates = list(_SHORT_NAMES) + attention_class_names()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    close += [c for c in candidates if key in c.lower() and c not in close][:3]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ''
    raise KeyError(f"unknown attention '{name}'. {hint}Available short names: "
                   f"{', '.join(_SHORT_NAMES)}; or a class name: "
                   f"{', '.join(attention_class_names())}")


def resolve_attention_cfg(cfg: dict) -> dict:
    """A module config whose ``type`` may be a short name (``dict(type='psa_s')``) or a class
    name, as the class name with the defaults the short name implies; an unknown name raises
    the ``KeyError`` with close matches. Non-string types (classes) pass through."""
    cfg = dict(cfg)
    if isinstance(cfg.get('type'), str):
        cls_name, implied = resolve_attention(cfg['type'])
        cfg = {**implied, **cfg, 'type': cls_name}
    return cfg


def attention_cfg(name: str, in_channels: int, **kwargs) -> dict:
    """The config dict ``build_attention`` would build (useful inside mmengine configs)."""
    cls_name, defaults = resolve_attention(name)
    defaults.update(kwargs)
    return dict(type=cls_name, in_channels=in_channels, **defaults)


def build_attention(name: str, in_channels: int, **kwargs):
    """Build an attention module from a short name (see ``list_attention()``) or a registered
    class name, with ``in_channels`` first and the paper's defaults for everything else."""
    cfg = attention_cfg(name, in_channels, **kwargs)
    if MODELS.get(cfg['type']) is None:
        raise KeyError(f"attention '{name}' maps to {cfg['type']}, which is not registered "
                       f'(is mmattn imported?)')
    return MODELS.build(cfg)
