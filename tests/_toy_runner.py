"""A toy Runner shared by the checkpoint tests (tests/test_foundation and tests/test_reliability):
a linear model on 12 random samples, seeded, deterministic. It is mmattn's ``ResumableRunner``
(what the shipped configs select), unless a test asks for mmengine's own ``Runner``."""
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmattn.engine import ResumableRunner
from torch.utils.data import Dataset


class ToyModel(BaseModel):

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        # dropout draws from torch's RNG every iteration (what resuming must restore)
        self.drop = torch.nn.Dropout(dropout) if dropout else torch.nn.Identity()

    def forward(self, inputs, targets=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.linear(self.drop(inputs))
        if mode == 'loss':
            targets = torch.stack(targets) if isinstance(targets, list) else targets
            return dict(loss=((out - targets)**2).mean())
        return out


class ToyData(Dataset):

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], targets=self.y[i])


class StartIter(Hook):
    """Records the iteration training starts from (``before_train`` runs after resuming)."""

    def before_train(self, runner):
        self.iter = runner.iter


def toy_runner(work_dir, max_iters, *, dropout=0.0, interval=1, max_keep_ckpts=-1,
               runner_cls=ResumableRunner, **kwargs):
    """A ``runner_cls`` training :class:`ToyModel`, checkpointing every ``interval``
    iterations."""
    torch.manual_seed(0)  # same initial weights in every run
    return runner_cls(
        model=ToyModel(dropout),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=interval, by_epoch=False,
                            max_keep_ckpts=max_keep_ckpts),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0, deterministic=True),
        default_scope='mmengine',
        **kwargs)
