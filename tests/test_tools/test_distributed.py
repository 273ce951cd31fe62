"""tools/dist_train.sh and tools/dist_test.sh run 2 processes on a CPU-only machine."""
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from mmattn.datasets import make_tiny_cityscapes

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'


def _tails(proc) -> str:
    """The ends of both streams of a failed run (stdout has the ranks' logs, stderr the
    launcher's report and any abort)."""
    return (f'exit {proc.returncode}\n--- stdout (end) ---\n{proc.stdout[-3000:]}\n'
            f'--- stderr (end) ---\n{proc.stderr[-5000:]}')


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only (gloo) path')
def test_two_process_train_and_test_on_cpu(tmp_path):
    data = make_tiny_cityscapes(tmp_path / 'cityscapes', num_train=4, num_val=2)
    root = data['root'] + '/'
    options = [
        '--cfg-options', f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0', 'test_dataloader.num_workers=0'
    ]
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PORT=str(29500 + os.getpid() % 1000))
    work = tmp_path / 'work'
    train = subprocess.run(
        ['bash', str(ROOT / 'tools/dist_train.sh'), str(CONFIG), '2', '--work-dir', str(work)] +
        options + ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                   'default_hooks.checkpoint.interval=2'],
        capture_output=True, text=True, env=env, timeout=900)
    log = train.stdout + train.stderr
    assert train.returncode == 0, _tails(train)
    assert 'CPU-only distributed run: gloo backend, 2 processes' in log
    assert re.search(r'SyncBN config\(s\) replaced by BN', log)
    assert 'Iter(train) [2/2]' in log and 'mIoU' in log
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    assert not any(k.startswith('module.') for k in state)  # saved unwrapped, loadable as is

    test = subprocess.run(
        ['bash', str(ROOT / 'tools/dist_test.sh'), str(CONFIG), str(ckpt), '2', '--work-dir',
         str(tmp_path / 'test')] + options,
        capture_output=True, text=True, env=env, timeout=900)
    assert test.returncode == 0, _tails(test)
    assert '"mIoU":' in test.stdout and (tmp_path / 'test' / 'metrics.json').is_file()
