"""Fixes applied on ``import mmattn`` so the pinned stack works on torch 2.13.

Each fix is small, idempotent, and only changes behaviour that is broken on this stack.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_applied = False


def _load_local_checkpoint(filename, map_location=None):
    """mmengine 0.10.7's local loader with ``weights_only=False``.

    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses the
    non-tensor metadata mmengine itself writes (message hub state, numpy scalars, config text),
    so ``Runner.resume`` and ``load_checkpoint`` of a training checkpoint fail. A local path the
    user names is trusted as it was before torch 2.6.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def apply():
    """Apply every compatibility fix once."""
    global _applied
    if _applied:
        return
    # The local scheme is registered under the empty prefix; re-register it with force.
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local_checkpoint)
    _applied = True
