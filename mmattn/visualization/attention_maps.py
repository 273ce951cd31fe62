"""What an attention module does to its input, as a spatial map and a channel vector.

The protocol: :func:`attention_maps` ``(module, x) -> dict(spatial=(N, H, W) | None,
channel=(N, C) | None)``.

* A module with its own ``attention_maps(x)`` method (PSA, SE, ECA, CBAM, Coordinate and
  Triplet attention) returns the gates it multiplies ``x`` by, computed with its forward's
  maths. For a gate that is separable (PSA, SE, ECA, CBAM) these are the factors themselves;
  for one with a weight per channel *and* position (Coordinate, Triplet) they are that gate's
  means over channels and over positions.
* Any other module gets a generic estimate from one forward: the *gain* of the module,
  ``spatial = mean_c |out| / mean_c |x|`` and ``channel = mean_hw |out| / mean_hw |x|`` (the
  ratio of mean magnitudes, i.e. the gain ``|out| / |x|`` averaged over channels / positions
  with ``|x|`` as weight, which keeps channels that are zero in ``x`` from dominating).
  This is an approximation: it equals the gate exactly for a pure multiplicative gate
  ``x * a(h, w)`` or ``x * a(c)``, and is only a description of how much the module amplifies
  or damps each position / channel for anything else (residual additions, mixing of
  positions, sign changes). Positions/channels where ``x`` is zero everywhere give NaN (1
  where the output is zero there too).
  A module that changes the spatial size gives ``spatial=None``, one that changes the number
  of channels ``channel=None``.

Plus the helpers the visualisation tool needs: finding the attention modules of a model and
naming them after their place in the backbone (:func:`find_attention_modules`), capturing
their inputs during one inference (:class:`capture_inputs`) and summary statistics
(:func:`map_stats`).
"""
import copy
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'attention_maps', 'gain_maps', 'AttentionSite', 'find_attention_modules',
    'attention_classes', 'parse_site', 'capture_inputs', 'map_stats', 'has_own_maps'
]

_STAGE_RE = re.compile(r'(?:^|\.)(?:layer|stage|res_layer|res)(\d+)(?=\.|$)')
_BRANCH_RE = re.compile(r'\.branches\.(\d+)(?=\.)')


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f'cannot read an output tensor from {type(out).__name__}')


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 1 where both are zero (nothing changed), NaN where only den is."""
    out = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    out = torch.where(den > 0, out, torch.full_like(out, float('nan')))
    return torch.where((den == 0) & (num == 0), torch.ones_like(out), out)


@torch.no_grad()
def gain_maps(x: torch.Tensor, out: torch.Tensor) -> dict:
    """The generic estimate (see the module docstring) from an input and its output."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # half precision to float32
    x = x.to(dtype).abs()
    out = _first_tensor(out).to(dtype).abs()
    spatial = channel = None
    if out.dim() == 4 and out.shape[0] == x.shape[0]:
        if out.shape[-2:] == x.shape[-2:]:
            spatial = _ratio(out.mean(dim=1), x.mean(dim=1))
        if out.shape[1] == x.shape[1]:
            channel = _ratio(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)))
    return dict(spatial=spatial, channel=channel)


def _check_result(module: nn.Module, x: torch.Tensor, maps) -> dict:
    name = type(module).__name__
    if not isinstance(maps, dict) or set(maps) - {'spatial', 'channel'}:
        raise TypeError(f'{name}.attention_maps must return dict(spatial=..., channel=...), '
                        f'got {maps!r:.200}')
    n, c, h, w = x.shape
    spatial, channel = maps.get('spatial'), maps.get('channel')
    if spatial is not None and tuple(spatial.shape) != (n, h, w):
        raise ValueError(f'{name}.attention_maps: spatial map of shape {tuple(spatial.shape)}, '
                         f'expected (N, H, W) = {(n, h, w)}')
    if channel is not None and tuple(channel.shape) != (n, c):
        raise ValueError(f'{name}.attention_maps: channel weights of shape '
                         f'{tuple(channel.shape)}, expected (N, C) = {(n, c)}')
    return dict(spatial=spatial, channel=channel)


@torch.no_grad()
def attention_maps(module: nn.Module, x: torch.Tensor, out: Optional[torch.Tensor] = None,
                   precise: bool = False) -> dict:
    """``dict(spatial=(N, H, W) tensor or None, channel=(N, C) tensor or None)`` for
    ``module`` applied to ``x`` (N, C, H, W).

    Uses ``module.attention_maps(x)`` when the module has one, else :func:`gain_maps` of one
    forward (``out``, the module's output for ``x``, saves that forward when it is known).

    ``precise=True`` computes the maps with a float64 copy of the module (falling back to the
    module as it is when it cannot run in float64). Worth it for display: PSA's released
    spatial gate is ``sigmoid(softmax over HW)``, i.e. ``0.5 + O(1 / HW)``, whose variation is
    only a few float32 steps on large maps.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f'attention_maps expects an (N, C, H, W) input, got '
                         f'{getattr(x, "shape", type(x).__name__)}')
    if precise and x.dtype != torch.float64:
        try:
            maps = attention_maps(copy.deepcopy(module).double(), x.double())
        except (RuntimeError, TypeError, NotImplementedError):
            maps = None  # e.g. a compiled op without a float64 kernel
        if maps is not None:
            return maps
    method = getattr(module, 'attention_maps', None)
    if callable(method):
        return _check_result(module, x, method(x))
    if out is None:
        out = module(x)
    return gain_maps(x, out)


def has_own_maps(module: nn.Module) -> bool:
    """Whether ``module`` computes its maps itself (else the gain estimate is used)."""
    return callable(getattr(module, 'attention_maps', None))


# ----------------------------------------------------------------------------- discovery
def attention_classes() -> Dict[str, type]:
    """The attention classes mmattn registers, ``{class name: class}``."""
    from mmattn.models.layers import attention_class_names
    from mmattn.registry import MODELS
    classes = {}
    for name in attention_class_names():
        cls = MODELS.get(name)
        if isinstance(cls, type):
            classes[name] = cls
    return classes


@dataclass
class AttentionSite:
    """An attention module and where it sits.

    ``path`` is its name in the model (``backbone.stage3.2.branches.1.3.deattn``); ``group`` the
    stage number (int) parsed from the path, or its first component (``'neck'``) when the path
    names no stage; ``branch`` the HRNet branch (0 elsewhere); ``block`` the rest of the path
    without stage and branch (``'2.3.deattn'``: HRNet module 2, block 3), a column key.
    """
    path: str
    module: nn.Module
    group: object
    branch: int
    block: str
    kind: str = field(default='')

    @property
    def short_path(self) -> str:
        """The path without the leading ``backbone.``/``neck.`` style component when the
        remainder still names a stage."""
        head, _, rest = self.path.partition('.')
        return rest if rest and _STAGE_RE.search(rest) else self.path


def parse_site(path: str) -> Tuple[object, int, str]:
    """``(group, branch, block)`` of a module path, see :class:`AttentionSite`.

    >>> parse_site('backbone.stage3.2.branches.1.3.deattn')
    (3, 1, '2.3.deattn')
    >>> parse_site('backbone.layer2.1.se')
    (2, 0, '1.se')
    >>> parse_site('neck.attentions.0')
    ('neck', 0, 'attentions.0')
    """
    stage = _STAGE_RE.search(path)
    branch = _BRANCH_RE.search(path)
    if stage is None:
        head, _, rest = path.partition('.')
        return head, int(branch.group(1)) if branch else 0, rest or head
    rest = path[stage.end():].lstrip('.')
    if branch is not None:
        rest = _BRANCH_RE.sub('', '.' + rest + '.', count=1).strip('.')
    return int(stage.group(1)), int(branch.group(1)) if branch else 0, rest


def find_attention_modules(model: nn.Module,
                           classes: Optional[Dict[str, type]] = None) -> List[AttentionSite]:
    """Every module of ``model`` that is an instance of a registered mmattn attention class,
    outermost only (a module inside another attention module is part of it), in model order."""
    classes = attention_classes() if classes is None else classes
    types = tuple(classes.values())
    sites: List[AttentionSite] = []
    for path, module in model.named_modules():
        if not path or not isinstance(module, types):
            continue
        if any(path.startswith(s.path + '.') for s in sites):
            continue
        group, branch, block = parse_site(path)
        sites.append(AttentionSite(path, module, group, branch, block, type(module).__name__))
    return sites


class capture_inputs:
    """Context manager: record the first input (and output) of each module during the
    inference run inside it. ``recorded[path] = (x, out)``; ``extra`` modules (e.g. the
    backbone, whose input is the network's image tensor) are recorded the same way."""

    def __init__(self, sites: Sequence[AttentionSite],
                 extra: Optional[Dict[str, nn.Module]] = None):
        self.targets = {s.path: s.module for s in sites}
        self.targets.update(extra or {})
        self.recorded: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls: Dict[str, int] = {}
        self._handles = []

    def _hook(self, path):
        def hook(module, args, output):
            self.calls[path] = self.calls.get(path, 0) + 1
            if path in self.recorded or not args or not isinstance(args[0], torch.Tensor):
                return
            out = output if isinstance(output, torch.Tensor) else None
            self.recorded[path] = (args[0].detach(), None if out is None else out.detach())
        return hook

    def __enter__(self):
        for path, module in self.targets.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False


# ----------------------------------------------------------------------------- statistics
def map_stats(t: Optional[torch.Tensor]) -> Optional[dict]:
    """min/max/mean/std of a map, ignoring NaNs (None for no map or no finite value)."""
    if t is None:
        return None
    v = t.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return None
    return dict(min=float(v.min()), max=float(v.max()), mean=float(v.mean()),
                std=float(v.std(unbiased=False)))
