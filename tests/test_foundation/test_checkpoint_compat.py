"""Checkpoints with mmengine metadata load with mmengine's own API and Runner on every torch.

On torch >= 2.6 with an mmengine whose local loader calls plain ``torch.load`` (0.10.x),
``load_checkpoint`` and ``Runner.resume`` of a checkpoint written by mmengine itself fail with
"Weights only load failed"; ``import mmattn`` registers the local loader again for exactly that
combination (and for no other).
"""
import numpy as np
import pytest
import torch
from _toy_runner import StartIter, ToyModel, toy_runner
from mmengine.runner import Runner, load_checkpoint, save_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import mmattn  # noqa: F401  (applies the fix where it is needed)
from mmattn.compat import needs_local_loader_fix
from mmattn.utils.torch_compat import TORCH_VERSION


def _runner(work_dir, max_iters, **kwargs):
    # mmengine's own Runner: the fix is for mmengine's API, not for mmattn's runner
    return toy_runner(work_dir, max_iters, interval=2, runner_cls=Runner, **kwargs)


def test_the_fix_is_registered_exactly_where_needed():
    local_loader = CheckpointLoader._schemes['']
    if TORCH_VERSION < (2, 6):
        assert not needs_local_loader_fix()
    if needs_local_loader_fix():
        assert local_loader.__module__ == 'mmattn.compat'
    else:
        assert local_loader.__module__ == 'mmengine.runner.checkpoint'


def test_save_checkpoint_with_metadata_loads(tmp_path):
    model = ToyModel()
    meta = dict(epoch=3, np_scalar=np.float64(0.5), np_array=np.arange(3), text='cfg text',
                nested=dict(classes=('a', 'b')))
    path = tmp_path / 'meta.pth'
    save_checkpoint(dict(state_dict=model.state_dict(), meta=meta), str(path))
    if needs_local_loader_fix():
        # the stock torch.load default refuses this file: the fix is what makes it load
        with pytest.raises(Exception, match='[Ww]eights only load failed'):
            torch.load(str(path))
    other = ToyModel()
    ckpt = load_checkpoint(other, str(path), map_location='cpu')
    assert ckpt['meta']['np_scalar'] == 0.5
    assert np.array_equal(ckpt['meta']['np_array'], np.arange(3))
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_hook_then_resume(tmp_path):
    first = _runner(tmp_path, max_iters=4)
    first.train()
    ckpt_path = tmp_path / 'iter_4.pth'
    assert ckpt_path.is_file()
    saved = torch.load(str(ckpt_path), weights_only=False)
    assert 'message_hub' in saved and 'optimizer' in saved  # real mmengine metadata

    start = StartIter()
    resumed = _runner(tmp_path, max_iters=6, resume=True, custom_hooks=[start])
    resumed.train()
    assert start.iter == 4  # resumed from iteration 4, not retrained from 0
    assert resumed.iter == 6
    assert (tmp_path / 'iter_6.pth').is_file()

    straight = _runner(tmp_path / 'straight', max_iters=6)
    straight.train()
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(a, b)


def test_load_from_in_runner(tmp_path):
    first = _runner(tmp_path, max_iters=2)
    first.train()
    second = _runner(tmp_path / 'b', max_iters=2, load_from=str(tmp_path / 'iter_2.pth'))
    second.load_or_resume()
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
