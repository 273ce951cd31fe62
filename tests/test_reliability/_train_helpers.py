"""Run tools/train.py on the demo configs (tiny data, few iterations) as a subprocess, kill it,
resume it, and compare weights. Shared by the resume tests; not a test module."""
import glob
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEG_CONFIG = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'
POSE_CONFIG = ROOT / 'configs/demo/td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py'
DETERMINISTIC = ['randomness.seed=0', 'randomness.deterministic=True']


def seg_options(cityscapes: dict, max_iters: int) -> list:
    root = cityscapes['root']
    return [
        'train_dataloader.batch_size=1', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
        'val_dataloader.num_workers=0', 'test_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'test_dataloader.persistent_workers=False',
        f'train_cfg.max_iters={max_iters}', 'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1'
    ] + DETERMINISTIC


def pose_options(coco: dict, max_epochs: int, val_interval: int = 1) -> list:
    root = coco['root'] + '/'
    options = [
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        f'train_dataloader.dataset.data_root={root}', f'train_cfg.max_epochs={max_epochs}',
        f'train_cfg.val_interval={val_interval}', 'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1'
    ]
    for key in ('val', 'test'):
        options += [f'{key}_dataloader.batch_size=2', f'{key}_dataloader.num_workers=0',
                    f'{key}_dataloader.dataset.data_root={root}',
                    f'{key}_dataloader.dataset.bbox_file={coco["bbox_file"]}',
                    f'{key}_evaluator.ann_file={coco["val"]["ann_file"]}']
    return options + DETERMINISTIC


def train_cmd(config, work_dir, options, *extra, pause_writes: float = 0) -> list:
    """tools/train.py's command line; with ``pause_writes`` every checkpoint write stops half
    way for that many seconds (test-only fault injection, _pause_checkpoint_writes.py)."""
    cmd = [sys.executable]
    if pause_writes:
        cmd += [str(pathlib.Path(__file__).with_name('_pause_checkpoint_writes.py')),
                str(pause_writes)]
    return cmd + [str(ROOT / 'tools/train.py'), str(config), '--work-dir', str(work_dir),
                  *extra, '--cfg-options', *options]


def _env(extra_env=None):
    env = dict(os.environ)
    # one intra-op thread: on a shared 2-core machine OpenMP threads spinning against other
    # processes make small convolutions 100x slower; every run of a comparison uses the same
    env['OMP_NUM_THREADS'] = '1'
    env.update(extra_env or {})
    return env


def run_train(config, work_dir, options, *extra, env=None, timeout=300) -> str:
    """Run tools/train.py to the end; return its output (fail with its tail otherwise)."""
    proc = subprocess.run(train_cmd(config, work_dir, options, *extra), cwd=ROOT,
                          env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f'tools/train.py failed ({proc.returncode}):\n' + \
        proc.stdout[-4000:]
    return proc.stdout


def run_and_kill(config, work_dir, options, ready, *extra, env=None, timeout=300,
                 pause_writes: float = 0) -> str:
    """Start tools/train.py, SIGKILL it as soon as ``ready(work_dir)`` is true; return the
    output. Fails if the run ended on its own before that."""
    log = pathlib.Path(str(work_dir) + '.log')
    with open(log, 'w') as out:
        proc = subprocess.Popen(train_cmd(config, work_dir, options, *extra,
                                          pause_writes=pause_writes), cwd=ROOT,
                                env=_env(env), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while not ready(pathlib.Path(work_dir)):
                if proc.poll() is not None:
                    raise AssertionError(f'the run ended (rc {proc.returncode}) before the '
                                         f'kill point:\n' + log.read_text()[-3000:])
                if time.monotonic() > deadline:
                    raise AssertionError('kill point not reached in time:\n' +
                                         log.read_text()[-3000:])
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def exists(name):
    return lambda work_dir: (work_dir / name).exists()


def writing(name):
    """True while a temporary file of checkpoint ``name`` exists (a write in progress)."""
    return lambda work_dir: bool(glob.glob(str(work_dir / f'.{name}.tmp-*')))


def resumed_at(output: str) -> int:
    """The iteration a run resumed from, from mmengine's log line."""
    found = re.findall(r'resumed epoch: (\d+), iter: (\d+)', output)
    assert found, 'the run did not resume from a checkpoint:\n' + output[-3000:]
    return int(found[-1][1])


def weights(path):
    return torch.load(str(path), map_location='cpu', weights_only=False)['state_dict']


def assert_same_weights(a_path, b_path):
    a, b = weights(a_path), weights(b_path)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}'


def complete_checkpoints(work_dir):
    from mmattn.utils.checkpoint import checkpoint_problem
    return {p.name: checkpoint_problem(str(p)) for p in pathlib.Path(work_dir).glob('*.pth')}


def resume_and_compare(config, root, work_dir, options, final, *extra) -> int:
    """Finish the killed run in ``work_dir`` with ``--resume``; assert that no temporary
    checkpoint file is left and that its ``final`` checkpoint has the weights of the
    uninterrupted run (``root / 'straight' / final``). Returns the iteration it resumed from."""
    output = run_train(config, work_dir, options, *extra, '--resume')
    assert not list(pathlib.Path(work_dir).glob('.*.tmp-*'))  # stale temporary files cleaned
    assert_same_weights(root / 'straight' / final, work_dir / final)
    return resumed_at(output)


def assert_killed_in_write(work_dir, killed, previous):
    """After a kill during ``killed``'s write: nothing under its final name, ``previous`` the
    only (and complete) checkpoint, and ``last_checkpoint`` naming it."""
    assert not (work_dir / killed).exists()
    assert complete_checkpoints(work_dir) == {previous: None}
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / previous)
