"""Segmentation (demo OCRNet-HR18s + PSA_p, iteration-based): a run of tools/train.py killed with
SIGKILL - after a checkpoint, or in the middle of writing one - resumes with ``--resume`` and
ends with exactly the weights of an uninterrupted run (CPU, deterministic mode, seed 0)."""
import pytest
from _train_helpers import (SEG_CONFIG, assert_killed_in_write, complete_checkpoints, exists,
                            resume_and_compare, run_and_kill, run_train, seg_options, writing)

from mmattn.datasets import make_tiny_cityscapes

MAX_ITERS = 4


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('resume_seg')
    options = seg_options(make_tiny_cityscapes(root / 'cityscapes', num_train=4, num_val=1),
                          MAX_ITERS)
    run_train(SEG_CONFIG, root / 'straight', options, '--no-validate')
    return root, options


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_to_identical_weights(setup):
    root, options = setup
    work_dir = root / 'killed'
    run_and_kill(SEG_CONFIG, work_dir, options, exists('iter_2.pth'), '--no-validate')
    assert not (work_dir / f'iter_{MAX_ITERS}.pth').exists()
    assert all(problem is None for problem in complete_checkpoints(work_dir).values())
    final = f'iter_{MAX_ITERS}.pth'
    assert 2 <= resume_and_compare(SEG_CONFIG, root, work_dir, options, final,
                                   '--no-validate') < MAX_ITERS


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_to_identical_weights(setup):
    root, options = setup
    work_dir = root / 'killed_in_write'
    # each checkpoint write pauses half way (test-only fault injection); kill in iter_2's write
    run_and_kill(SEG_CONFIG, work_dir, options, writing('iter_2.pth'), '--no-validate',
                 pause_writes=5)
    # never a partial file under the final name, and the pointer names a complete checkpoint
    assert_killed_in_write(work_dir, 'iter_2.pth', 'iter_1.pth')
    assert resume_and_compare(SEG_CONFIG, root, work_dir, options, f'iter_{MAX_ITERS}.pth',
                              '--no-validate') == 1
