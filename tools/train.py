"""Train a segmentation (mmseg), pose (mmpose) or detection (mmdet) config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] \
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

The same flags as mmseg's and mmpose's tools/train.py; the task is read from the config's
``default_scope``, and a config's ``runner_type`` is honoured. Multi-process:
tools/dist_train.sh CONFIG NUM_PROCS (CPU-only machines too).
"""
import argparse

from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model of an mmattn config')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or without a value from the latest checkpoint '
        'in the work dir')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, xxx=yyy format, e.g. '
        'train_cfg.max_iters=100 model.backbone.plugins.0.cfg.mode=sequential')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--no-data-check', action='store_true',
                        help='skip the dataset check (files, labels) before training')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def build_cfg(args):
    from mmattn.utils import enable_amp, fix_dataloaders, load_config, setup_distributed
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the '
                               'config')
        cfg.auto_scale_lr.enable = True
    fix_dataloaders(cfg)
    setup_distributed(cfg, args.launcher)
    return cfg


def main():
    args = parse_args()
    from mmattn.utils import (build_runner, exit_on_user_error, local_rank_env, preflight,
                              teardown_distributed)
    local_rank_env(args.local_rank)
    import mmattn  # noqa: F401  (registers the modules and engine components)
    with exit_on_user_error():  # a bad config, data or checkpoint: one message, not a traceback
        cfg = build_cfg(args)
        preflight(cfg, ('train_dataloader', 'val_dataloader'), check_data=not args.no_data_check,
                  check_pretrained=True)
        runner = build_runner(cfg)
        runner.train()
    del runner  # before the process group goes (see teardown_distributed)
    teardown_distributed()


if __name__ == '__main__':
    main()
