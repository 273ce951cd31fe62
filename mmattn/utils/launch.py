"""What tools/train.py and tools/test.py share: loading the config, task detection, building the
runner, CPU-only distributed set-up, config rewrites a flag asks for, checks before a run."""
import contextlib
import gc
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

TASKS = ('mmseg', 'mmpose', 'mmdet')


class ConfigError(ValueError):
    """A config the tools cannot run; the message says why in one line."""


def task_of(cfg: Config) -> str:
    """'mmseg', 'mmpose' or 'mmdet', from the config's ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ConfigError(f"config default_scope is {scope!r}; mmattn's tools run configs of "
                          f"{', '.join(TASKS)} (inherit from one of their configs, which set "
                          f"it); mmattn's modules still work in any OpenMMLab config through "
                          f"custom_imports=dict(imports=['mmattn'])")
    return scope


def load_config(path: str, cfg_options=None, work_dir=None) -> Config:
    """The config at ``path`` with ``--cfg-options`` merged, its task checked, and ``work_dir``
    set as mmseg's tools set it (the flag, else the config's, else ``./work_dirs/<name>``)."""
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    task_of(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = os.path.join('./work_dirs', os.path.splitext(os.path.basename(path))[0])
    return cfg


def build_runner(cfg: Config):
    """A Runner from ``cfg``: through the ``RUNNERS`` registry when the config names a
    ``runner_type`` (e.g. mmattn's ``ResumableRunner``), else mmengine's ``Runner``."""
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)


def replace_in_cfg(node: Any, key: str, old: Any, new: Any) -> int:
    """Replace ``key: old`` by ``key: new`` in every dict of a nested config; return the count."""
    count = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and v == old:
                node[k] = new
                count += 1
            else:
                count += replace_in_cfg(v, key, old, new)
    elif isinstance(node, (list, tuple)):
        for item in node:
            count += replace_in_cfg(item, key, old, new)
    return count


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` for ``--launcher`` runs, including CPU-only machines.

    mmengine's pytorch launcher calls ``torch.cuda.set_device``, which fails without a GPU. On
    such a machine this initialises the process group itself (gloo; the Runner then sees it is
    already initialised and skips its own), builds DDP without ``device_ids`` and turns SyncBN
    (CUDA only) into BN.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f"--launcher {launcher} needs a GPU; on a CPU-only machine use "
                         f"'pytorch' (torchrun, tools/dist_train.sh)")
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    n = replace_in_cfg(cfg._cfg_dict, 'type', 'SyncBN', 'BN')
    if dist.get_rank() == 0:
        print_log(f'CPU-only distributed run: gloo backend, {dist.get_world_size()} processes, '
                  f'{n} SyncBN config(s) replaced by BN', logger='current')


def enable_amp(cfg: Config) -> None:
    """``--amp``: mixed precision with mmengine's AmpOptimWrapper (float16 with dynamic loss
    scaling on CUDA), or on a CPU-only machine mmattn's ``PortableAmpOptimWrapper`` (bfloat16:
    CPU float16 kernels are missing, and bfloat16 needs no loss scaling)."""
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper in ('AmpOptimWrapper', 'PortableAmpOptimWrapper'):
        print_log('AMP training is already enabled in your config.', logger='current')
        return
    if optim_wrapper != 'OptimWrapper':
        raise ValueError(f'--amp supports optim_wrapper type OptimWrapper, got {optim_wrapper}')
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:  # mmengine's AmpOptimWrapper needs a GPU
        cfg.optim_wrapper.type = 'PortableAmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'


def fix_dataloaders(cfg: Config) -> None:
    """``num_workers=0`` (e.g. from ``--cfg-options``) with the base configs'
    ``persistent_workers=True`` makes torch refuse to build the loader; turn the latter off."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('num_workers', 0) == 0 and loader.get('persistent_workers'):
            loader.persistent_workers = False
            print_log(f'{key}: num_workers=0, so persistent_workers is turned off',
                      logger='current')


def local_rank_env(local_rank: int) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)



@contextlib.contextmanager
def exit_on_user_error():
    """Turn a broken config, checkpoint, dataset or missing pretrained weights
    (``ConfigError``, ``CheckpointError``, ``DatasetError``, ``PretrainedWeightsError``), whether
    found by :func:`preflight` or while the Runner resumes/loads, into one line and exit
    status 1."""
    from mmattn.datasets import DatasetError
    from mmattn.models.backbones import PretrainedWeightsError
    from mmattn.utils.checkpoint import CheckpointError
    try:
        yield
    except (CheckpointError, DatasetError, ConfigError, PretrainedWeightsError) as error:
        sys.exit(f'{type(error).__name__}: {error}')


def preflight(cfg: Config, dataloaders=('train_dataloader', 'val_dataloader'),
              check_data: bool = True, check_pretrained: bool = False) -> None:
    """Check, before the Runner is built, that the checkpoint the config loads is readable,
    that the datasets it names are sound and (``check_pretrained``, for training) that the
    pretrained weights it initialises from are at hand (downloaded into mmengine's cache if
    needed, on the first process only); raises ``CheckpointError``/``DatasetError``/
    ``PretrainedWeightsError`` naming the file instead of failing at iteration N."""
    from mmattn.datasets import validate_dataset
    from mmattn.utils.checkpoint import check_checkpoint_file
    if cfg.get('load_from'):
        check_checkpoint_file(cfg.load_from)
    if check_pretrained and os.environ.get('LOCAL_RANK', '0') == '0':
        # mmengine initialises (and so downloads) the weights before it loads a checkpoint,
        # also when resuming
        from mmattn.models.backbones import ensure_pretrained
        ensure_pretrained(cfg.model)
    if check_data:
        for key in dataloaders:
            if cfg.get(key):
                validate_dataset(cfg[key].get('dataset'), task_of(cfg))


def teardown_distributed() -> None:
    """Destroy the process group at the end of a run: gloo processes that exit with it still
    alive can abort ("terminate called without an active exception"). Callers drop their
    Runner first, and the collection here frees the DDP wrapper (whose reducer holds gloo work
    objects) while the interpreter is fully alive."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
