"""Checkpoints with mmengine metadata load under torch 2.13's ``weights_only`` default.

Without mmattn's fix, ``load_checkpoint`` and ``Runner.resume`` of a checkpoint written by
mmengine itself fail with "Weights only load failed" on torch >= 2.6.
"""
import numpy as np
import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint, save_checkpoint
from torch.utils.data import Dataset

import mmattn  # noqa: F401  (applies the fix)


class _ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.linear(inputs)
        if mode == 'loss':
            targets = torch.stack(targets) if isinstance(targets, list) else targets
            return dict(loss=((out - targets)**2).mean())
        return out


class _ToyData(Dataset):

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], targets=self.y[i])


def _runner(work_dir, max_iters, **kwargs):
    torch.manual_seed(0)  # same initial weights in every run
    return Runner(
        model=_ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=4, num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


def test_save_checkpoint_with_metadata_loads(tmp_path):
    model = _ToyModel()
    meta = dict(epoch=3, np_scalar=np.float64(0.5), np_array=np.arange(3), text='cfg text',
                nested=dict(classes=('a', 'b')))
    path = tmp_path / 'meta.pth'
    save_checkpoint(dict(state_dict=model.state_dict(), meta=meta), str(path))
    # the stock torch.load default refuses this file: the fix is what makes it load
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        torch.load(str(path))
    other = _ToyModel()
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

    resumed = _runner(tmp_path, max_iters=6, resume=True)
    resumed.train()
    assert resumed.iter == 6
    # resumed from iteration 4, not retrained from 0: the log of the resumed run starts at 5
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
