"""``AttentionBackbone``: any registered backbone with attention plugins in its blocks."""
import copy
from typing import Optional, Sequence, Union

from mmattn.registry import MODELS

from ..plugins import add_block_plugins


@MODELS.register_module()
def AttentionBackbone(backbone: Optional[dict] = None, plugins: Union[dict, Sequence[dict],
                                                                      None] = None,
                      backbone_type: Optional[str] = None, **backbone_kwargs):
    """Build a backbone in the current scope (mmseg's HRNet in an mmseg config, mmpose's in an
    mmpose config...) and insert ``plugins`` into its residual blocks.

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

    See :func:`mmattn.models.plugins.add_block_plugins` for the plugin keys and positions.
    """
    if backbone is not None and (backbone_type is not None or backbone_kwargs):
        raise ValueError('AttentionBackbone: give either backbone=dict(type=...) or '
                         'backbone_type=... with the backbone keys, not both (got backbone and '
                         f'{["backbone_type"] * (backbone_type is not None) + list(backbone_kwargs)})')
    if backbone is None:
        if backbone_type is None:
            raise ValueError("AttentionBackbone needs backbone=dict(type=...) or backbone_type")
        backbone = dict(type=backbone_type, **backbone_kwargs)
    if not isinstance(backbone, dict) or 'type' not in backbone:
        raise TypeError(f'AttentionBackbone needs backbone=dict(type=..., ...), got {backbone!r}')
    model = MODELS.build(copy.deepcopy(dict(backbone)))
    if plugins:
        add_block_plugins(model, plugins)  # records them in model.attention_plugins
    return model
