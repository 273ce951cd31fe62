"""Save the random number generators' state in every checkpoint and restore it on resume.

mmengine resumes weights, optimizer, schedulers and the data order, but not the global RNG
streams (Python ``random``, NumPy, torch): after ``--resume`` the data augmentations of an
epoch-based loop and the dropout masks of every loop draw different numbers than the
uninterrupted run would have. With this hook (registered by ``ResumableRunner``, or listed in a
config's ``custom_hooks``) a run killed and resumed finishes with the same weights as an
uninterrupted run on CPU in deterministic mode.

* ``before_save_checkpoint``: ``checkpoint['rng_state']`` = the three (four with CUDA) states.
* on resume (``after_load_checkpoint`` while the runner resumes), the states are restored at
  the moment the uninterrupted run would have drawn its next batch: at ``before_train`` for an
  epoch-based loop (checkpoints are written at epoch ends), after the iteration-based loop's
  replay of the batches already trained (that replay draws augmentation numbers too).
* validation during training draws from the RNGs as well (a new dataloader iterator draws a
  torch seed); the states are saved before and restored after every validation, so a run's
  training randomness does not depend on when it validates - nor on whether it was resumed at
  a validation point.

Restoring is done for single-process runs only: the checkpoint is written by rank 0, and other
ranks' streams may differ.
"""
import logging
import random

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

_KEY = 'rng_state'


def get_rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state(), world_size=get_world_size())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class _RestoreBeforeBatch:
    """Stands in for an iteration-based loop's data iterator: lets the loop replay ``skip``
    batches, restores the RNG state just before the next one and puts the real iterator back."""

    def __init__(self, loop, inner, skip: int, state: dict):
        self._loop, self._inner, self._skip, self._state = loop, inner, skip, state
        self._count = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._count >= self._skip:
            set_rng_state(self._state)
            self._loop.dataloader_iterator = self._inner
            return next(self._inner)
        self._count += 1
        return next(self._inner)

    def __getattr__(self, name):
        if name.startswith('_'):
            raise AttributeError(name)
        return getattr(self._inner, name)


@HOOKS.register_module()
class ResumableRandomStateHook(Hook):
    """Checkpoint the RNG states; restore them when resuming (see the module docstring)."""

    priority = 'VERY_LOW'  # restore after every other hook's before_train

    def __init__(self):
        self._pending = None
        self._val_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[_KEY] = get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = None
        if not getattr(runner, '_resume', False) or _KEY not in checkpoint:
            return
        state = checkpoint[_KEY]
        world_size = get_world_size()
        if world_size != 1 or state.get('world_size', 1) != 1:
            print_log('random states are restored on resume for single-process runs only; '
                      f'this run has {world_size} processes', logger='current',
                      level=logging.WARNING)
            return
        self._pending = state

    def before_train(self, runner) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        loop = runner.train_loop
        skip = getattr(loop, 'iter', 0) if hasattr(loop, 'dataloader_iterator') else 0
        if skip > 0:  # iteration-based: the loop first replays `skip` batches
            loop.dataloader_iterator = _RestoreBeforeBatch(loop, loop.dataloader_iterator, skip,
                                                           state)
        else:
            set_rng_state(state)

    def before_val(self, runner) -> None:
        self._val_state = get_rng_state()

    def after_val(self, runner) -> None:
        if self._val_state is not None:
            set_rng_state(self._val_state)
            self._val_state = None
