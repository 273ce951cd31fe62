"""A training iteration of every shipped segmentation config stays finite under --amp
(bfloat16 autocast on CPU)."""
import pytest
from _amp_helpers import CONFIGS, scope_of, tiny_data, train_one_amp_iteration  # noqa: F401

SEG = [p for p in CONFIGS if scope_of(p) == 'mmseg']


@pytest.mark.slow
@pytest.mark.parametrize('path', SEG, ids=[p.stem for p in SEG])
def test_seg_config_trains_finite_under_amp(path, tiny_data, tmp_path):  # noqa: F811
    train_one_amp_iteration(path, tiny_data, tmp_path)
