"""Evaluate a checkpoint of a segmentation (mmseg), pose (mmpose) or detection (mmdet) config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR] \
        [--tta] [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

The same flags as mmseg's and mmpose's tools/test.py; the task is read from the config's
``default_scope``, and a config's ``runner_type`` is honoured. Prints the metrics (mIoU for
segmentation, COCO AP for pose and detection) and writes them to WORK_DIR/metrics.json.
"""
import argparse
import json
import os.path as osp

import numpy as np
from mmengine.config import Config, DictAction


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint of an mmattn config')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation logs and metrics')
    parser.add_argument('--out', help='dump the predictions to a pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save painted predictions to this directory')
    parser.add_argument('--tta', action='store_true', help='test time augmentation (mmseg)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, xxx=yyy format')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def enable_show_dir(cfg: Config, task: str, show_dir: str) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show-dir needs default_hooks.visualization in the config')
    if task == 'mmseg':
        hooks.visualization.draw = True
        cfg.visualizer.save_dir = show_dir
    elif task == 'mmpose':
        hooks.visualization.enable = True
        hooks.visualization.out_dir = show_dir
    else:
        hooks.visualization.draw = True
        hooks.visualization.test_out_dir = show_dir


def build_cfg(args) -> Config:
    from mmattn.utils import fix_dataloaders, load_config, setup_distributed, task_of
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    task = task_of(cfg)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_show_dir(cfg, task, args.show_dir)
    if args.tta:
        if task != 'mmseg' or 'tta_model' not in cfg:
            raise RuntimeError('--tta needs an mmseg config with tta_model and tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file, got {args.out}')
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type='DumpResults', out_file_path=args.out))
    fix_dataloaders(cfg)
    setup_distributed(cfg, args.launcher)
    return cfg


def main():
    args = parse_args()
    from mmattn.utils import (build_runner, exit_on_user_error, local_rank_env, preflight,
                              teardown_distributed)
    local_rank_env(args.local_rank)
    import mmattn  # noqa: F401  (registers the modules and engine components)
    with exit_on_user_error():  # a bad config, damaged checkpoint or dataset: one message
        cfg = build_cfg(args)
        preflight(cfg, ('test_dataloader', ))
        runner = build_runner(cfg)
        metrics = runner.test()
    metrics = {k: round(float(v), 4) if isinstance(v, (int, float, np.number)) else v
               for k, v in metrics.items()}
    if runner.rank == 0:
        path = osp.join(cfg.work_dir, 'metrics.json')
        with open(path, 'w') as f:
            json.dump(metrics, f, indent=1)
        print(json.dumps(metrics))
        print(f'metrics written to {path}')
    del runner  # before the process group goes (see teardown_distributed)
    teardown_distributed()


if __name__ == '__main__':
    main()
