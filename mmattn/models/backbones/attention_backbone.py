"""``AttentionBackbone``: any registered backbone with attention plugins in its blocks."""
import copy
import inspect
from typing import Optional, Sequence, Union

from mmattn.registry import MODELS

from ..plugins import add_block_plugins

Plugins = Union[dict, Sequence[dict], None]


def _takes_plugins(backbone_type) -> bool:
    """Whether the backbone class (looked up in the current scope, as ``MODELS.build`` does)
    has a ``plugins`` argument of its own (mmcv-style block plugins of mmdet/mmseg ResNet)."""
    if isinstance(backbone_type, str):
        with MODELS.switch_scope_and_registry(None) as registry:
            backbone_type = registry.get(backbone_type)
    if backbone_type is None:
        return False  # MODELS.build reports the unknown type
    try:
        return 'plugins' in inspect.signature(backbone_type).parameters
    except (TypeError, ValueError):
        return False


@MODELS.register_module()
def AttentionBackbone(backbone: Optional[dict] = None, plugins: Plugins = None,
                      backbone_type: Optional[str] = None, attention_plugins: Plugins = None,
                      **backbone_kwargs):
    """Build a backbone in the current scope (mmseg's HRNet in an mmseg config, mmpose's in an
    mmpose config...) and insert mmattn's attention plugins into its residual blocks.

    A builder function rather than a wrapper class: it returns the backbone itself, so the
    model's state-dict keys stay ``backbone.<original keys>`` and checkpoints of the plain model
    load unchanged; only the attention parameters are new.

    Two equivalent spellings. Nested, for a config written from scratch::

        backbone=dict(type='AttentionBackbone',
                      backbone=dict(type='HRNet', extra=...),
                      plugins=[dict(preset='released', cfg=dict(type='PolarizedSelfAttention'))])

    Flat, for a config that inherits the backbone from a ``_base_`` (only two keys change, and
    keys the base or the segmentor add, such as ``pretrained``, pass through to the backbone)::

        model = dict(backbone=dict(type='AttentionBackbone', backbone_type='HRNet',
                                   plugins=[...]))

    ``attention_plugins`` names mmattn's plugins in either spelling. ``plugins`` is a shorter
    name for them wherever it cannot mean the backbone's own argument: in the nested spelling,
    and in the flat one for a backbone without a ``plugins`` argument (HRNet). A backbone that
    has one (mmdet's and mmseg's ResNet, whose ``plugins=`` takes mmcv-style block plugins such
    as mmdet's GCNet ContextBlocks) keeps it in the flat spelling, and mmattn's then go in
    ``attention_plugins``; ``plugins`` alone there is refused rather than guessed::

        model = dict(backbone=dict(type='AttentionBackbone', backbone_type='ResNet',
                                   plugins=[...ContextBlock, ResNet's own...],
                                   attention_plugins=[dict(cfg=dict(type='CBAM'), ...)]))

    See :func:`mmattn.models.plugins.add_block_plugins` for the plugin keys and positions.
    """
    if backbone is not None and (backbone_type is not None or backbone_kwargs):
        extra = ['backbone_type'] * (backbone_type is not None) + list(backbone_kwargs)
        raise ValueError('AttentionBackbone: give either backbone=dict(type=...) or '
                         f'backbone_type=... with the backbone keys, not both (got backbone and '
                         f'{extra})')
    if backbone is None:
        if backbone_type is None:
            raise ValueError("AttentionBackbone needs backbone=dict(type=...) or backbone_type")
        if plugins is not None and _takes_plugins(backbone_type):
            if attention_plugins is None:
                raise ValueError(
                    f"AttentionBackbone: {backbone_type} has a plugins= argument of its own "
                    f"(mmcv-style block plugins), so in the flat spelling mmattn's plugins go in "
                    f"attention_plugins=[...] and plugins= stays {backbone_type}'s; got plugins= "
                    f"and no attention_plugins. Rename it to attention_plugins (or use the nested "
                    f"spelling backbone=dict(type='{backbone_type}', ...), plugins=[...])")
            backbone_kwargs['plugins'] = plugins
            plugins = None
        backbone = dict(type=backbone_type, **backbone_kwargs)
    if plugins is not None and attention_plugins is not None:
        raise ValueError('AttentionBackbone: mmattn\'s plugins given twice, as plugins= and '
                         'attention_plugins=; give one of them')
    if not isinstance(backbone, dict) or 'type' not in backbone:
        raise TypeError(f'AttentionBackbone needs backbone=dict(type=..., ...), got {backbone!r}')
    model = MODELS.build(copy.deepcopy(dict(backbone)))
    attention_plugins = plugins if attention_plugins is None else attention_plugins
    if attention_plugins:
        add_block_plugins(model, attention_plugins)  # records them in model.attention_plugins
    return model
