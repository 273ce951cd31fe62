"""Variants of an ablation: the baseline (the base config itself) and one config per attention
placement, each written as a small readable config file whose ``_base_`` is the base config.

A variant is a name and a list of ``AttentionBackbone`` plugin dicts (``None`` for the
baseline). They come from short names (``--attention psa_p se cbam`` or ``all``) with one
placement for all (``--preset``, or ``--position`` with ``--stages`` / ``--block-types``), or
from a variants file that names each variant with its own plugin dicts (``.py``, ``.yaml`` /
``.yml`` or ``.json``)::

    # variants.py
    variants = dict(
        psa_p=dict(preset='released', cfg=dict(type='PolarizedSelfAttention', mode='parallel')),
        cbam_late=dict(position='after_conv2', stages=(3, 4), cfg=dict(type='CBAM')),
        se_and_gc=[dict(cfg=dict(type='se')), dict(cfg=dict(type='gc'), position='before_add')])
"""
import inspect
import json
import keyword
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

__all__ = [
    'BASELINE', 'PRESETS', 'Variant', 'VariantError', 'attention_variants', 'load_variants_file',
    'plugin_key', 'backbone_override', 'variant_config_text', 'format_value'
]

BASELINE = 'baseline'
PRESETS = ('paper', 'released')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')


class VariantError(ValueError):
    """A variant that cannot be written (bad name, plugin, or a base config without a
    backbone): raised before any run starts."""


@dataclass
class Variant:
    """One row of the comparison: ``plugins`` is None for the baseline."""
    name: str
    plugins: Optional[List[dict]] = None
    description: str = ''
    notes: List[str] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.plugins is None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise VariantError(f'variant name {name!r}: use letters, digits and _ . + - (it names a '
                           f'folder and a config file)')
    if name == BASELINE:
        raise VariantError(f"'{BASELINE}' is the base config itself; give the variant another "
                           f'name')
    return name


def attention_variants(names: Sequence[str], preset: Optional[str] = None,
                       position: Optional[str] = None, stages: Optional[Sequence[int]] = None,
                       block_types: Optional[Sequence[str]] = None,
                       branches: Optional[Sequence[int]] = None) -> List[Variant]:
    """One variant per attention short name (or class name); ``['all']`` is every module of
    :func:`mmattn.list_attention`. The placement is ``preset`` or ``position`` + ``stages`` +
    ``block_types`` + ``branches``; without either, the PSA paper's placement (``preset='paper'``:
    every residual block, after its first 3x3 convolution), which exists in every backbone
    ``AttentionBackbone`` supports."""
    from mmattn.models.layers.factory import list_attention, resolve_attention
    names = list(names)
    if 'all' in names:
        if len(names) > 1:
            raise VariantError("--attention all stands alone (it means every module)")
        names = list_attention()
    if preset is not None and preset not in PRESETS:
        raise VariantError(f'preset must be one of {PRESETS}, got {preset!r}')
    if preset is not None and position is not None:
        raise VariantError('give a preset or a position, not both (a preset is a position with '
                           'its stages)')
    if preset is None and position is None:
        preset = 'paper'
    placement = {}
    if preset is not None:
        placement['preset'] = preset
    else:
        placement['position'] = position
    for key, value in (('stages', stages), ('block_types', block_types),
                       ('branches', branches)):
        if value is not None:
            placement[key] = tuple(value)
    variants, seen = [], set()
    for name in names:
        try:
            cls_name, implied = resolve_attention(name)
        except KeyError as error:
            raise VariantError(error.args[0]) from None
        key = name.lower() if name.lower() in list_attention() else name
        if key in seen:
            raise VariantError(f'attention {name!r} is listed twice')
        seen.add(key)
        plugin = dict(placement, cfg=dict(type=cls_name, **implied))
        where = ', '.join(f'{k}={v}' for k, v in placement.items())
        variants.append(Variant(_check_name(key), [plugin], f'{cls_name} ({where})'))
    return variants


def _plugins_of(name: str, value) -> List[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(p, dict) for p in value):
        raise VariantError(f'variant {name!r}: give a plugin dict or a non-empty list of them '
                           f"(keys cfg, position, stages, block_types, branches, name, preset), "
                           f'got {value!r}')
    for plugin in value:
        if 'cfg' not in plugin or not isinstance(plugin['cfg'], dict) or \
                'type' not in plugin['cfg']:
            raise VariantError(f"variant {name!r}: every plugin needs cfg=dict(type=...), got "
                               f'{plugin!r}')
    return [_plain(p) for p in value]


def _plain(obj):
    """Config values (ConfigDict, tuples from YAML lists) as plain dicts/lists/tuples."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def load_variants_file(path: str) -> List[Variant]:
    """Named variants from a ``.py`` file (a ``variants`` dict), a ``.yaml``/``.yml`` or a
    ``.json`` file (a mapping ``name: plugin dict or list of plugin dicts``, optionally under a
    top-level ``variants`` key). The order of the file is the order of the table."""
    if not osp.isfile(path):
        raise VariantError(f'variants file {path} does not exist')
    ext = osp.splitext(path)[1].lower()
    if ext == '.py':
        from mmengine.config import Config
        data = Config.fromfile(path).to_dict()
    elif ext in ('.yaml', '.yml'):
        import yaml
        with open(path) as f:
            data = yaml.safe_load(f)
    elif ext == '.json':
        with open(path) as f:
            data = json.load(f)
    else:
        raise VariantError(f'variants file {path}: use .py, .yaml, .yml or .json')
    if isinstance(data, dict) and 'variants' in data:
        data = data['variants']
    if not isinstance(data, dict) or not data:
        raise VariantError(f'variants file {path}: expected a mapping of variant names to plugin '
                           f"dicts (a 'variants' dict in a .py file), got {type(data).__name__}")
    return [
        Variant(_check_name(str(name)), _plugins_of(str(name), value), f'from {osp.basename(path)}')
        for name, value in data.items()
    ]


# ------------------------------------------------------------------------------------------
# writing a variant's config
# ------------------------------------------------------------------------------------------
def plugin_key() -> str:
    """The ``AttentionBackbone`` argument that takes the attention plugins, read from its
    signature (so a renamed argument, e.g. one that leaves ``plugins`` to the wrapped backbone,
    is followed without a change here)."""
    from mmattn.models.backbones.attention_backbone import AttentionBackbone
    fn = getattr(AttentionBackbone, '__init__', AttentionBackbone) if inspect.isclass(
        AttentionBackbone) else AttentionBackbone
    params = [
        p.name for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != 'self'
    ]
    attention = [n for n in params if 'plugin' in n and ('attn' in n or 'attention' in n)]
    if len(attention) == 1:
        return attention[0]
    if 'plugins' in params:
        return 'plugins'
    raise VariantError(f'cannot tell which AttentionBackbone argument takes the plugins '
                       f'(arguments: {params})')


def backbone_override(base_backbone: dict, plugins: List[dict]) -> dict:
    """The ``model.backbone`` dict a variant config merges into the base config's backbone."""
    if not isinstance(base_backbone, dict) or 'type' not in base_backbone:
        raise VariantError('the base config has no model.backbone with a type; the attention '
                           'plugins go into its residual blocks')
    key = plugin_key()
    if base_backbone['type'] == 'AttentionBackbone':
        # the base already wraps its backbone: the variant's plugins replace the base's list,
        # under the key the base uses for them ('plugins' is the attention list unless the
        # base also gives the attention key, which then leaves 'plugins' to the backbone)
        if key not in base_backbone and 'plugins' in base_backbone:
            return {'plugins': plugins}
        return {key: plugins}
    if key in base_backbone:
        raise VariantError(f"the base backbone {base_backbone['type']} sets its own {key!r}, "
                           f'which is also the argument AttentionBackbone takes the attention '
                           f'plugins in; write the variants by hand with the nested spelling '
                           f'(backbone=dict(type=..., ...))')
    return dict(type='AttentionBackbone', backbone_type=base_backbone['type'], **{key: plugins})


def format_value(value, indent: int = 0) -> str:
    """``value`` as Python config source: ``dict(key=...)`` for dicts with identifier keys,
    one item per line when the one-line form is long."""
    pad = ' ' * (indent + 4)
    if isinstance(value, dict):
        ident = all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)
                    for k in value)
        items = [(f'{k}=' if ident else f'{k!r}: ') + format_value(v, indent + 4)
                 for k, v in value.items()]
        head, tail = ('dict(', ')') if ident else ('{', '}')
    elif isinstance(value, (list, tuple)):
        items = [format_value(v, indent + 4) for v in value]
        head, tail = ('[', ']') if isinstance(value, list) else ('(', ',)' if len(value) == 1
                                                                  else ')')
    else:
        return repr(value)
    one_line = head + ', '.join(items) + tail
    if len(one_line) + indent <= 80 and '\n' not in one_line:
        return one_line
    if tail == ',)':
        tail = ')'
    return head + '\n' + ''.join(f'{pad}{item},\n' for item in items) + ' ' * indent + tail


def variant_config_text(variant: Variant, base_config: str, base_backbone: dict,
                        base_imports: Sequence[str] = (), resumable: bool = False) -> str:
    """Source of the variant's config file: the base config as ``_base_`` plus the plugins
    (and ``mmattn`` added to the base's ``custom_imports``, whose list a child config
    replaces rather than extends). ``resumable`` adds ``runner_type = 'ResumableRunner'``
    (for a base that names no runner), so that every run of the comparison writes its
    checkpoints atomically and resumes exactly."""
    base = osp.abspath(base_config)
    lines = [f'# {variant.name}: {base_config} + {variant.description or "attention plugins"}',
             '# Written by tools/analysis/compare_attention.py; train it alone with',
             '#   python tools/train.py <this file> --cfg-options randomness.seed=<seed>',
             f'_base_ = {base!r}']
    if variant.is_baseline:
        lines[0] = f'# baseline: {base_config} itself'
    else:
        imports = list(dict.fromkeys(list(base_imports) + ['mmattn']))
        lines.append(f'custom_imports = dict(imports={imports!r}, allow_failed_imports=False)')
    if resumable:
        lines += ['# atomic checkpoints, resume from the last complete one, random states saved '
                  '(mmattn.engine)', "runner_type = 'ResumableRunner'"]
    if not variant.is_baseline:
        override = backbone_override(base_backbone, variant.plugins)
        lines.append(f'model = dict(backbone={format_value(override, 0)})')
    return '\n'.join(lines) + '\n'
