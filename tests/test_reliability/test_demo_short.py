"""One short training and evaluation of each demo through tools/train.py and tools/test.py, as a
user runs them: the segmentation demo in float32, the pose demo with ``--amp`` (CPU bfloat16
through ``PortableAmpOptimWrapper``). Run in both the reference and the oldest environment."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from _train_helpers import (POSE_CONFIG, ROOT, SEG_CONFIG, _env, pose_options, run_train,
                            seg_options)

from mmattn.datasets import make_tiny_cityscapes, make_tiny_coco

pytestmark = [pytest.mark.slow, pytest.mark.demo_short]


def _evaluate(config, checkpoint, work_dir, options) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/test.py'), str(config), str(checkpoint), '--work-dir',
         str(work_dir), '--cfg-options', *options], cwd=ROOT, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return json.loads((work_dir / 'metrics.json').read_text())


def _finite_weights(path):
    state = torch.load(str(path), map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.dtype.is_floating_point)


def test_segmentation_demo_trains_and_evaluates(tmp_path):
    data = make_tiny_cityscapes(tmp_path / 'cityscapes', num_train=2, num_val=1)
    options = seg_options(data, max_iters=2)
    output = run_train(SEG_CONFIG, tmp_path / 'work', options, '--no-validate')
    assert 'Iter(train) [2/2]' in output, output[-3000:]
    _finite_weights(tmp_path / 'work' / 'iter_2.pth')
    metrics = _evaluate(SEG_CONFIG, tmp_path / 'work' / 'iter_2.pth', tmp_path / 'test', options)
    assert 0 <= metrics['mIoU'] <= 100


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (bfloat16) AMP path')
def test_pose_demo_trains_with_amp_and_evaluates(tmp_path):
    data = make_tiny_coco(tmp_path / 'coco', num_train=4, num_val=1, persons_per_image=(1, 1))
    options = pose_options(data, max_epochs=1)
    output = run_train(POSE_CONFIG, tmp_path / 'work', options, '--amp')
    assert "type='PortableAmpOptimWrapper'" in output and 'Epoch(train) [1][2/2]' in output
    losses = [float(v) for v in re.findall(r'\bloss: ([-+0-9.eE]+|nan|inf)', output)]
    assert losses and all(math.isfinite(v) for v in losses), losses
    metrics = _evaluate(POSE_CONFIG, tmp_path / 'work' / 'epoch_1.pth', tmp_path / 'test',
                        options)
    assert 0 <= metrics['coco/AP'] <= 1
