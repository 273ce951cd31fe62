"""Pretrained weights a model config names, checked (and fetched) before a run.

Configs name backbone weights as ``model.pretrained`` (mmseg), ``init_cfg=dict(type='Pretrained',
checkpoint=...)`` (mmpose, mmdet) or ``pretrained`` on the backbone, as a local path, an
``http(s)://`` URL or one of mmengine's schemes (``open-mmlab://``, ``torchvision://``,
``mmcls://``). mmengine resolves them only when the Runner initialises the weights; offline, a
URL then ends in a raw ``URLError`` traceback from deep inside ``init_weights``.
:func:`ensure_pretrained` does the same resolution first, downloads into the cache mmengine
reads (torch hub's ``checkpoints`` directory), and turns a failure into one line naming the file
and the ``--cfg-options`` key that points the config at a local copy.
"""
import os
import os.path as osp
from typing import Any, List, Optional, Tuple
from urllib.parse import urlparse

__all__ = ['PretrainedWeightsError', 'pretrained_checkpoints', 'checkpoint_url', 'cached_path',
           'ensure_pretrained']

_SCHEMES = ('open-mmlab://', 'openmmlab://', 'torchvision://', 'modelzoo://', 'mmcls://')


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights a config names cannot be found or fetched (one-line message)."""


def pretrained_checkpoints(node: Any, prefix: str = 'model') -> List[Tuple[str, str]]:
    """``(config key, checkpoint)`` of every pretrained reference in a model config: string
    ``pretrained`` values and ``init_cfg`` entries of type ``Pretrained``, with the dotted key
    ``--cfg-options`` takes (``model.backbone.init_cfg.checkpoint``)."""
    found = []
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            found.append((f'{prefix}.checkpoint', node['checkpoint']))
        for key, value in node.items():
            if key == 'pretrained' and isinstance(value, str):
                found.append((f'{prefix}.{key}', value))
            elif isinstance(value, (dict, list, tuple)):
                found += pretrained_checkpoints(value, f'{prefix}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            found += pretrained_checkpoints(item, f'{prefix}.{i}')
    return found


def checkpoint_url(checkpoint: str) -> Optional[str]:
    """The URL mmengine downloads ``checkpoint`` from (its scheme tables for
    ``open-mmlab://``, ``torchvision://``, ``mmcls://``), or None for a local file."""
    from mmengine.runner import checkpoint as ckpt
    if checkpoint.startswith(('http://', 'https://')):
        return checkpoint
    if not checkpoint.startswith(_SCHEMES):
        return None
    scheme, name = checkpoint.split('://', 1)
    if scheme in ('torchvision', 'modelzoo'):
        table = ckpt.get_torchvision_models()
    elif scheme == 'mmcls':
        table = ckpt.get_mmcls_models()
    else:
        table = ckpt.get_external_models()
        name = ckpt.get_deprecated_model_names().get(name, name)
    if name not in table:
        raise PretrainedWeightsError(f'{checkpoint}: mmengine knows no model {name!r} under '
                                     f'{scheme}://')
    url = table[name]
    if not url.startswith(('http://', 'https://')):  # a file under mmengine's home
        return None
    return url


def cached_path(url: str) -> str:
    """Where mmengine (``torch.hub.load_state_dict_from_url``) keeps the download of ``url``."""
    import torch
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def ensure_pretrained(model_cfg: Any, download: bool = True) -> List[str]:
    """Check that every pretrained checkpoint ``model_cfg`` names is available: local files
    exist; URLs are in mmengine's download cache, or are downloaded there now (``download``).
    Returns the local paths; raises :class:`PretrainedWeightsError` with one line otherwise.

    Call it before the Runner is built (on rank 0 only in a distributed run, as mmengine's own
    download does), e.g. ``ensure_pretrained(cfg.model)``.
    """
    import torch
    paths = []
    for key, checkpoint in pretrained_checkpoints(model_cfg):
        url = checkpoint_url(checkpoint)
        if url is None:
            if checkpoint.startswith(_SCHEMES):
                continue  # a file under mmengine's home: mmengine reports it itself
            path = osp.expanduser(checkpoint)
            if not osp.isfile(path):
                raise PretrainedWeightsError(
                    f'pretrained weights {key}={checkpoint!r}: no such file; point {key} at '
                    f'a local copy (--cfg-options {key}=/path/to/file.pth) or set it to None '
                    f'to start from random weights')
            paths.append(path)
            continue
        cached = cached_path(url)
        name = osp.basename(cached)
        hint = (f'put {name} at {cached}, or point the config at a local copy: '
                f'--cfg-options {key}=/path/to/{name}')
        if not osp.isfile(cached):
            if not download:
                raise PretrainedWeightsError(
                    f'pretrained weights {key}={checkpoint!r} ({url}) are not downloaded; '
                    f'{hint}')
            os.makedirs(osp.dirname(cached), exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, cached, progress=False)
            except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts are OSError
                reason = ' '.join(str(error).split())
                raise PretrainedWeightsError(
                    f'pretrained weights {key}={checkpoint!r} cannot be downloaded from {url} '
                    f'({type(error).__name__}: {reason}); {hint}') from error
        paths.append(cached)
    return paths
