"""mmattn: attention modules for dense prediction as OpenMMLab plugins.

``import mmattn`` (or ``custom_imports=dict(imports=['mmattn'])`` in a config) registers every
attention module, ``AttentionBackbone``, ``AttentionNeck`` and the engine components of
:mod:`mmattn.engine` into the OpenMMLab registries. It imports torch, mmengine and mmcv's Python
parts only; the parts tied to mmsegmentation (the hierarchical multi-scale segmentor and its
heads) are imported by ``custom_imports=dict(imports=['mmattn.models.segmentors'])``.
"""
import mmcv
import mmengine
from mmengine.utils import digit_version

from .version import __version__

# Ranges as mmsegmentation and mmdet declare them (mmcv >= 2.2 is refused by both).
MMCV_MIN, MMCV_MAX = '2.0.0rc4', '2.2.0'
MMENGINE_MIN, MMENGINE_MAX = '0.10.0', '1.0.0'


def _check_version(package, minimum: str, maximum: str) -> None:
    installed = digit_version(package.__version__)
    assert digit_version(minimum) <= installed < digit_version(maximum), (
        f'{package.__name__}=={package.__version__} is installed but mmattn {__version__} '
        f'needs {package.__name__}>={minimum}, <{maximum}')


_check_version(mmcv, MMCV_MIN, MMCV_MAX)
_check_version(mmengine, MMENGINE_MIN, MMENGINE_MAX)

from . import compat  # noqa: E402

compat.apply()  # only where torch >= 2.6 meets an mmengine that calls plain torch.load

from .utils.paths import register_config_package  # noqa: E402

register_config_package()  # `_base_ = 'mmattn::psa/...'` in configs read after this import

from . import engine  # noqa: E402,F401  (registers ResumableRunner and friends)
from .models import build_attention, list_attention  # noqa: E402,F401
from .models.layers import attention_cfg  # noqa: E402,F401

__all__ = ['build_attention', 'list_attention', 'attention_cfg', '__version__']
