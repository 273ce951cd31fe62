"""Config mistakes give errors a user can act on, when the model is built from a shipped config:
an unknown attention name lists close matches and the available names; a plugin position or
stage that does not exist names what exists; a channel mismatch names both numbers."""
import copy
import os
import pathlib
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmattn  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'
POSE_DEMO = ROOT / 'configs/demo/td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py'
GC_NECK = ROOT / 'configs/attention_neck/ocrnet_hr18-gc-neck_4xb2-160k_cityscapes-512x1024.py'


def _model_cfg(path):
    cfg = Config.fromfile(str(path))
    model = copy.deepcopy(cfg.model)
    model.pop('pretrained', None)
    return cfg.default_scope, model


def _build(scope, model):
    from mmengine.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(model)


def test_unknown_attention_name_in_a_neck_config_lists_close_matches():
    scope, model = _model_cfg(GC_NECK)
    model.neck.attention = 'gcc'
    with pytest.raises(KeyError) as info:
        _build(scope, model)
    message = str(info.value)
    assert "unknown attention 'gcc'" in message and "did you mean 'gc'" in message
    assert 'Available short names: psa_p, psa_s' in message


@pytest.mark.parametrize('name', ['PolarizedSelfAtention', 'psa_q'])
def test_unknown_attention_name_in_a_plugin_config_lists_close_matches(name):
    scope, model = _model_cfg(SEG_DEMO)
    model.backbone.plugins[0].cfg.type = name
    with pytest.raises(KeyError, match=r"did you mean .*'(PolarizedSelfAttention|psa_p)'"):
        _build(scope, model)


@pytest.mark.parametrize('config', [SEG_DEMO, POSE_DEMO], ids=['seg', 'pose'])
def test_plugin_position_missing_in_the_block_names_the_existing_ones(config):
    scope, model = _model_cfg(config)
    model.backbone.plugins[0].position = 'after_conv3'  # the released preset: BasicBlocks
    with pytest.raises(ValueError, match=re.escape(
            "position 'after_conv3' does not exist in BasicBlock")) as info:
        _build(scope, model)
    assert "it has ['after_conv1', 'after_conv2', 'before_add', 'after_first_3x3']" in str(
        info.value)


def test_unknown_plugin_position_lists_the_positions():
    scope, model = _model_cfg(SEG_DEMO)
    model.backbone.plugins[0].position = 'after_conv4'
    with pytest.raises(ValueError, match=r"unknown plugin position 'after_conv4'; available: "
                       r"\['after_conv1', 'after_conv2', 'after_conv3'"):
        _build(scope, model)


@pytest.mark.parametrize('stages, expected', [
    ((2, 5), r'plugin stages \[5\] do not exist in HRNet; its residual stages are \(1, 2, 3, 4\)'),
    ((True, False), r'plugin stages \(True, False\) has 2 flags but HRNet has 4 stages'),
])
def test_plugin_stage_that_does_not_exist_names_the_stages(stages, expected):
    scope, model = _model_cfg(SEG_DEMO)
    model.backbone.plugins[0].stages = stages
    with pytest.raises(ValueError, match=expected):
        _build(scope, model)


def test_plugin_channel_mismatch_names_both_numbers():
    scope, model = _model_cfg(POSE_DEMO)
    model.backbone.plugins[0].cfg.in_channels = 64
    with pytest.raises(ValueError, match=r'states in_channels=64 but BasicBlock .* has 16 '
                       r"channels at 'after_conv1'"):
        _build(scope, model)


def test_neck_channel_mismatch_names_both_numbers():
    scope, model = _model_cfg(GC_NECK)
    model.neck.in_channels = [18, 36, 72, 100]  # the backbone's last level has 144
    segmentor = _build(scope, model).eval()
    with torch.no_grad(), pytest.raises(ValueError) as info:
        segmentor.extract_feat(torch.randn(1, 3, 64, 64))
    message = str(info.value)
    assert 'GlobalContextBlock' in message and 'in_channels=100' in message and '144' in message


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_refuse_a_config_of_another_codebase_in_one_line(tool, tmp_path):
    """An mmpretrain-style config (or any scope the tools do not run) stops with one line that
    says which scopes work and that the modules still work through custom_imports."""
    import subprocess
    import sys
    config = tmp_path / 'classifier.py'
    config.write_text("default_scope = 'mmpretrain'\n"
                      "custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)\n"
                      "model = dict(type='ImageClassifier')\n")
    args = [str(config)] + (['no_checkpoint.pth'] if tool == 'test' else [])
    proc = subprocess.run([sys.executable, str(ROOT / f'tools/{tool}.py'), *args, '--work-dir',
                           str(tmp_path / 'work')], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: config default_scope is 'mmpretrain'; mmattn's tools "
                           'run configs of mmseg, mmpose, mmdet')
    assert "custom_imports=dict(imports=['mmattn'])" in last


def test_train_py_names_missing_pretrained_weights_in_one_line(tmp_path):
    """Pretrained weights that cannot be fetched stop training before the Runner is built, with
    the file and the --cfg-options key to point at a local copy (not a URLError traceback)."""
    import subprocess
    import sys
    url = 'http://127.0.0.1:9/nowhere/hrnetv2_w18_small-b5a04e21.pth'  # refused at once
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(SEG_DEMO), '--work-dir',
         str(tmp_path / 'work'), '--no-data-check', '--cfg-options', f'model.pretrained={url}'],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TORCH_HOME=str(tmp_path / 'torch_home')))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('PretrainedWeightsError: pretrained weights model.pretrained=')
    assert 'hrnetv2_w18_small-b5a04e21.pth' in last and '--cfg-options model.pretrained=' in last
