"""Block plugins keep running when the model is copied, pickled or has layers replaced.

mmengine's Runner reverts SyncBN to BN (non-distributed) or converts BN to SyncBN (``sync_bn``),
mmcv's ``fuse_conv_bn`` replaces BN by ``nn.Identity``; each makes new norm modules. For every
position of every block type of mmseg/mmpose/mmdet ResNet and HRNet, the attention modules must
still run once per forward and the output must equal the unconverted model's.
"""
import copy
import io
import os.path as osp

import pytest
import torch
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope

from _hrnet import hrnet_extra

import mmattn  # noqa: F401
from mmattn.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@MODELS.register_module(force=True)
class _CountedScale(torch.nn.Module):
    """Probe attention: multiplies channel c by a fixed factor (so skipping it changes the
    output) and counts its calls."""

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, in_channels))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.weight.view(1, -1, 1, 1).to(x.dtype)


PROBE = dict(type='_CountedScale')


def _hrnet():
    return dict(type='HRNet', extra=hrnet_extra(8, (1, 1, 1, 1), (1, 1, 1, 1), stem=8))


# (scope, backbone, position, blocks the plugin goes into): every position of every block
# type; HRNet holds both (one Bottleneck in stage 1, nine BasicBlocks in stages 2-4)
CASES = []
for _scope, _resnet in (('mmseg', 'ResNetV1c'), ('mmpose', 'ResNet'), ('mmdet', 'ResNet')):
    for _pos in ('after_conv1', 'after_conv2'):
        CASES.append((_scope, dict(type=_resnet, depth=18), _pos, 8))
    for _pos in ('after_conv1', 'after_conv2', 'after_conv3'):
        CASES.append((_scope, dict(type=_resnet, depth=50), _pos, 16))
for _scope in ('mmseg', 'mmpose'):
    for _pos in ('after_conv1', 'after_conv2', 'before_add'):
        CASES.append((_scope, _hrnet(), _pos, 10))
IDS = [f'{s}-{b["type"]}{b.get("depth", "")}-{p}' for s, b, p, _ in CASES]


def _build(scope, backbone, position, norm_cfg):
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(dict(type='AttentionBackbone',
                                  backbone=dict(backbone, norm_cfg=norm_cfg),
                                  plugins=[dict(cfg=PROBE, position=position)]))
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial norm statistics, so fusing them is visible
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.double()
    model.eval()  # (the projects' ResNet/HRNet.train return None: no chaining)
    return model


def _run(model, x):
    """Outputs and the number of attention calls of one forward."""
    modules = [model.get_submodule(p) for p in model.attention_plugins]
    for m in modules:
        m.calls = 0
    with torch.no_grad():
        outs = model(x)
    return (outs, ) if isinstance(outs, torch.Tensor) else outs, [m.calls for m in modules]


def _pickle(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _fuse(model):
    from mmcv.cnn import fuse_conv_bn
    return fuse_conv_bn(model)


def _convert(model):
    # without a process group SyncBatchNorm normalises like BatchNorm (nothing to sync)
    model = convert_sync_batchnorm(model, 'torch')
    model.eval()
    return model


CONVERSIONS = {
    # (norm the backbone is built with, conversion, norm types expected afterwards)
    'revert_sync_batchnorm': (dict(type='SyncBN'), revert_sync_batchnorm, '_BatchNormXd'),
    'convert_sync_batchnorm': (dict(type='BN'), _convert, 'SyncBatchNorm'),
    'fuse_conv_bn': (dict(type='BN'), _fuse, None),
    'deepcopy': (dict(type='BN'), copy.deepcopy, 'BatchNorm2d'),
    'torch.save/torch.load': (dict(type='BN'), _pickle, 'BatchNorm2d'),
}


@pytest.mark.parametrize('conversion', list(CONVERSIONS))
@pytest.mark.parametrize('scope,backbone,position,n_blocks', CASES, ids=IDS)
def test_attention_survives_conversion(scope, backbone, position, n_blocks, conversion):
    norm_cfg, convert, norm_type = CONVERSIONS[conversion]
    model = _build(scope, backbone, position, norm_cfg)
    assert len(model.attention_plugins) == n_blocks
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    expected, calls = _run(model, x)
    assert calls == [1] * n_blocks
    keys = list(model.state_dict())

    converted = convert(model)
    norms = {type(m).__name__ for name, m in converted.named_modules()
             if name.rsplit('.', 1)[-1].startswith('bn')}
    if norm_type is None:  # fused: every block norm is an Identity now
        assert norms == {'Identity'}
    else:
        assert norms == {norm_type}
    outs, calls = _run(converted, x)
    assert calls == [1] * n_blocks
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if conversion != 'fuse_conv_bn':  # (fusing drops the norms' entries, as mmcv does)
        assert list(converted.state_dict()) == keys

    # the attention matters: without it the output differs
    for path in converted.attention_plugins:
        converted.get_submodule(path).weight.data.fill_(1.0)
    outs, _ = _run(converted, x)
    assert not torch.allclose(outs[-1], expected[-1])


def test_layer_swapped_twice_runs_attention_once():
    """A layer replaced and then put back is hooked once, not twice."""
    model = _build('mmseg', dict(type='ResNetV1c', depth=18), 'after_conv2', dict(type='BN'))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    expected, _ = _run(model, x)
    block = model.layer1[0]
    original = block.bn2
    block.bn2 = copy.deepcopy(original)
    _run(model, x)
    block.bn2 = original
    outs, calls = _run(model, x)
    assert calls == [1] * len(calls)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_state_dict_keys_are_the_backbone_keys_plus_the_attention():
    with DefaultScope.overwrite_default_scope('mmdet'):
        plain = MODELS.build(dict(type='ResNet', depth=50))
    model = _build('mmdet', dict(type='ResNet', depth=50), 'after_conv3', dict(type='BN'))
    keys, plain_keys = set(model.state_dict()), set(plain.state_dict())
    assert plain_keys <= keys
    assert sorted(keys - plain_keys) == sorted(f'{p}.weight' for p in model.attention_plugins)
    # each attention module is a direct child of its block: layer<stage>.<block>.<name>
    assert all(len(p.split('.')) == 3 and p.startswith('layer') for p in model.attention_plugins)


def test_pickled_backbone_keeps_init_weights_and_train():
    """``torch.load`` of a whole plugged backbone: ``init_weights`` and ``train`` still keep the
    attention modules' initialisation and training norms."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(dict(type='AttentionBackbone', backbone_type='ResNet', depth=50,
                                  attention_plugins=[dict(cfg=dict(type='FusedNonLocal2d'),
                                                          position='after_conv3',
                                                          stages=(4, ))]))
    again = _pickle(model)
    again.init_weights()
    for path in again.attention_plugins:
        assert torch.count_nonzero(again.get_submodule(path).conv_out.norm.weight) == 0
    again.train()
    norms = [m for p in again.attention_plugins for m in again.get_submodule(p).modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.training for m in norms)


def test_shipped_ocrnet_runs_every_attention_module_inside_the_runner(tmp_path):
    """The OCRNet HRNetV2-W18 + PSA_p config with the plugins moved to ``before_add`` (a norm
    hook in a BasicBlock), built by mmengine's Runner (which reverts SyncBN to BN): all 104
    PSA modules run, and the output equals the directly built model's with the same weights."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/psa/ocrnet_hr18-psa-p_4xb2-160k_cityscapes-512x1024.py'))
    cfg.merge_from_dict({'model.pretrained': None,
                         'model.backbone.plugins.0.position': 'before_add'})
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    model.eval()
    sync = [n for n, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert not sync  # the Runner reverted them
    sites = model.backbone.attention_plugins
    assert len(sites) == 104
    calls = dict.fromkeys(sites, 0)
    handles = []
    for path in sites:
        def count(module, args, output, _path=path):
            calls[_path] += 1
        handles.append(model.backbone.get_submodule(path).register_forward_hook(count))
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        out = model(x, mode='tensor')
    for h in handles:
        h.remove()
    assert sorted(set(calls.values())) == [1]

    with DefaultScope.overwrite_default_scope('mmseg'):
        direct = MODELS.build(copy.deepcopy(cfg.model))
    direct.load_state_dict(model.state_dict())
    direct = revert_sync_batchnorm(direct)
    direct.eval()
    with torch.no_grad():
        torch.testing.assert_close(direct(x, mode='tensor'), out)


def _unregistered_resnet(lib, depth):
    """mmcv's and torchvision's ResNets: blocks with ``bn1..3`` children instead of ``norm``
    properties, built directly (mmcv registers no ResNet)."""
    if lib == 'mmcv':
        from mmcv.cnn.resnet import ResNet
        return ResNet(depth)
    import torchvision
    return getattr(torchvision.models, f'resnet{depth}')(num_classes=10)


@pytest.mark.parametrize('conversion', ['convert+revert', 'fuse_conv_bn',
                                        'torch.save/torch.load'])
@pytest.mark.parametrize('lib,depth,position', [
    (lib, depth, pos) for lib in ('mmcv', 'torchvision')
    for depth, positions in ((18, ('after_conv1', 'after_conv2')),
                             (50, ('after_conv1', 'after_conv2', 'after_conv3')))
    for pos in positions])
def test_blocks_with_bn_children(lib, depth, position, conversion):
    from mmattn.models.plugins import add_block_plugins
    model = _unregistered_resnet(lib, depth)
    added = add_block_plugins(model, dict(cfg=PROBE, position=position))
    assert len(added) == (8 if depth == 18 else 16)
    model.double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    expected, calls = _run(model, x)
    assert calls == [1] * len(added)
    if conversion == 'convert+revert':
        converted = revert_sync_batchnorm(_convert(model))
    elif conversion == 'fuse_conv_bn':
        converted = _fuse(model)
    else:
        converted = _pickle(model)
    outs, calls = _run(converted, x)
    assert calls == [1] * len(added)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
