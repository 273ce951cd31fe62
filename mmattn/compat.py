"""The one fix ``import mmattn`` applies, and only where a version combination needs it.

torch 2.6 changed ``torch.load``'s default to ``weights_only=True``. mmengine releases that still
call plain ``torch.load`` in their local-file loader (0.10.x) then refuse mmengine's own training
checkpoints (message hub state, numpy scalars, config text): ``Runner.resume`` and
``load_checkpoint`` of a local ``.pth`` fail. Where exactly that combination is installed, the
local loader is registered again through mmengine's own extension point
(``CheckpointLoader.register_scheme``) with torch < 2.6's behaviour, ``weights_only=False``, for
the files a user names; a missing, truncated or corrupt file is then one
:class:`~mmattn.utils.checkpoint.CheckpointError` naming the file. Everything else mmengine does
is left as it is; behaviour mmattn adds is in :mod:`mmattn.engine`, selected by a config.
"""
import inspect
import os.path as osp

from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from mmattn.utils.checkpoint import CheckpointNotFoundError, load_checkpoint_file
from mmattn.utils.torch_compat import TORCH_VERSION

__all__ = ['apply', 'needs_local_loader_fix']

_applied = False


def needs_local_loader_fix() -> bool:
    """True for torch >= 2.6 with an mmengine whose local loader calls plain ``torch.load``."""
    if TORCH_VERSION < (2, 6):
        return False
    try:
        source = inspect.getsource(mmengine_checkpoint.load_from_local)
    except (OSError, TypeError):  # no source (frozen install): judge by the version alone
        return True
    return 'weights_only' not in source


def _load_local_checkpoint(filename, map_location=None):
    """mmengine's local loader with ``weights_only=False`` and one clear error per file."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location=map_location, weights_only=False)


def apply() -> bool:
    """Register the local loader fix if this torch/mmengine pair needs it; return whether it
    is in place. Idempotent."""
    global _applied
    if not _applied and needs_local_loader_fix():
        # mmengine registers the local scheme under the empty prefix; replace that entry
        CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local_checkpoint)
        _applied = True
    return _applied
