"""Helpers shared by every attention module: channel rounding, activation by name, and the
argument/input checks that turn user mistakes into messages naming what was expected."""
import math
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer

from mmattn.utils.torch_compat import is_capturing


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None,
                   round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, not below ``min_value`` and not
    more than ``1 - round_limit`` below ``value`` (the rule used by MobileNet/timm)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def act_cfg_from_name(act: Union[str, dict, None]) -> Optional[dict]:
    """Accept an activation as a short name ('relu', 'gelu', 'hswish', 'sigmoid', ...) or an
    mmcv ``act_cfg`` dict; return the dict (``None`` stays ``None``: no activation)."""
    if act is None or isinstance(act, dict):
        return act
    if not isinstance(act, str):
        raise TypeError(f'act must be a name, an act_cfg dict or None, got {type(act).__name__}')
    aliases = {
        'relu': 'ReLU', 'relu6': 'ReLU6', 'gelu': 'GELU', 'silu': 'SiLU', 'swish': 'Swish',
        'hswish': 'HSwish', 'hard_swish': 'HSwish', 'hsigmoid': 'HSigmoid',
        'hard_sigmoid': 'HSigmoid', 'sigmoid': 'Sigmoid', 'tanh': 'Tanh', 'prelu': 'PReLU',
        'leaky_relu': 'LeakyReLU', 'elu': 'ELU', 'mish': 'Mish',
    }
    key = act.lower()
    if key not in aliases:
        raise ValueError(f"unknown activation '{act}'; expected one of {sorted(aliases)}")
    return dict(type=aliases[key])


def build_act(act: Union[str, dict, None]) -> torch.nn.Module:
    """Build an activation module from a name or an ``act_cfg`` (``None`` gives Identity)."""
    cfg = act_cfg_from_name(act)
    if cfg is None:
        return torch.nn.Identity()
    return build_activation_layer(cfg)


def build_act_arg(owner: str, arg: str, cfg) -> torch.nn.Module:
    """``build_act`` whose errors name the class and the argument (e.g. ``act_cfg``)."""
    try:
        return build_act(cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        err = TypeError if isinstance(e, TypeError) else ValueError
        raise err(f'{owner}: {arg}={cfg!r} is not a valid activation ({e})') from e


def build_norm_arg(owner: str, cfg, num_features: int) -> torch.nn.Module:
    """mmcv ``build_norm_layer`` whose errors name the class and ``norm_cfg``."""
    if not isinstance(cfg, dict):
        raise TypeError(f"{owner}: norm_cfg must be a dict such as dict(type='BN'), got {cfg!r}")
    try:
        return build_norm_layer(cfg, num_features)[1]
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        err = TypeError if isinstance(e, TypeError) else ValueError
        raise err(f'{owner}: norm_cfg={cfg!r} is not a valid norm ({e})') from e


# ----------------------------------------------------------------------------- numerics
LOW_PRECISION = (torch.float16, torch.bfloat16)


def softmax_float32(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax in float32 for half/bfloat16 inputs (exp over many positions loses too much in
    8-10 mantissa bits), float32/float64 inputs as they are. Upcasts first:
    ``softmax(dtype=torch.float32)`` on a 16-bit CPU tensor takes a much slower path."""
    return torch.softmax(t.float() if t.dtype in LOW_PRECISION else t, dim)


def channel_max(x: torch.Tensor) -> torch.Tensor:
    """Max over dim 1, kept: ``(N, 1, H, W)``. Where a gradient is needed, max with indices
    (``torch.max(x, 1)``, as the released CBAM and Triplet code): its backward scatters into
    the arg-max and keeps only the ``(N, 1, H, W)`` indices, where ``amax``'s keeps ``x`` and
    builds full-size masks (forward+backward 5-30% less memory, and faster at most sizes
    measured on CPU). The gradient of a tied maximum goes to one of the tied channels instead
    of being split equally among them. Without gradients, ``amax``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.max(x, dim=1, keepdim=True)[0]
    return x.amax(dim=1, keepdim=True)


def global_max(x: torch.Tensor) -> torch.Tensor:
    """Max over the positions, ``(N, C, 1, 1)``. Where a gradient is needed, max with indices
    (``adaptive_max_pool2d``: its backward scatters into the argmax, 2.5x faster than amax's
    full-size masks and without their memory); the values are amax's, the gradient of a tied
    maximum goes to one of the tied positions instead of being split equally among them.
    Without gradients, ``amax`` (10x faster than computing indices)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.adaptive_max_pool2d(x, 1)
    return x.amax(dim=(2, 3), keepdim=True)


# ----------------------------------------------------------------------------- argument checks
def check_int(name: str, value, minimum: int = 1, owner: str = '') -> int:
    """Raise TypeError/ValueError naming ``name`` unless ``value`` is an int >= ``minimum``."""
    prefix = f'{owner}: ' if owner else ''
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{prefix}{name} must be an int, got {type(value).__name__} ({value!r})')
    if value < minimum:
        raise ValueError(f'{prefix}{name} must be >= {minimum}, got {value}')
    return value


def check_bool(name: str, value, owner: str = '') -> bool:
    """Raise TypeError naming ``name`` unless ``value`` is a bool (1/0 and strings are refused:
    a flag given as ``'False'`` would otherwise read as true)."""
    if not isinstance(value, bool):
        prefix = f'{owner}: ' if owner else ''
        raise TypeError(f'{prefix}{name} must be a bool, got {type(value).__name__} ({value!r})')
    return value


def check_odd_kernel(name: str, value, owner: str = '') -> int:
    """An int >= 1 that is odd, so that padding ``value // 2`` keeps the map size."""
    check_int(name, value, 1, owner)
    if value % 2 == 0:
        prefix = f'{owner}: ' if owner else ''
        raise ValueError(f'{prefix}{name} must be odd, got {value}')
    return value


def check_positive(name: str, value, owner: str = '') -> float:
    """Raise unless ``value`` is a real number > 0."""
    prefix = f'{owner}: ' if owner else ''
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{prefix}{name} must be a number, got {type(value).__name__}')
    if not value > 0:
        raise ValueError(f'{prefix}{name} must be > 0, got {value}')
    return value


def check_choice(name: str, value, choices: Sequence, owner: str = ''):
    """Raise ValueError naming ``name`` and the allowed values unless ``value`` is one of them."""
    if value not in choices:
        prefix = f'{owner}: ' if owner else ''
        raise ValueError(f'{prefix}{name} must be one of {list(choices)}, got {value!r}')
    return value


def check_divisible(name: str, value: int, divisor_name: str, divisor: int, owner: str = ''):
    """Raise ValueError unless ``divisor`` divides ``value``."""
    if value % divisor:
        prefix = f'{owner}: ' if owner else ''
        raise ValueError(f'{prefix}{name}={value} must be divisible by {divisor_name}={divisor}')


def rd_ratio_arg(owner: str, rd_ratio: Optional[float], default: float,
                 old_name: Optional[str] = None, old_value=None,
                 old_divides: bool = True) -> float:
    """The bottleneck ratio of a module, in the zoo's one vocabulary: ``rd_ratio``, the
    reduced width as a fraction of ``in_channels`` (timm's name and meaning, e.g. 1/16).

    ``old_name=old_value`` is the module's deprecated spelling (``ratio`` or ``reduction``,
    which divide ``in_channels`` where ``old_divides``, or GC's ``ratio``, already a
    fraction): it still works, converted, with a ``DeprecationWarning``. Raises naming the
    argument unless the ratio is a number in (0, 1].
    """
    if old_value is not None:
        if rd_ratio is not None:
            raise TypeError(f'{owner}: got rd_ratio={rd_ratio!r} and its deprecated spelling '
                            f'{old_name}={old_value!r}; pass rd_ratio only')
        check_positive(old_name, old_value, owner)
        rd_ratio = 1.0 / old_value if old_divides else old_value
        hint = f'1/{old_value:g}' if old_divides else f'{old_value!r}'
        warnings.warn(
            f'{owner}: {old_name}={old_value!r} is deprecated, use rd_ratio={hint} (the '
            f'reduced width as a fraction of in_channels, the same for every mmattn module)',
            DeprecationWarning, stacklevel=3)
    if rd_ratio is None:
        return default
    check_positive('rd_ratio', rd_ratio, owner)
    if rd_ratio > 1:
        raise ValueError(f'{owner}: rd_ratio is the reduced width as a fraction of '
                         f'in_channels and must be in (0, 1], got {rd_ratio} (did you mean '
                         f'1/{rd_ratio:g}?)')
    return rd_ratio


def reduced_channels(in_channels: int, rd_ratio: float, owner: str, min_channels: int = 1,
                     divisor: Optional[int] = None) -> int:
    """Channels of a bottleneck ``in_channels * rd_ratio``, floored (or rounded by
    :func:`make_divisible` to a multiple of ``divisor``); raise when that leaves fewer than
    ``min_channels`` (e.g. SE with rd_ratio 1/16 on 8 channels) instead of building a 0-wide
    conv. The floor tolerates the float error of a ratio like 1/12, so ``C * (1 / r)`` gives
    ``C // r`` for a divisor ``r`` of ``C``."""
    width = in_channels * rd_ratio
    hidden = make_divisible(width, divisor) if divisor else int(width + 1e-6)
    if hidden < min_channels:
        raise ValueError(
            f'{owner}: in_channels={in_channels} is too small for rd_ratio={rd_ratio:g} '
            f'(gives {hidden} reduced channels, need >= {min_channels}); use in_channels >= '
            f'{math.ceil(min_channels / rd_ratio - 1e-6)} or a larger rd_ratio')
    return hidden


# ----------------------------------------------------------------------------- input checks
def check_input(module: torch.nn.Module, x, channels: Optional[int] = None,
                min_size: Union[int, Sequence[int]] = 1, divisible_by: int = 1) -> None:
    """Raise ValueError naming the module and the expected shape unless ``x`` is a
    ``(N, channels, H, W)`` tensor with ``H, W >= min_size`` (and divisible by ``divisible_by``).

    Called at the top of every forward so a wrong feature map fails here, not deep in torch.
    Cheap: it reads only ``x.shape``; skipped while tracing/exporting to keep graphs clean.
    """
    if is_capturing():
        return
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} expects a tensor of shape (N, C, H, W), got {type(x).__name__}')
    expected_c = 'C' if channels is None else str(channels)
    if x.dim() != 4:
        raise ValueError(f'{name} expects a 4-D input (N, {expected_c}, H, W), '
                         f'got shape {tuple(x.shape)}')
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f'{name} was built for in_channels={channels}; expected input '
                         f'(N, {channels}, H, W), got shape {tuple(x.shape)}')
    min_h, min_w = (min_size, min_size) if isinstance(min_size, int) else tuple(min_size)
    h, w = x.shape[-2:]
    if h < min_h or w < min_w:
        raise ValueError(f'{name} needs a feature map of at least {min_h}x{min_w}, '
                         f'got {h}x{w} (input shape {tuple(x.shape)})')
    if divisible_by > 1 and (h % divisible_by or w % divisible_by):
        raise ValueError(f'{name} needs H and W divisible by {divisible_by}, got {h}x{w} '
                         f'(input shape {tuple(x.shape)})')
