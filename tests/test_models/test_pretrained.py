"""Pretrained weights a config names: found, fetched into mmengine's cache, or one clear line."""
import os.path as osp
import urllib.error

import pytest
import torch
from mmengine.config import Config

from mmattn.models.backbones.pretrained import (PretrainedWeightsError, cached_path,
                                                checkpoint_url, ensure_pretrained,
                                                pretrained_checkpoints)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
OCRNET = osp.join(ROOT, 'configs/psa/ocrnet_hr18-psa-p_4xb2-160k_cityscapes-512x1024.py')
POSE = osp.join(ROOT, 'configs/psa/td-hm_hrnet-w32-psa-p_udp-8xb64-210e_coco-256x192.py')


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty download cache under tmp_path and no network: every download attempt is
    recorded and fails as urllib does offline."""
    attempts = []

    def fail(url, dst, *args, **kwargs):
        attempts.append((url, dst))
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', fail)
    return attempts


def test_references_of_the_shipped_configs():
    seg = pretrained_checkpoints(Config.fromfile(OCRNET).model)
    assert seg == [('model.pretrained', 'open-mmlab://msra/hrnetv2_w18')]
    pose = pretrained_checkpoints(Config.fromfile(POSE).model)
    assert pose == [('model.backbone.init_cfg.checkpoint',
                     'https://download.openmmlab.com/mmpose/pretrain_models/'
                     'hrnet_w32-36af842e.pth')]
    assert pretrained_checkpoints(dict(backbone=dict(init_cfg=[
        dict(type='Kaiming'), dict(type='Pretrained', checkpoint='a.pth')]))) == \
        [('model.backbone.init_cfg.1.checkpoint', 'a.pth')]


def test_offline_download_is_one_line_naming_file_and_key(offline, tmp_path):
    url = checkpoint_url('open-mmlab://msra/hrnetv2_w18')
    assert url.startswith('https://') and url.endswith('.pth')
    name = osp.basename(url)
    with pytest.raises(PretrainedWeightsError) as info:
        ensure_pretrained(Config.fromfile(OCRNET).model)
    message = str(info.value)
    assert '\n' not in message
    assert "model.pretrained='open-mmlab://msra/hrnetv2_w18' cannot be downloaded" in message
    assert 'URLError' in message and url in message
    assert f'put {name} at {tmp_path / "hub" / "checkpoints" / name}' in message
    assert f'--cfg-options model.pretrained=/path/to/{name}' in message
    assert offline == [(url, str(tmp_path / 'hub' / 'checkpoints' / name))]


def test_cached_file_is_used_without_download(offline, tmp_path):
    model = Config.fromfile(POSE).model
    ((_, url), ) = pretrained_checkpoints(model)
    cached = cached_path(url)
    assert cached == str(tmp_path / 'hub' / 'checkpoints' / 'hrnet_w32-36af842e.pth')
    with pytest.raises(PretrainedWeightsError, match='are not downloaded; put'):
        ensure_pretrained(model, download=False)
    torch.save({}, tmp_path / 'w.pth')
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'w.pth').rename(cached)
    assert ensure_pretrained(model) == [cached]
    assert offline == []


def test_local_file(tmp_path):
    path = tmp_path / 'backbone.pth'
    model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    with pytest.raises(PretrainedWeightsError,
                       match=r"model.backbone.init_cfg.checkpoint='.*backbone.pth': no such file"):
        ensure_pretrained(model)
    torch.save({}, path)
    assert ensure_pretrained(model) == [str(path)]


def test_torchvision_scheme_resolves_without_network():
    url = checkpoint_url('torchvision://resnet50')
    assert url.startswith('https://download.pytorch.org/models/resnet50')
    with pytest.raises(PretrainedWeightsError, match="no model 'resnet_nope' under torchvision"):
        checkpoint_url('torchvision://resnet_nope')
