"""Attention modules, one file per family (timm ``layers/`` style), all registered in MODELS."""
from .acmix import *  # noqa: F401,F403
from .cbam import *  # noqa: F401,F403
from .coord_attn import *  # noqa: F401,F403
from .danet import *  # noqa: F401,F403
from .deform_conv_entry import DeformableConvV2Entry  # noqa: F401
from .deformable_attn import *  # noqa: F401,F403
from .eca import *  # noqa: F401,F403
from .factory import (attention_cfg, attention_class_names, build_attention,  # noqa: F401
                      list_attention, resolve_attention, resolve_attention_cfg)
from .global_context import *  # noqa: F401,F403
from .helpers import act_cfg_from_name, build_act, make_divisible  # noqa: F401
from .non_local import *  # noqa: F401,F403
from .polarized_self_attention import *  # noqa: F401,F403
from .spd_conv import *  # noqa: F401,F403
from .squeeze_excite import *  # noqa: F401,F403
from .triplet import *  # noqa: F401,F403


def __getattr__(name):
    # DeformableConvV2 subclasses an mmcv.ops class, whose import loads mmcv's compiled ops;
    # it is imported on first use so ``import mmattn`` works with mmcv-lite too.
    if name == 'DeformableConvV2':
        from .deform_conv import DeformableConvV2
        return DeformableConvV2
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
