"""The registry entry of ``DeformableConvV2``, which imports mmcv's compiled ops only when built.

``DeformableConvV2`` subclasses ``mmcv.ops.ModulatedDeformConv2dPack``; importing ``mmcv.ops``
loads ``mmcv._ext``, which mmcv-lite does not have and which costs time on every
``import mmattn``. The registry therefore holds this small class, whose construction imports the
real module and returns an instance of the real class.
"""
from mmattn.registry import MODELS

__all__ = ['DeformableConvV2Entry']


@MODELS.register_module(name='DeformableConvV2')
class DeformableConvV2Entry:
    """Builds :class:`mmattn.models.layers.deform_conv.DeformableConvV2` (same arguments).

    ``DeformableConvV2Entry(...)`` returns the real module (``__new__`` returns an instance of
    another class, so this class's ``__init__`` never runs). mmcv's ``plugins=`` reads
    ``_abbr_`` from the registered class, hence the copy here.
    """
    _abbr_ = 'dcnv2'

    def __new__(cls, *args, **kwargs):
        try:
            from .deform_conv import DeformableConvV2
        except ImportError as error:
            raise ImportError(
                f'DeformableConvV2 needs mmcv built with its compiled ops (mmcv._ext), which the '
                f'installed mmcv lacks ({error}); install the full mmcv package, not mmcv-lite'
            ) from error
        return DeformableConvV2(*args, **kwargs)
