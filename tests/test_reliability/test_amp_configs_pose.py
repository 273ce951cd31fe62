"""A training iteration of every shipped pose config stays finite under --amp (bfloat16
autocast on CPU; mmpose heads convert bfloat16 predictions to numpy for their accuracy)."""
import pytest
from _amp_helpers import CONFIGS, scope_of, tiny_data, train_one_amp_iteration  # noqa: F401

POSE = [p for p in CONFIGS if scope_of(p) == 'mmpose']


@pytest.mark.slow
@pytest.mark.parametrize('path', POSE, ids=[p.stem for p in POSE])
def test_pose_config_trains_finite_under_amp(path, tiny_data, tmp_path):  # noqa: F811
    train_one_amp_iteration(path, tiny_data, tmp_path)
