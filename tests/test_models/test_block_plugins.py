"""Attention plugins inside existing HRNet/ResNet blocks of mmseg, mmpose and mmdet."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope

from _hrnet import hrnet_extra

import mmattn  # noqa: F401
from mmattn.models.plugins import add_block_plugins, find_blocks
from mmattn.registry import MODELS


@MODELS.register_module(force=True)
class _ChannelScale(torch.nn.Module):
    """Probe attention: multiplies channel c by a known factor, so block outputs can be
    recomputed by hand."""
    _abbr_ = 'scale'

    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, in_channels))

    def forward(self, x):
        assert x.shape[1] == self.in_channels
        return x * self.weight.view(1, -1, 1, 1)


PROBE = dict(type='_ChannelScale')


def _conv(conv, x):
    """conv's maths without calling the module (its hooks are what is under test)."""
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def _bn(norm, x):
    """eval-mode BatchNorm without calling the module."""
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        training=False, eps=norm.eps)


def _build(scope, cfg):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


def _tiny_hrnet(scope='mmseg', plugins=None):
    backbone = dict(type='HRNet', extra=hrnet_extra(8, (1, 1, 1, 1), (1, 1, 1, 1)))
    if plugins is None:
        return _build(scope, backbone)
    return _build(scope, dict(type='AttentionBackbone', backbone=backbone, plugins=plugins))


def test_basic_block_after_conv1_matches_hand_forward():
    from mmseg.models.backbones.resnet import BasicBlock
    block = BasicBlock(8, 8).eval()
    add_block_plugins(torch.nn.Sequential(block), dict(cfg=PROBE, position='after_conv1',
                                                        block_types=('BasicBlock', )))
    w = block.scale.weight.view(1, -1, 1, 1)
    x = torch.randn(2, 8, 6, 5)
    h = F.relu(_bn(block.norm1, _conv(block.conv1, x))) * w
    expected = F.relu(_bn(block.norm2, _conv(block.conv2, h)) + x)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize('position,where', [('after_conv2', 'relu2'), ('after_conv3', 'norm3'),
                                            ('before_add', 'norm3'),
                                            ('after_first_3x3', 'relu2')])
def test_bottleneck_positions_match_hand_forward(position, where):
    from mmseg.models.backbones.resnet import Bottleneck
    block = Bottleneck(16, 4).eval()
    add_block_plugins(torch.nn.Sequential(block), dict(cfg=PROBE, position=position))
    channels = 4 if where == 'relu2' else 16
    assert block.scale.in_channels == channels
    w = block.scale.weight.view(1, -1, 1, 1)
    x = torch.randn(2, 16, 5, 7)
    h = F.relu(_bn(block.norm1, _conv(block.conv1, x)))
    h = F.relu(_bn(block.norm2, _conv(block.conv2, h)))
    if where == 'relu2':
        h = h * w
    h = _bn(block.norm3, _conv(block.conv3, h))
    if where == 'norm3':
        h = h * w
    torch.testing.assert_close(block(x), F.relu(h + x))


def test_released_preset_on_hrnet_w48_gives_104_blocks():
    model = _build('mmseg', dict(
        type='AttentionBackbone', backbone=dict(type='HRNet', extra=hrnet_extra(48)),
        plugins=dict(preset='released', cfg=PROBE)))
    added = model.attention_plugins
    assert len(added) == 104
    assert all(p.startswith(('stage2', 'stage3', 'stage4')) and p.endswith('.deattn')
               for p in added)
    channels = [model.get_submodule(p).in_channels for p in added]
    assert {c: channels.count(c) for c in set(channels)} == {48: 32, 96: 32, 192: 28, 384: 12}
    # released key layout: stage{2,3,4}.{m}.branches.{b}.{k}.deattn
    assert 'stage3.3.branches.2.3.deattn' in added


def test_paper_preset_covers_every_residual_block():
    model = _tiny_hrnet(plugins=dict(preset='paper', cfg=PROBE))
    blocks = find_blocks(model)
    assert len(model.attention_plugins) == len(blocks) == 1 + 2 + 3 + 4
    bottleneck = model.layer1[0]
    assert bottleneck.scale.in_channels == bottleneck.conv3.in_channels  # after its 3x3 conv2


@pytest.mark.parametrize('scope', ['mmseg', 'mmpose'])
def test_plain_hrnet_checkpoint_loads_with_only_attention_keys_missing(scope):
    plain = _tiny_hrnet(scope)
    plugged = _tiny_hrnet(scope, plugins=dict(preset='released', cfg=PROBE))
    result = plugged.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all('.deattn.' in k for k in result.missing_keys)
    assert set(plugged.state_dict()) - set(plain.state_dict()) == set(result.missing_keys)


def test_plugged_model_differs_from_plain_only_through_attention():
    plain = _tiny_hrnet()
    plugged = _tiny_hrnet(plugins=dict(preset='released', cfg=PROBE))
    plain.eval()  # (mmseg's HRNet.train() returns None, so no chaining)
    plugged.eval()
    plugged.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(plugged(x)[0], plain(x)[0])
    for name in plugged.attention_plugins:
        plugged.get_submodule(name).weight.data.fill_(1.0)  # identity attention
    for a, b in zip(plugged(x), plain(x)):
        torch.testing.assert_close(a, b)


# stages 2-4 hold 2+2+2 BasicBlocks in ResNet-18 and 4+6+3 Bottlenecks in ResNet-50
@pytest.mark.parametrize('scope,cfg,n_blocks', [
    ('mmseg', dict(type='ResNetV1c', depth=18), 6),
    ('mmseg', dict(type='ResNetV1c', depth=50), 13),
    ('mmpose', dict(type='ResNet', depth=18), 6),
    ('mmdet', dict(type='ResNet', depth=50), 13),
])
def test_resnets_of_three_projects(scope, cfg, n_blocks):
    model = _build(scope, dict(type='AttentionBackbone', backbone=cfg,
                               plugins=[dict(cfg=PROBE, position='before_add',
                                             stages=(False, True, True, True))]))
    assert len(model.attention_plugins) == n_blocks
    assert not any(p.startswith('layer1.') for p in model.attention_plugins)
    model.eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(o).all() for o in outs)


def test_missing_position_names_what_exists():
    with pytest.raises(ValueError, match=r"after_conv3.*does not exist in BasicBlock.*"
                                         r"after_conv1"):
        _tiny_hrnet(plugins=dict(cfg=PROBE, position='after_conv3', stages=(2, )))
    with pytest.raises(ValueError, match=r"unknown plugin position 'after_conv9'"):
        _tiny_hrnet(plugins=dict(cfg=PROBE, position='after_conv9'))


def test_missing_stage_names_existing_stages():
    with pytest.raises(ValueError, match=r'stages \[5\] do not exist in HRNet.*\(1, 2, 3, 4\)'):
        _tiny_hrnet(plugins=dict(cfg=PROBE, stages=(5, )))


def test_channel_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match=r'in_channels=32 but BasicBlock .* has 8 channels'):
        _tiny_hrnet(plugins=dict(cfg=dict(PROBE, in_channels=32), stages=(2, ), branches=(0, )))


def test_deepcopy_rebinds_hooks_to_the_copy():
    model = _tiny_hrnet(plugins=dict(preset='released', cfg=PROBE))
    model.eval()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32)
    before = model(x)[0]
    for name in twin.attention_plugins:
        twin.get_submodule(name).weight.data.zero_()
    torch.testing.assert_close(model(x)[0], before)  # the original is untouched
    assert not torch.allclose(twin(x)[0], before)  # the copy uses its own attention


def test_attention_neck_per_level_channels():
    neck = _build('mmseg', dict(type='AttentionNeck', in_channels=[4, 8, 16],
                                attention=PROBE, levels=[0, 2]))
    xs = [torch.randn(1, c, 6, 6) for c in (4, 8, 16)]
    outs = neck(xs)
    torch.testing.assert_close(outs[0], xs[0] * neck.attentions['0'].weight.view(1, -1, 1, 1))
    assert outs[1] is xs[1]
    torch.testing.assert_close(outs[2], xs[2] * neck.attentions['2'].weight.view(1, -1, 1, 1))
    with pytest.raises(ValueError, match=r'expects 3 feature levels with channels \[4, 8, 16\]'):
        neck(xs[:2])
    with pytest.raises(ValueError, match=r'levels \[3\] out of range'):
        _build('mmseg', dict(type='AttentionNeck', in_channels=[4, 8, 16], attention=PROBE,
                             levels=[3]))


@pytest.mark.parametrize('scope', ['mmseg', 'mmpose'])
def test_backbone_init_weights_keeps_attention_init(scope):
    """HRNet's own init_cfg (Kaiming convs, constant-1 norms) runs over every submodule; the
    attention modules' paper init must win afterwards (a zero-initialised non-local block is
    the identity, so the plugged backbone equals the plain one with the same weights)."""
    plugged = _tiny_hrnet(scope, plugins=dict(cfg=dict(type='FusedNonLocal2d'),
                                              position='before_add', stages=(3, 4)))
    plugged.init_weights()
    for name in plugged.attention_plugins:
        block = plugged.get_submodule(name)
        assert torch.count_nonzero(block.conv_out.norm.weight) == 0, name
    plain = _tiny_hrnet(scope)
    plain.load_state_dict(plugged.state_dict(), strict=False)
    plain.eval()
    plugged.eval()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(plugged(x), plain(x)):
        torch.testing.assert_close(a, b)


def test_pretrained_backbone_keeps_loaded_attention_weights(tmp_path):
    """With a Pretrained init_cfg the checkpoint's attention weights must survive init."""
    plugged = _tiny_hrnet(plugins=dict(preset='released', cfg=PROBE))
    for name in plugged.attention_plugins:
        plugged.get_submodule(name).weight.data.fill_(3.0)
    path = tmp_path / 'plugged.pth'
    torch.save(dict(state_dict=plugged.state_dict()), path)
    again = _build('mmseg', dict(
        type='AttentionBackbone', backbone_type='HRNet',
        extra=hrnet_extra(8, (1, 1, 1, 1), (1, 1, 1, 1)),
        init_cfg=dict(type='Pretrained', checkpoint=str(path)),
        plugins=dict(preset='released', cfg=PROBE)))
    again.init_weights()
    for name in again.attention_plugins:
        assert torch.all(again.get_submodule(name).weight == 3.0)


def test_short_names_work_in_plugin_and_neck_configs():
    model = _tiny_hrnet(plugins=dict(cfg=dict(type='psa_s'), stages=(4, ), branches=(3, )))
    (path, ) = model.attention_plugins
    attn = model.get_submodule(path)
    assert type(attn).__name__ == 'PolarizedSelfAttention' and attn.mode == 'sequential'
    neck = _build('mmseg', dict(type='AttentionNeck', in_channels=[16, 32],
                                attention=dict(type='se', rd_ratio=1 / 4)))
    assert type(neck.attentions['1']).__name__ == 'SqueezeExcitation'


# mmdet's GCNet configs: ContextBlocks through ResNet's own (mmcv-style) plugins=
GCNET_PLUGINS = [dict(cfg=dict(type='ContextBlock', ratio=1. / 16), stages=(False, True, True, True),
                      position='after_conv3')]
CBAM_PLUGINS = [dict(cfg=dict(type='CBAM'), position='after_conv2', stages=(2, 3, 4))]


def _count_runs(model, cls_name):
    """Modules of class ``cls_name`` in ``model`` and how many of them run in one forward."""
    modules = [m for m in model.modules() if type(m).__name__ == cls_name]
    ran = set()
    handles = [m.register_forward_hook(lambda mod, a, o: ran.add(id(mod))) for m in modules]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    return len(modules), len(ran)


@pytest.mark.parametrize('spelling', ['flat', 'nested'])
def test_backbone_own_plugins_and_attention_plugins_both_run(spelling):
    resnet = dict(type='ResNet', depth=50, plugins=GCNET_PLUGINS)
    if spelling == 'flat':
        cfg = dict(type='AttentionBackbone', backbone_type='ResNet', depth=50,
                   plugins=GCNET_PLUGINS, attention_plugins=CBAM_PLUGINS)
    else:
        cfg = dict(type='AttentionBackbone', backbone=resnet, plugins=CBAM_PLUGINS)
    model = _build('mmdet', cfg)
    assert _count_runs(model, 'ContextBlock') == (13, 13)
    assert _count_runs(model, 'CBAM') == (13, 13)
    assert len(model.attention_plugins) == 13
    # the backbone's keys are those of the GCNet ResNet; only the CBAM keys are new
    plain = _build('mmdet', resnet)
    new = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(model.state_dict())
    assert new and all('.cbam.' in k for k in new)


def test_flat_plugins_on_a_backbone_with_its_own_plugins_is_refused():
    with pytest.raises(ValueError, match=r"ResNet has a plugins= argument of its own.*"
                                         r"attention_plugins="):
        _build('mmdet', dict(type='AttentionBackbone', backbone_type='ResNet', depth=50,
                             plugins=CBAM_PLUGINS))


def test_flat_plugins_on_hrnet_are_mmattn_plugins_and_given_once():
    extra = hrnet_extra(8, (1, 1, 1, 1), (1, 1, 1, 1))
    for key in ('plugins', 'attention_plugins'):
        model = _build('mmseg', {'type': 'AttentionBackbone', 'backbone_type': 'HRNet',
                                 'extra': extra, key: dict(preset='released', cfg=PROBE)})
        assert len(model.attention_plugins) == 9
    with pytest.raises(ValueError, match=r'given twice, as plugins= and attention_plugins='):
        _build('mmseg', dict(type='AttentionBackbone', backbone_type='HRNet', extra=extra,
                             plugins=[], attention_plugins=dict(preset='released', cfg=PROBE)))


def _attention_classes():
    from mmattn.models.layers import attention_class_names
    return attention_class_names()


@pytest.mark.parametrize('cls', _attention_classes())
def test_every_module_as_block_plugin_or_refused_at_build(cls):
    """Every module that keeps (C, H, W) runs as a block plugin; SPDConv (C, H, W) ->
    (2C, H/2, W/2) is refused when the backbone is built, naming the module and the place."""
    from mmseg.models.backbones.resnet import BasicBlock
    block = BasicBlock(16, 16).eval()
    plugin = dict(cfg=dict(type=cls), position='after_conv1')
    if cls == 'SPDConv':
        with pytest.raises(ValueError, match=r"plugin SPDConv at 'after_conv1' of BasicBlock "
                                             r"0 changes the shape of its input \(\(1, 16, 16, "
                                             r"16\) -> \(1, 32, 8, 8\)\)"):
            add_block_plugins(torch.nn.Sequential(block), plugin)
        assert not hasattr(block, 'spd')  # nothing half-inserted
        return
    (path, ) = add_block_plugins(torch.nn.Sequential(block), plugin)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        assert block(x).shape == x.shape


@pytest.mark.parametrize('cls', [c for c in _attention_classes() if c != 'SPDConv'])
def test_class_names_work_in_mmcv_plugins(cls):
    """mmcv's own plugins= (mmdet's ResNet Bottleneck, build_plugin_layer) looks types up by
    registered name: mmattn's class names work there and the module runs inside the block."""
    from mmdet.models.backbones.resnet import Bottleneck
    with DefaultScope.overwrite_default_scope('mmdet'):
        block = Bottleneck(64, 16, plugins=[dict(cfg=dict(type=cls), position='after_conv2')])
    (name, ) = block.after_conv2_plugin_names
    attention = getattr(block, name)
    assert type(attention).__name__ == cls and attention.in_channels == 16
    calls = []
    attention.register_forward_hook(lambda *args: calls.append(1))
    block.eval()
    with torch.no_grad():
        assert block(torch.randn(1, 64, 12, 12)).shape == (1, 64, 12, 12)
    assert calls == [1]


def test_short_names_are_not_found_by_mmcv_plugins():
    """What the README says: short names are mmattn's own vocabulary (build_attention,
    AttentionBackbone, AttentionNeck); mmcv's registry lookup knows only class names."""
    from mmdet.models.backbones.resnet import Bottleneck
    with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(KeyError):
        Bottleneck(64, 16, plugins=[dict(cfg=dict(type='eca'), position='after_conv2')])


def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_attention_norms_train_under_norm_eval():
    """mmdet's ResNet (norm_eval=True, frozen_stages=1) keeps its own BatchNorms in eval mode;
    the attention modules' BatchNorms train (they have no pretrained statistics to keep),
    except in a frozen stage, where the attention module itself is in eval mode."""
    model = _build('mmdet', dict(
        type='AttentionBackbone', backbone_type='ResNet', depth=50, frozen_stages=1,
        attention_plugins=[dict(cfg=dict(type='TripletAttention'), position='after_conv2')]))
    assert model.norm_eval
    model.train()
    attention = {p: model.get_submodule(p) for p in model.attention_plugins}
    inside = {id(m) for a in attention.values() for m in _batch_norms(a)}
    own = [m for m in _batch_norms(model) if id(m) not in inside]
    assert own and not any(m.training for m in own)
    for path, module in attention.items():
        norms = _batch_norms(module)
        assert len(norms) == 3  # Triplet: one per branch
        frozen = path.startswith('layer1.')
        assert all(m.training != frozen for m in norms), path
    # the statistics move in training, for the unfrozen attention modules only
    before = {p: [m.running_mean.clone() for m in _batch_norms(a)] for p, a in attention.items()}
    model(torch.randn(2, 3, 64, 64))
    for path, module in attention.items():
        moved = [not torch.equal(m.running_mean, b)
                 for m, b in zip(_batch_norms(module), before[path])]
        assert all(moved) if not path.startswith('layer1.') else not any(moved), path
    model.eval()
    assert not any(m.training for m in _batch_norms(model))
