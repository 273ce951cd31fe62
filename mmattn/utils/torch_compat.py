"""The torch calls whose spelling changed between torch 2.1 and the newest release.

mmattn supports torch 2.1 (the newest torch mmcv 2.1.0's prebuilt wheels exist for) up to the
newest release mmcv builds against; every version-dependent call goes through this module so the
rest of the code reads as if written for one torch.
"""
from typing import Any, List

import torch

__all__ = ['TORCH_VERSION', 'is_compiling', 'is_capturing', 'autocast_enabled', 'autocast_dtype',
           'disabled_grad_scaler', 'float32_or_wider', 'register_load_state_dict_pre_hook',
           'tree_leaves']


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


TORCH_VERSION = _version_tuple(torch.__version__)


def is_compiling() -> bool:
    """True while torch.compile or torch.export traces (``torch.compiler.is_compiling`` from
    2.3; ``torch._dynamo.is_compiling`` before)."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    from torch import _dynamo
    return _dynamo.is_compiling()


def is_capturing() -> bool:
    """True while scripting, tracing, compiling or exporting: input checks are skipped there so
    they add no guards to a captured graph."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or is_compiling()


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (the per-device query exists from 2.4; 2.1
    has ``is_autocast_enabled()`` for CUDA and ``is_autocast_cpu_enabled()``). A device type
    without autocast support answers False. Decided by version, not by trying, so that
    torch.compile/export can trace it."""
    if TORCH_VERSION >= (2, 4):
        try:
            return torch.is_autocast_enabled(device_type)
        except (RuntimeError, ValueError):  # a device type autocast does not know
            return False
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    return False


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts to on ``device_type`` (``torch.get_autocast_dtype`` from 2.4)."""
    if hasattr(torch, 'get_autocast_dtype'):
        return torch.get_autocast_dtype(device_type)
    if device_type == 'cpu':
        return torch.get_autocast_cpu_dtype()
    return torch.get_autocast_gpu_dtype()


def float32_or_wider(dtype: torch.dtype) -> torch.dtype:
    """``torch.promote_types(dtype, torch.float32)`` for floating dtypes: float64 stays, the
    16-bit types and float32 give float32. (torch 2.1's export cannot trace promote_types.)"""
    return torch.float64 if dtype == torch.float64 else torch.float32


def disabled_grad_scaler(device_type: str = 'cpu'):
    """A pass-through gradient scaler (``enabled=False``) for ``device_type``: ``scale`` and
    ``step`` do nothing extra and its state dict is empty. ``torch.amp.GradScaler`` takes a
    device from 2.3; before, only the CUDA class exists, which disabled works on any device."""
    amp = getattr(torch, 'amp', None)
    if amp is not None and hasattr(amp, 'GradScaler'):
        return amp.GradScaler(device_type, enabled=False)
    return torch.cuda.amp.GradScaler(enabled=False)


def register_load_state_dict_pre_hook(module: torch.nn.Module, hook) -> Any:
    """``module.register_load_state_dict_pre_hook(hook)`` (public from 2.5), with the hook
    called as ``hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
    unexpected_keys, error_msgs)`` on every version."""
    if hasattr(module, 'register_load_state_dict_pre_hook'):
        return module.register_load_state_dict_pre_hook(hook)
    return module._register_load_state_dict_pre_hook(hook, with_module=True)


def tree_leaves(tree: Any) -> List[Any]:
    """The leaves of a nested structure of tuples, lists and dicts (``torch.utils._pytree``'s
    ``tree_leaves`` appeared after 2.1)."""
    from torch.utils import _pytree
    if hasattr(_pytree, 'tree_leaves'):
        return _pytree.tree_leaves(tree)
    return _pytree.tree_flatten(tree)[0]
