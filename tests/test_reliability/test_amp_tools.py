"""``tools/train.py --amp`` trains the segmentation and the pose demo configs on a CPU-only
machine (mmengine 0.10.7's AmpOptimWrapper asserts a GPU; ``--amp`` selects mmattn's
PortableAmpOptimWrapper there, which runs bfloat16 autocast with no loss scaling)."""
import math
import re

import pytest
import torch
from _train_helpers import (POSE_CONFIG, SEG_CONFIG, pose_options, run_train, seg_options)

from mmattn.datasets import make_tiny_cityscapes, make_tiny_coco


def _check(output, last_step):
    assert "type='PortableAmpOptimWrapper'" in output and "dtype='bfloat16'" in output
    assert last_step in output, output[-3000:]
    losses = [float(v) for v in re.findall(r'\bloss: ([-+0-9.eE]+|nan|inf)', output)]
    assert losses and all(math.isfinite(v) for v in losses), losses


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (bfloat16) path')
def test_amp_segmentation(tmp_path):
    data = make_tiny_cityscapes(tmp_path / 'cityscapes', num_train=2, num_val=1)
    options = seg_options(data, max_iters=2)
    output = run_train(SEG_CONFIG, tmp_path / 'work', options, '--amp', '--no-validate')
    _check(output, 'Iter(train) [2/2]')
    ckpt = torch.load(str(tmp_path / 'work' / 'iter_2.pth'), weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.dtype.is_floating_point)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (bfloat16) path')
def test_amp_pose(tmp_path):
    data = make_tiny_coco(tmp_path / 'coco', num_train=4, num_val=1, persons_per_image=(1, 1))
    options = pose_options(data, max_epochs=1)
    output = run_train(POSE_CONFIG, tmp_path / 'work', options, '--amp')
    _check(output, 'Epoch(train) [1][2/2]')
    assert 'coco/AP' in output  # and it evaluates
