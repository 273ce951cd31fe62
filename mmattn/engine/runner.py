"""``ResumableRunner``: mmengine's Runner whose checkpoints survive a kill at any moment."""
import copy
import logging
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmattn.utils.checkpoint import (commit_file, discard, find_last_complete_checkpoint,
                                     temporary_path)

from .hooks import AtomicCheckpointHook, ResumableRandomStateHook


def _is_local(path: str, file_client_args, backend_args) -> bool:
    if file_client_args is not None or not isinstance(path, str) or path.startswith('pavi://'):
        return False
    try:
        return isinstance(get_file_backend(path, backend_args=backend_args), LocalBackend)
    except Exception:  # noqa: BLE001 - an unknown scheme is not a local file
        return False


@RUNNERS.register_module()
class ResumableRunner(Runner):
    """The mmengine Runner (same arguments), with three guarantees for interrupted runs.

    * Checkpoints are written atomically: to a temporary file beside the target, fsynced, then
      renamed into place, so a process killed at any moment never leaves a half-written file
      under a checkpoint's name. The checkpoint hook is
      :class:`~mmattn.engine.AtomicCheckpointHook` (write, then point ``last_checkpoint`` at
      it, then delete what ``max_keep_ckpts`` no longer keeps); a config's own
      ``CheckpointHook`` arguments are kept.
    * Auto-resume (``resume=True`` without ``load_from``, ``tools/train.py --resume``) starts
      from the last *complete* checkpoint, also when ``last_checkpoint`` is missing or names a
      damaged file (:func:`~mmattn.utils.checkpoint.find_last_complete_checkpoint`).
    * :class:`~mmattn.engine.ResumableRandomStateHook` is registered, so the random states are
      saved in every checkpoint and a resumed run draws the same numbers as an uninterrupted one.

    Select it in a config with ``runner_type = 'ResumableRunner'`` (``tools/train.py`` builds
    the runner through the ``RUNNERS`` registry when ``runner_type`` is set, as mmseg's does).
    """

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        default_hooks = copy.deepcopy(dict(default_hooks or {}))
        checkpoint = default_hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
        if isinstance(checkpoint, dict) and checkpoint.get('type') in ('CheckpointHook', None):
            default_hooks['checkpoint'] = dict(checkpoint, type='AtomicCheckpointHook')
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(h, ResumableRandomStateHook) for h in self._hooks):
            self.register_hook(ResumableRandomStateHook())
        if not any(isinstance(h, AtomicCheckpointHook) for h in self._hooks):
            print_log('ResumableRunner: the checkpoint hook is not an AtomicCheckpointHook; '
                      'checkpoints are still written atomically, but a kill between writing '
                      'one and updating last_checkpoint is handled only on resume',
                      logger='current', level=logging.WARNING)

    def save_checkpoint(self, out_dir, filename, file_client_args=None, *args,
                        backend_args=None, **kwargs):
        # mmengine writes checkpoints on rank 0 only (master_only): other ranks have no file
        if not _is_local(out_dir, file_client_args, backend_args) or not is_main_process():
            return super().save_checkpoint(out_dir, filename, file_client_args, *args,
                                           backend_args=backend_args, **kwargs)
        path = osp.join(out_dir, filename)
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        tmp = temporary_path(path)
        try:
            super().save_checkpoint(osp.dirname(tmp), osp.basename(tmp), file_client_args,
                                    *args, backend_args=backend_args, **kwargs)
            commit_file(tmp, path)
        except BaseException:
            discard(tmp)
            raise

    def load_or_resume(self) -> None:
        if not self._has_loaded and self._resume and self._load_from is None:
            found = find_last_complete_checkpoint(self.work_dir)
            if found is None:
                self._resume = False  # nothing complete to resume: start from the beginning
            else:
                self.logger.info(f'Auto resumed from the last complete checkpoint {found}.')
                self._load_from = found
        return super().load_or_resume()
