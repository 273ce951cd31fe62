"""Insert attention modules into the residual blocks of an existing backbone.

The backbone is left as its own code builds it: the attention module is added as a new child of
the block (so the block's original state-dict keys are unchanged and pretrained checkpoints load)
and runs at the position the config names, through a hook on the block's own conv/norm layer.
This works for any block that follows the ``BasicBlock`` / ``Bottleneck`` layout (``conv1..3``
and ``norm1..3`` as in mmseg/mmpose/mmdet, or ``bn1..3`` as in mmcv's and torchvision's), so
HRNet and ResNet of all these projects are covered without copying their code.

The hooked layer is looked up by name on every forward of the block (a forward pre-hook on the
block, which no conversion utility replaces), so the attention keeps running when the layer is
replaced: mmengine's ``revert_sync_batchnorm`` (every non-distributed Runner calls it),
``convert_sync_batchnorm`` (a distributed Runner with ``sync_bn``), mmcv's ``fuse_conv_bn``
(the norm becomes ``nn.Identity``). Hooks are bound methods of a module-level class, so
``copy.deepcopy`` and pickling (``torch.save(model)``) carry them over to the copy.

Positions (mmcv's ``plugins=`` vocabulary, plus two aliases):

============================  ==========================================  =====================
position                      BasicBlock                                  Bottleneck
============================  ==========================================  =====================
``after_conv1``               conv1-norm1-relu, before conv2              conv1-norm1-relu
``after_conv2``               conv2-norm2, before the residual add        conv2-norm2-relu
``after_conv3``               (does not exist)                            conv3-norm3, before add
``before_add``                = after_conv2                               = after_conv3
``after_first_3x3`` (paper)   = after_conv1                               = after_conv2
============================  ==========================================  =====================

A module inserted here must keep its input's shape (the block adds it to the identity); one
that changes channels or spatial size (e.g. ``SPDConv``) is refused when the backbone is built.

BatchNorms inside the attention modules train with the model even when the backbone keeps its
own norms in eval mode (``norm_eval=True``, mmdet's ResNet default): ``norm_eval`` protects the
statistics of pretrained norms, and the attention modules' norms have none; frozen at their
initial statistics (mean 0, variance 1) they would never normalise. An attention module that is
itself in eval mode (e.g. in a stage frozen by ``frozen_stages``) keeps its norms in eval mode.
"""
import copy
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmattn.registry import MODELS

from ..layers.factory import resolve_attention_cfg

# position -> (hook kind, layer it hooks, conv whose channels the module sees)
_POSITIONS: Dict[str, Dict[str, Tuple[str, str, str, str]]] = {
    'basic': {
        'after_conv1': ('pre', 'conv2', 'conv2', 'in_channels'),
        'after_conv2': ('post', 'norm2', 'conv2', 'out_channels'),
    },
    'bottleneck': {
        'after_conv1': ('pre', 'conv2', 'conv2', 'in_channels'),
        'after_conv2': ('pre', 'conv3', 'conv3', 'in_channels'),
        'after_conv3': ('post', 'norm3', 'conv3', 'out_channels'),
    },
}
_ALIASES = {
    'basic': {'before_add': 'after_conv2', 'after_first_3x3': 'after_conv1'},
    'bottleneck': {'before_add': 'after_conv3', 'after_first_3x3': 'after_conv2'},
}
POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3', 'before_add', 'after_first_3x3')
DEFAULT_BLOCK_TYPES = ('BasicBlock', 'Bottleneck')

# The two placements the PSA paper and its released code use.
PRESETS = {
    # "after the first 3x3 convolution in every residual block" (paper, section 4)
    'paper': dict(position='after_first_3x3', stages=None, block_types=DEFAULT_BLOCK_TYPES),
    # released code: HRNet BasicBlocks of stages 2-4 only, after conv1-bn1-relu (104 for W48);
    # named 'deattn' as in the released checkpoints so their keys map one to one.
    'released': dict(position='after_conv1', stages=(2, 3, 4), block_types=('BasicBlock', ),
                     name='deattn'),
}

_STAGE_RE = re.compile(r'^(?:layer|stage|res_layer|res)(\d+)(?:\.|$)')
_BRANCH_RE = re.compile(r'\.branches\.(\d+)\.')


class _Insertion:
    """One attention module at one position of one block.

    ``attach`` is a forward pre-hook of the block: it looks up the block's current layer at the
    position (``conv2``, ``norm3``, ...) and, when that is not the layer hooked last time (i.e.
    something replaced it), moves the hook there: removed from the old layer (which may be put
    back later), registered on the new one. The hook's handle pickles and deep-copies with the
    model, pointing at the copied layer.
    """

    def __init__(self, attention_name: str, layer_name: str, before: bool):
        self.attention_name = attention_name
        self.layer_name = layer_name
        self.before = before
        self.layer: Optional[nn.Module] = None  # the layer carrying the hook
        self.handle = None
        self.attention: Optional[nn.Module] = None

    def attach(self, block: nn.Module, args=None) -> None:
        self.attention = getattr(block, self.attention_name)
        layer = getattr(block, self.layer_name)
        if layer is self.layer:
            return
        if self.handle is not None:
            self.handle.remove()
        self.layer = layer
        if self.before:
            self.handle = layer.register_forward_pre_hook(self.run_before)
        else:
            self.handle = layer.register_forward_hook(self.run_after)

    def run_before(self, layer: nn.Module, args):
        return (self.attention(args[0]), ) + tuple(args[1:])

    def run_after(self, layer: nn.Module, args, output):
        return self.attention(output)


class _PluggedBackbone:
    """``init_weights`` and ``train`` of a backbone with attention plugins, installed on the
    instance (the backbone's class is the projects' own). Bound methods of this module-level
    class pickle and deep-copy with the backbone."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    def attention_modules(self) -> List[nn.Module]:
        return [self.backbone.get_submodule(p)
                for p in getattr(self.backbone, 'attention_plugins', [])]

    def init_weights(self) -> None:
        """The backbone's own ``init_weights``, then each inserted attention module's.

        A backbone's ``init_cfg`` (e.g. HRNet's Kaiming convs / constant-1 norms) is applied to
        every submodule, attention included, and mmengine's recursion into children stops at
        plain ``nn.Sequential`` stages, so the attention modules' own initialisation
        (zero-initialised residual norms, the papers' conv inits) would be silently lost. When
        the backbone loads a pretrained checkpoint nothing is re-initialised: the checkpoint
        may hold attention weights.
        """
        backbone = self.backbone
        type(backbone).init_weights(backbone)
        if _loads_pretrained(getattr(backbone, 'init_cfg', None)):
            return
        for module in self.attention_modules():
            if hasattr(module, 'init_weights'):
                module.init_weights()

    def train(self, mode: bool = True) -> nn.Module:
        """The backbone's own ``train``, then the norms of every attention module that is in
        training mode back to training mode (``norm_eval`` turned them off)."""
        backbone = self.backbone
        type(backbone).train(backbone, mode)
        for module in self.attention_modules():
            if not module.training:
                continue
            for m in module.modules():
                if isinstance(m, _BatchNorm):
                    m.train(True)
        return backbone


def _layer_attr(block: nn.Module, name: str) -> Optional[str]:
    """The attribute holding layer ``name`` of ``block``: ``norm2`` is a property of the
    mmseg/mmpose/mmdet blocks and a child ``bn2`` in mmcv's and torchvision's."""
    if hasattr(block, name):
        return name
    if name.startswith('norm') and hasattr(block, 'bn' + name[4:]):
        return 'bn' + name[4:]
    return None


def block_kind(block: nn.Module) -> Optional[str]:
    """'bottleneck', 'basic', or None for a module that is not a residual block."""
    names = dict(block.named_children())
    if 'conv3' in names and _layer_attr(block, 'norm3'):
        return 'bottleneck'
    if 'conv1' in names and 'conv2' in names and _layer_attr(block, 'norm2'):
        return 'basic'
    return None


def block_positions(kind: str) -> List[str]:
    """Positions that exist in a block of this kind (aliases included)."""
    return list(_POSITIONS[kind]) + list(_ALIASES[kind])


def _stage_of(path: str) -> Optional[int]:
    match = _STAGE_RE.match(path)
    return int(match.group(1)) if match else None


def _branch_of(path: str) -> Optional[int]:
    match = _BRANCH_RE.search(path + '.')
    return int(match.group(1)) if match else None


def find_blocks(backbone: nn.Module, block_types: Iterable[str] = DEFAULT_BLOCK_TYPES
                ) -> List[Tuple[str, nn.Module, Optional[int], Optional[int]]]:
    """Every residual block of ``backbone`` whose class name is in ``block_types``, as
    ``(path, block, stage, branch)`` (stage 1-based from ``layerN``/``stageN``; branch for
    HRNet's parallel branches, else None)."""
    block_types = tuple(block_types)
    found = []
    for path, module in backbone.named_modules():
        if not path or type(module).__name__ not in block_types or block_kind(module) is None:
            continue
        found.append((path, module, _stage_of(path), _branch_of(path)))
    return found


def _normalise_stages(stages, existing: Sequence[int], backbone_name: str):
    if stages is None:
        return None
    if not isinstance(stages, (list, tuple)):
        raise TypeError(f'plugin stages must be a list of stage numbers or a tuple of bools, '
                        f'got {stages!r}')
    if stages and all(isinstance(s, bool) for s in stages):
        # mmcv style: one flag per stage, index 0 = stage 1
        if len(stages) != len(existing):
            raise ValueError(f'plugin stages {tuple(stages)} has {len(stages)} flags but '
                             f'{backbone_name} has {len(existing)} stages {tuple(existing)}')
        return {existing[i] for i, flag in enumerate(stages) if flag}
    unknown = [s for s in stages if s not in existing]
    if unknown:
        raise ValueError(f'plugin stages {unknown} do not exist in {backbone_name}; its residual '
                         f'stages are {tuple(existing)}')
    return set(stages)


def _resolve_plugin(plugin: dict) -> dict:
    plugin = copy.deepcopy(dict(plugin))
    preset = plugin.pop('preset', None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown plugin preset '{preset}'; available: {list(PRESETS)}")
        plugin = {**PRESETS[preset], **plugin}
    if 'cfg' not in plugin:
        raise ValueError(f"a plugin needs 'cfg' (the attention module's config), got {plugin}")
    plugin['cfg'] = resolve_attention_cfg(plugin['cfg'])  # short names; close-match errors
    unknown = set(plugin) - {'cfg', 'position', 'stages', 'block_types', 'branches', 'name'}
    if unknown:
        raise ValueError(f'unknown plugin keys {sorted(unknown)}; allowed: cfg, position, '
                         f'stages, block_types, branches, name, preset')
    position = plugin.setdefault('position', 'after_first_3x3')
    if position not in POSITIONS:
        raise ValueError(f"unknown plugin position '{position}'; available: {list(POSITIONS)}")
    plugin.setdefault('stages', None)
    plugin.setdefault('block_types', DEFAULT_BLOCK_TYPES)
    plugin.setdefault('branches', None)
    return plugin


def _module_name(cfg: dict, name: Optional[str], index: int) -> str:
    if name:
        return name
    cls = MODELS.get(cfg['type']) if isinstance(cfg.get('type'), str) else cfg.get('type')
    abbr = getattr(cls, '_abbr_', None) or re.sub(r'(?<!^)(?=[A-Z])', '_',
                                                  getattr(cls, '__name__', 'attn')).lower()
    return f'{abbr}{index}' if index else abbr


def add_block_plugins(backbone: nn.Module, plugins: Union[dict, Sequence[dict]]) -> List[str]:
    """Insert the attention modules ``plugins`` describe into ``backbone``'s residual blocks,
    in place, and return the state-dict prefixes of the added modules (also kept in
    ``backbone.attention_plugins``). The backbone's ``init_weights`` is extended so that its own
    ``init_cfg`` does not overwrite the attention modules' initialisation, and its ``train`` so
    that ``norm_eval`` leaves the attention modules' norms training.

    Each plugin is ``dict(cfg=<attention config>, position=..., stages=..., block_types=...,
    branches=..., name=...)`` or ``dict(preset='paper'|'released', cfg=...)``. ``in_channels`` of
    each module is filled in from the block; a ``cfg`` that states it must agree.
    """
    if isinstance(plugins, dict):
        plugins = [plugins]
    backbone_name = type(backbone).__name__
    added = []
    checked = set()  # (config, channels) already probed for shape changes
    for index, raw in enumerate(plugins):
        plugin = _resolve_plugin(raw)
        blocks = find_blocks(backbone, plugin['block_types'])
        all_blocks = find_blocks(backbone, _all_block_names(backbone))
        if not blocks:
            present = sorted({type(m).__name__ for _, m, _, _ in all_blocks})
            raise ValueError(f'{backbone_name} has no residual blocks of types '
                             f'{tuple(plugin["block_types"])}; it has {tuple(present)}')
        existing_stages = sorted({s for _, _, s, _ in all_blocks if s is not None})
        stages = _normalise_stages(plugin['stages'], existing_stages, backbone_name)
        name = _module_name(plugin['cfg'], plugin.get('name'), index)
        count = 0
        for path, block, stage, branch in blocks:
            if stages is not None and stage not in stages:
                continue
            if plugin['branches'] is not None and branch not in plugin['branches']:
                continue
            _attach(block, path, plugin, name, checked)
            added.append(f'{path}.{name}')
            count += 1
        if count == 0:
            raise ValueError(f'plugin {plugin["cfg"].get("type")} matched no block of '
                             f'{backbone_name} (stages={plugin["stages"]}, block_types='
                             f'{tuple(plugin["block_types"])}, branches={plugin["branches"]})')
    backbone.attention_plugins = list(getattr(backbone, 'attention_plugins', [])) + added
    if not isinstance(getattr(backbone.train, '__self__', None), _PluggedBackbone):
        helper = _PluggedBackbone(backbone)
        if hasattr(backbone, 'init_weights'):
            backbone.init_weights = helper.init_weights
        backbone.train = helper.train
    return added


def _loads_pretrained(init_cfg) -> bool:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)


def _all_block_names(backbone: nn.Module) -> set:
    """Class names of every residual block in ``backbone`` (for error messages)."""
    return {type(m).__name__ for m in backbone.modules() if block_kind(m) is not None}


def _check_keeps_shape(attention: nn.Module, channels: int, cfg: dict, where: str) -> None:
    """Refuse a module whose output shape differs from its input's, from one forward on a small
    input in eval mode (no running statistics change)."""
    was_training = attention.training
    attention.eval()
    x = torch.randn(1, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = attention(x)
    except Exception:  # noqa: BLE001 - e.g. a module that needs larger maps: nothing is
        return  # known about its shape here, and its own forward reports what it cannot run
    finally:
        attention.train(was_training)
    shape = tuple(getattr(out, 'shape', ()))
    if shape != tuple(x.shape):
        raise ValueError(f"plugin {cfg.get('type')} at {where} changes the shape of its input "
                         f'({tuple(x.shape)} -> {shape or type(out).__name__}); a block plugin '
                         f'must keep (C, H, W), the block adds its output to the identity. Use '
                         f'such a module in a neck or in place of a layer instead')


def _attach(block: nn.Module, path: str, plugin: dict, name: str, checked: set) -> None:
    kind = block_kind(block)
    position = _ALIASES[kind].get(plugin['position'], plugin['position'])
    if position not in _POSITIONS[kind]:
        raise ValueError(f"position '{plugin['position']}' does not exist in "
                         f'{type(block).__name__} ({path}); it has {block_positions(kind)}')
    hook_kind, layer_name, conv_name, channel_attr = _POSITIONS[kind][position]
    channels = getattr(getattr(block, conv_name), channel_attr)
    cfg = copy.deepcopy(dict(plugin['cfg']))
    stated = cfg.pop('in_channels', None)
    if stated is not None and stated != channels:
        raise ValueError(f"plugin {cfg.get('type')} states in_channels={stated} but "
                         f"{type(block).__name__} {path} has {channels} channels at "
                         f"'{plugin['position']}'")
    if hasattr(block, name):
        raise ValueError(f"{type(block).__name__} {path} already has a child named '{name}'; "
                         f"give the plugin another 'name'")
    attention = MODELS.build(dict(cfg, in_channels=channels))
    key = (repr(sorted(cfg.items(), key=lambda kv: kv[0])), channels)
    if key not in checked:
        _check_keeps_shape(attention, channels, cfg,
                           f"'{plugin['position']}' of {type(block).__name__} {path}")
        checked.add(key)
    block.add_module(name, attention)
    insertion = _Insertion(name, _layer_attr(block, layer_name), before=hook_kind == 'pre')
    block.register_forward_pre_hook(insertion.attach)
    insertion.attach(block)
