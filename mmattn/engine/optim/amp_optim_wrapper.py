"""``PortableAmpOptimWrapper``: mmengine's AmpOptimWrapper that also trains on a CPU."""
import contextlib
import sys

import torch
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from mmattn.utils.torch_compat import disabled_grad_scaler


def _has_accelerator() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@contextlib.contextmanager
def _mmpose_accepts_bfloat16():
    """While active, mmpose's ``to_numpy`` (which every heatmap/regression head calls for the
    training accuracy) casts bfloat16 tensors to float32 first: numpy has no bfloat16, so CPU
    mixed precision would otherwise fail in the first iteration. The names are restored on exit;
    nothing changes when mmpose is not imported."""
    tensor_utils = sys.modules.get('mmpose.utils.tensor_utils')
    if tensor_utils is None:
        yield
        return
    original = tensor_utils.to_numpy

    def to_numpy(x, return_device=False, unzip=False):
        if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16:
            x = x.float()  # sequences recurse through the module-level name, i.e. this one
        return original(x, return_device=return_device, unzip=unzip)

    # heads import the function by name, so every module holding it is rebound
    holders = [m for name, m in list(sys.modules.items())
               if (name == 'mmpose' or name.startswith('mmpose.'))
               and getattr(m, 'to_numpy', None) is original]
    for module in holders:
        module.to_numpy = to_numpy
    try:
        yield
    finally:
        for module in holders:
            module.to_numpy = original


@OPTIM_WRAPPERS.register_module()
class PortableAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` (same arguments) that also runs on a machine without accelerator.

    With a GPU (or NPU, MLU, MUSA) it is mmengine's wrapper unchanged. On a CPU-only machine,
    where mmengine 0.10's wrapper asserts a GPU, autocast runs in bfloat16 (the only dtype
    mmengine's ``autocast`` accepts on CPU); bfloat16 has float32's exponent range, so there is
    no loss scaling (the scaler is a disabled pass-through with an empty state dict). mmpose
    heads' training accuracy accepts the bfloat16 predictions while the wrapper's
    ``optim_context`` is active.

    Select it with ``optim_wrapper = dict(type='PortableAmpOptimWrapper', optimizer=...)``;
    ``tools/train.py --amp`` does so on a CPU-only machine.
    """

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False, **kwargs):
        self._on_cpu = not _has_accelerator()
        if not self._on_cpu:
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if isinstance(dtype, str):
            if dtype not in self.valid_dtypes:
                raise ValueError(f'PortableAmpOptimWrapper: dtype must be one of '
                                 f'{self.valid_dtypes}, got {dtype!r}')
            dtype = getattr(torch, dtype)
        if dtype is None:
            dtype = torch.bfloat16
        if dtype != torch.bfloat16:
            raise ValueError(f'PortableAmpOptimWrapper: on a machine without GPU mixed '
                             f'precision runs in bfloat16 only (mmengine autocast on CPU), got '
                             f"dtype={dtype}; set optim_wrapper.dtype='bfloat16'")
        if not (loss_scale == 'dynamic' or isinstance(loss_scale, (float, dict))):
            raise TypeError(f"PortableAmpOptimWrapper: loss_scale must be a float, a dict or "
                            f"'dynamic', got {loss_scale!r}")
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = disabled_grad_scaler('cpu')
        self.cast_dtype = dtype

    @contextlib.contextmanager
    def optim_context(self, model):
        with super().optim_context(model):
            if self._on_cpu:
                with _mmpose_accepts_bfloat16():
                    yield
            else:
                yield
