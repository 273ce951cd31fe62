"""``AtomicCheckpointHook``: mmengine's CheckpointHook in an order a kill cannot break."""
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmattn.utils.checkpoint import write_text_atomic


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) that writes, then points, then deletes.

    mmengine 0.10's hook deletes the oldest kept checkpoint first, then writes the new one, then
    rewrites ``last_checkpoint`` in place: a process killed in between can leave no complete
    checkpoint (``max_keep_ckpts=1``) or an empty pointer. Here the new checkpoint is written
    first (atomically when the runner is a :class:`~mmattn.engine.ResumableRunner`), then the
    pointer (atomically), and only then are checkpoints beyond ``max_keep_ckpts`` deleted.

    Select it with ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', ...))``;
    ``runner_type = 'ResumableRunner'`` selects it for you.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0:
            # the same step may be saved twice in one epoch (regular and best checkpoint)
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
