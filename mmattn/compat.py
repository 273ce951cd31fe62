"""Fixes applied on ``import mmattn`` so the pinned stack works on torch 2.13.

Each fix is small, idempotent, and only changes behaviour that is broken on this stack:

1. Local checkpoints load with ``weights_only=False`` (torch >= 2.6 refuses mmengine's own
   checkpoints otherwise), and a missing, truncated or corrupt file is one
   :class:`~mmattn.utils.checkpoint.CheckpointError` naming the file, not a pickle traceback.
2. Checkpoints are written atomically (temporary file, fsync, ``os.replace``); the
   ``last_checkpoint`` pointer is written atomically after the checkpoint is complete, and
   checkpoints beyond ``max_keep_ckpts`` are deleted only after that. A run killed at any
   moment leaves only complete checkpoints under their final names.
3. Auto-resume picks the last *complete* checkpoint, also when ``last_checkpoint`` is missing
   or names a damaged file.
4. Every Runner gets :class:`~mmattn.engine.ResumableRandomStateHook`, so a resumed run draws
   the same random numbers as an uninterrupted one.
5. ``AmpOptimWrapper`` works on CPU-only machines (bfloat16 autocast, no loss scaling); mmengine
   0.10.7 asserts a GPU.
6. mmpose's ``to_numpy`` (used by every heatmap/regression head for the training accuracy)
   accepts bfloat16 tensors, which numpy has no type for; without this ``--amp`` pose training
   on CPU fails in the first iteration.
"""
import os.path as osp

import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.runner.checkpoint import CheckpointLoader

from mmattn.utils.torch_compat import disabled_grad_scaler
from mmattn.utils.checkpoint import (CheckpointNotFoundError, find_last_complete_checkpoint,
                                     load_checkpoint_file, save_checkpoint_atomic,
                                     write_text_atomic)

_applied = False
_originals = {}


# ----------------------------------------------------------------------------- 1. loading
def _load_local_checkpoint(filename, map_location=None):
    """mmengine 0.10.7's local loader with ``weights_only=False`` and clear errors.

    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses the
    non-tensor metadata mmengine itself writes (message hub state, numpy scalars, config text),
    so ``Runner.resume`` and ``load_checkpoint`` of a training checkpoint fail. A local path the
    user names is trusted as it was before torch 2.6.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location=map_location, weights_only=False)


# ----------------------------------------------------------------------------- 2. saving
def _is_local(filename, file_client_args, backend_args) -> bool:
    if file_client_args is not None or not isinstance(filename, str):
        return False
    if filename.startswith('pavi://'):
        return False
    try:
        return isinstance(get_file_backend(filename, backend_args=backend_args), LocalBackend)
    except Exception:  # noqa: BLE001 - unknown scheme: leave it to mmengine
        return False


def _save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint``; local files are written atomically."""
    if _is_local(filename, file_client_args, backend_args):
        save_checkpoint_atomic(checkpoint, filename)
    else:
        _originals['save_checkpoint'](checkpoint, filename, file_client_args=file_client_args,
                                      backend_args=backend_args)


def _save_checkpoint_with_step(self, runner, step, meta):
    """``CheckpointHook._save_checkpoint_with_step`` in a crash-safe order.

    mmengine 0.10.7 deletes the oldest kept checkpoint first, then writes the new one, then
    rewrites ``last_checkpoint`` in place: a kill in between can leave no complete checkpoint
    (``max_keep_ckpts=1``) or an empty pointer. Here: write the checkpoint (atomically), then the
    pointer (atomically), then delete what is no longer kept.
    """
    from mmengine.dist import is_main_process
    outdated = []
    if self.max_keep_ckpts > 0:
        # the step may be saved twice in one epoch (regular and best checkpoint)
        if not (len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    ckpt_filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    runner.save_checkpoint(
        self.out_dir,
        ckpt_filename,
        self.file_client_args,
        save_optimizer=self.save_optimizer,
        save_param_scheduler=self.save_param_scheduler,
        meta=meta,
        by_epoch=self.by_epoch,
        backend_args=self.backend_args,
        **self.args)
    if not is_main_process():
        return
    write_text_atomic(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'))
    for old_step in outdated:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed checkpoints are directories
            self.file_backend.rmtree(path)


# ----------------------------------------------------------------------------- 4. RNG hook
def _register_hooks(self, default_hooks=None, custom_hooks=None):
    _originals['register_hooks'](self, default_hooks, custom_hooks)
    from mmattn.engine import ResumableRandomStateHook
    if not any(isinstance(h, ResumableRandomStateHook) for h in self._hooks):
        self.register_hook(ResumableRandomStateHook())


# ----------------------------------------------------------------------------- 5. AMP on CPU
def _amp_init(self, loss_scale='dynamic', dtype=None, use_fsdp=False, **kwargs):
    """``AmpOptimWrapper.__init__`` that also works without an accelerator.

    On CPU, autocast runs in bfloat16 (mmengine's ``autocast`` accepts nothing else there), whose
    exponent range is float32's, so no loss scaling is needed: the scaler is a disabled
    ``torch.amp.GradScaler`` (its ``scale``/``step`` pass through, its state dict is empty).
    """
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    if (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        return _originals['amp_init'](self, loss_scale=loss_scale, dtype=dtype,
                                      use_fsdp=use_fsdp, **kwargs)
    from mmengine.optim import OptimWrapper
    if isinstance(dtype, str):
        if dtype not in self.valid_dtypes:
            raise ValueError(f'AmpOptimWrapper: dtype must be one of {self.valid_dtypes}, '
                             f'got {dtype!r}')
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16
    if dtype != torch.bfloat16:
        raise ValueError(f'AmpOptimWrapper: on a machine without GPU mixed precision runs in '
                         f'bfloat16 only (mmengine autocast on CPU), got dtype={dtype}; set '
                         f"optim_wrapper.dtype='bfloat16'")
    if not (loss_scale == 'dynamic' or isinstance(loss_scale, (float, dict))):
        raise TypeError('loss_scale must be of type float, dict, or "dynamic", but got '
                        f'{loss_scale}')
    OptimWrapper.__init__(self, **kwargs)
    self._scale_update_param = None
    self.loss_scaler = disabled_grad_scaler('cpu')
    self.cast_dtype = dtype


# ----------------------------------------------------------------------------- 6. mmpose bf16
def _patch_mmpose_to_numpy():
    try:
        import mmpose.utils.tensor_utils as tensor_utils
    except ImportError:  # mmpose is optional
        return
    import sys
    original = tensor_utils.to_numpy
    if getattr(original, '_mmattn_bf16', False):
        return

    def to_numpy(x, return_device=False, unzip=False):
        if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16:
            x = x.float()  # numpy has no bfloat16; sequences recurse through this function
        return original(x, return_device=return_device, unzip=unzip)

    to_numpy.__doc__ = original.__doc__
    to_numpy._mmattn_bf16 = True
    # modules imported later take the name from tensor_utils; those imported already are
    # rebound here
    for name, module in list(sys.modules.items()):
        if (name == 'mmpose' or name.startswith('mmpose.')) and getattr(
                module, 'to_numpy', None) is original:
            module.to_numpy = to_numpy


def apply():
    """Apply every compatibility fix once."""
    global _applied
    if _applied:
        return
    import mmengine.runner as runner_pkg
    import mmengine.runner.checkpoint as checkpoint_mod
    import mmengine.runner.runner as runner_mod
    from mmengine.hooks import CheckpointHook
    from mmengine.optim import AmpOptimWrapper

    # 1. The local scheme is registered under the empty prefix; re-register it with force.
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local_checkpoint)

    # 2. atomic writes: every module that imported save_checkpoint by name
    _originals['save_checkpoint'] = checkpoint_mod.save_checkpoint
    for module in (checkpoint_mod, runner_mod, runner_pkg):
        module.save_checkpoint = _save_checkpoint
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step

    # 3. auto-resume from the last complete checkpoint
    for module in (checkpoint_mod, runner_mod, runner_pkg):
        module.find_latest_checkpoint = find_last_complete_checkpoint
    try:
        import mmengine.runner._flexible_runner as flexible_mod
        flexible_mod.find_latest_checkpoint = find_last_complete_checkpoint
    except ImportError:  # pragma: no cover
        pass

    # 4. random states in checkpoints
    _originals['register_hooks'] = runner_mod.Runner.register_hooks
    runner_mod.Runner.register_hooks = _register_hooks

    # 5. AMP on CPU
    _originals['amp_init'] = AmpOptimWrapper.__init__
    AmpOptimWrapper.__init__ = _amp_init

    # 6. bfloat16 predictions in mmpose heads
    _patch_mmpose_to_numpy()
    _applied = True

