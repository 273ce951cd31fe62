"""Pose (demo UDP HRNet-W16 + PSA_p, epoch-based, validation every epoch): a run of
tools/train.py killed with SIGKILL - after a checkpoint, or in the middle of writing one -
resumes with ``--resume`` and ends with exactly the weights of an uninterrupted run (CPU,
deterministic mode, seed 0). The augmentations draw from the global RNGs, so this also needs the
random states that mmattn stores in each checkpoint."""
import pytest
from _train_helpers import (POSE_CONFIG, assert_killed_in_write, complete_checkpoints, exists,
                            pose_options, resume_and_compare, run_and_kill, run_train, writing)

from mmattn.datasets import make_tiny_coco

MAX_EPOCHS = 3


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('resume_pose')
    coco = make_tiny_coco(root / 'coco', num_train=4, num_val=1, persons_per_image=(1, 1))
    options = pose_options(coco, MAX_EPOCHS)
    run_train(POSE_CONFIG, root / 'straight', options)
    return root, options


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_to_identical_weights(setup):
    root, options = setup
    work_dir = root / 'killed'
    run_and_kill(POSE_CONFIG, work_dir, options, exists('epoch_1.pth'))
    assert not (work_dir / f'epoch_{MAX_EPOCHS}.pth').exists()
    assert all(problem is None for problem in complete_checkpoints(work_dir).values())
    final = f'epoch_{MAX_EPOCHS}.pth'
    resumed = resume_and_compare(POSE_CONFIG, root, work_dir, options, final)
    assert 1 <= resumed // 2 < MAX_EPOCHS  # 2 iterations per epoch


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_to_identical_weights(setup):
    root, options = setup
    work_dir = root / 'killed_in_write'
    run_and_kill(POSE_CONFIG, work_dir, options, writing('epoch_2.pth'),
                 pause_writes=5)
    assert_killed_in_write(work_dir, 'epoch_2.pth', 'epoch_1.pth')
    assert resume_and_compare(POSE_CONFIG, root, work_dir, options,
                              f'epoch_{MAX_EPOCHS}.pth') == 2
