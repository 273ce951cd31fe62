"""HierarchicalMultiScaleSegmentor: hierarchical fusion (closed forms), training on a pair of
scales, heads and options. Numerical equality with the released model's computation is in
tests/test_tools/test_convert_official_psa.py."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData

import mmattn  # noqa: F401
from mmattn.models.segmentors import (HierarchicalMultiScaleSegmentor, MscaleOCRHead,
                                     ScaleAttentionHead, hierarchical_fusion,
                                     two_scale_fusion)

NUM_CLASSES = 4
CHANNELS = (8, 16, 32, 64)
EXTRA = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ),
                num_channels=(8, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1),
                num_channels=CHANNELS[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1),
                num_channels=CHANNELS[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=CHANNELS))


def model_cfg(**overrides):
    norm = dict(type='BN', requires_grad=True)
    cfg = dict(
        type='HierarchicalMultiScaleSegmentor',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[120., 115., 105.],
                               std=[58., 57., 57.], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(32, 64)),
        backbone=dict(
            type='AttentionBackbone',
            backbone=dict(type='HRNet', norm_cfg=norm, extra=EXTRA),
            plugins=[dict(preset='released', cfg=dict(type='PolarizedSelfAttention'))]),
        decode_head=[
            dict(type='FCNHead', in_channels=list(CHANNELS), channels=sum(CHANNELS),
                 in_index=(0, 1, 2, 3), input_transform='resize_concat', kernel_size=1,
                 num_convs=1, concat_input=False, dropout_ratio=-1, num_classes=NUM_CLASSES,
                 norm_cfg=norm, align_corners=False,
                 loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
            dict(type='MscaleOCRHead', in_channels=list(CHANNELS), in_index=(0, 1, 2, 3),
                 input_transform='resize_concat', channels=16, ocr_channels=8,
                 dropout_ratio=0.05, num_classes=NUM_CLASSES, norm_cfg=norm,
                 align_corners=False,
                 loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        ],
        scale_attn_head=dict(type='ScaleAttentionHead', in_channels=16, channels=8,
                             norm_cfg=norm),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    cfg.update(overrides)
    return cfg


def build(cfg):
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = build(model_cfg())
    m.init_weights()
    return m.eval()


def _up(x, size):
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- fusion maths
def _preds(scales, base=(8, 12), classes=3):
    return [_rand(2, classes, int(base[0] * s), int(base[1] * s), seed=i)
            for i, s in enumerate(scales)]


@pytest.mark.parametrize('scales', [(0.5, 1.0, 2.0), (1.0, 2.0, 0.25, 0.5)])
def test_constant_attention_one_gives_lowest_scale(scales):
    preds = _preds(scales)
    attns = [torch.ones_like(p[:, :1]) for p in preds]
    target = preds[scales.index(1.0)].shape[2:]
    lowest = preds[scales.index(min(scales))]
    torch.testing.assert_close(hierarchical_fusion(scales, preds, attns), _up(lowest, target))


@pytest.mark.parametrize('scales', [(0.5, 1.0, 2.0), (1.0, 2.0, 0.25, 0.5), (0.5, 1.0)])
def test_constant_attention_zero_gives_highest_scale(scales):
    preds = _preds(scales)
    attns = [torch.zeros_like(p[:, :1]) for p in preds]
    target = preds[scales.index(1.0)].shape[2:]
    highest = preds[scales.index(max(scales))]
    torch.testing.assert_close(hierarchical_fusion(scales, preds, attns), _up(highest, target))


def test_three_scale_fusion_formula():
    """NVIDIA nscale_forward for (0.5, 1.0, 2.0): the 2.0 prediction is downscaled and mixed
    with 1.0 by a_1; the 0.5 prediction is weighted by a_.5 *before* upsampling."""
    scales = (2.0, 0.5, 1.0)  # any order
    p2, p05, p1 = _preds(scales)
    a2, a05, a1 = (torch.sigmoid(_rand(*p[:, :1].shape, seed=9 + i))
                   for i, p in enumerate((p2, p05, p1)))
    size = p1.shape[2:]
    expected = _up(a05 * p05, size) + (1 - _up(a05, size)) * (a1 * p1 + (1 - a1) * _up(p2, size))
    got = hierarchical_fusion(scales, [p2, p05, p1], [a2, a05, a1])
    torch.testing.assert_close(got, expected)
    # the 2.0 attention is never used
    torch.testing.assert_close(hierarchical_fusion(scales, [p2, p05, p1], [a2 * 0, a05, a1]),
                               expected)
    # not the same as upsampling before weighting
    assert not torch.allclose(got, _up(a05, size) * _up(p05, size) + (1 - _up(a05, size)) *
                              (a1 * p1 + (1 - a1) * _up(p2, size)))
    # the two-scale training combination is the (0.5, 1.0) case
    torch.testing.assert_close(two_scale_fusion(p05, a05, p1),
                               hierarchical_fusion((0.5, 1.0), [p05, p1], [a05, a1]))


def test_fusion_rejects_mismatched_lists():
    with pytest.raises(ValueError, match='as many'):
        hierarchical_fusion((0.5, 1.0), _preds((0.5, 1.0)), [])


# --------------------------------------------------------------------------- the segmentor
@pytest.mark.parametrize('value', [1.0, 0.0])
def test_segmentor_constant_attention_closed_form(model, monkeypatch, value):
    x = _rand(1, 3, 64, 96, seed=3)
    with torch.no_grad():
        cls_half = model.forward_scale(_up(x, (32, 48)))['cls']
        cls_double = model.forward_scale(_up(x, (128, 192)))['cls']
        monkeypatch.setattr(model.scale_attn_head, 'forward',
                            lambda feats: torch.full_like(feats[:, :1], value))
        logits = model.predict(x)[0].seg_logits.data
    expected = _up(cls_half, (64, 96)) if value == 1.0 else _up(cls_double, (64, 96))
    torch.testing.assert_close(logits, expected[0])


def test_inference_scales_are_configurable(model):
    x = _rand(1, 3, 32, 64, seed=4)
    with torch.no_grad():
        single = model.forward_scale(x)
        m = copy.copy(model)
        m.test_scales = (1.0, )
        torch.testing.assert_close(m.encode_decode(x, None), single['cls'])
        m.test_scales = (0.5, 1.0)
        half = model.forward_scale(_up(x, (16, 32)))
        torch.testing.assert_close(m.encode_decode(x, None),
                                   two_scale_fusion(half['cls'], half['attn'], single['cls']))
        # tensor mode returns the fused logits at input size
        assert model(x, mode='tensor').shape == (1, NUM_CLASSES, 32, 64)
    assert single['cls'].shape == single['aux'].shape == (1, NUM_CLASSES, 32, 64)
    assert single['attn'].shape == (1, 1, 32, 64)
    assert ((single['attn'] > 0) & (single['attn'] < 1)).all()


def _samples(n, h, w, seed=0):
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        label = torch.randint(0, NUM_CLASSES, (1, h, w), generator=g)
        label[:, :2] = 255  # some ignored pixels
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return samples


def test_loss_is_taken_on_the_two_scale_combination(model):
    """Deterministic (eval mode): the OCR loss is CE of up(a_lo p_lo) + (1 - up(a_lo)) p_hi,
    the auxiliary loss (weight 0.4) CE of the same combination of the auxiliary logits."""
    x = _rand(2, 3, 32, 64, seed=5)
    samples = _samples(2, 32, 64)
    label = torch.cat([s.gt_sem_seg.data for s in samples])
    with torch.no_grad():
        losses = model.loss(x, samples)
        lo = model.forward_scale(_up(x, (16, 32)))
        hi = model.forward_scale(x)
    a = _up(lo['attn'], (32, 64))
    joint = _up(lo['attn'] * lo['cls'], (32, 64)) + (1 - a) * hi['cls']
    joint_aux = _up(lo['attn'] * lo['aux'], (32, 64)) + (1 - a) * hi['aux']

    def ce(logits):  # mmseg CrossEntropyLoss: mean over all pixels, ignored ones count as 0
        return F.cross_entropy(logits, label, ignore_index=255, reduction='none').mean()

    torch.testing.assert_close(losses['decode_1.loss_ce'], ce(joint))
    torch.testing.assert_close(losses['decode_0.loss_ce'], 0.4 * ce(joint_aux))
    assert not any(k.startswith('scale_') for k in losses)


def test_training_step_on_pair_of_scales_gives_finite_losses():
    """A real training step (train mode, BN batch statistics, dropout, the data preprocessor):
    finite losses, and the update reaches the scale attention, PSA and both heads."""
    torch.manual_seed(1)
    model = build(model_cfg(scale_loss_weight=0.05))
    model.init_weights()
    model.train()
    data = dict(inputs=[torch.randint(0, 256, (3, 40, 72), dtype=torch.uint8) for _ in range(2)],
                data_samples=_samples(2, 40, 72, seed=2))
    watched = ('scale_attn_head.conv_attn.weight',
               'backbone.stage2.0.branches.0.0.deattn.conv_up.weight',
               'decode_head.0.conv_seg.weight', 'decode_head.1.conv_seg.weight')
    params = dict(model.named_parameters())
    before = {name: params[name].detach().clone() for name in watched}
    log_vars = model.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    assert {'loss', 'decode_0.loss_ce', 'decode_1.loss_ce', 'scale_lo.loss_ce',
            'scale_hi.loss_ce'} <= set(log_vars)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values())
    for name in watched:
        assert torch.isfinite(params[name]).all() and not torch.equal(params[name],
                                                                      before[name]), name


def test_direct_fuse_upsampling_matches_mmseg_on_power_of_two_sizes():
    """The option only changes HRNet's fusion where branch sizes are not exact halves."""
    torch.manual_seed(2)
    direct = build(model_cfg()).eval()
    mmseg_way = build(model_cfg(direct_fuse_upsample=False)).eval()
    mmseg_way.load_state_dict(direct.state_dict())
    n_up = sum(type(m).__name__ == 'Upsample' for m in mmseg_way.backbone.modules())
    assert n_up == 1 + 3 + 6 and not any(
        type(m).__name__ == 'Upsample' for m in direct.backbone.modules())
    with torch.no_grad():
        even = _rand(1, 3, 64, 64, seed=6)
        for a, b in zip(direct.extract_feat(even), mmseg_way.extract_feat(even)):
            torch.testing.assert_close(a, b)
        odd = _rand(1, 3, 36, 60, seed=7)
        assert not torch.allclose(direct.extract_feat(odd)[0], mmseg_way.extract_feat(odd)[0])


def test_mscale_ocr_head_is_mmseg_ocr_head(model):
    """forward_with_features returns mmseg OCRHead's logits and the features they come from."""
    from mmseg.models.decode_heads import OCRHead
    head = model.decode_head[1]
    assert isinstance(head, MscaleOCRHead) and isinstance(head, OCRHead)
    feats = [_rand(1, c, 8 // 2**i, 16 // 2**i, seed=i) for i, c in enumerate(CHANNELS)]
    prev = _rand(1, NUM_CLASSES, 8, 16, seed=8)
    with torch.no_grad():
        logits, ocr_feats = head.forward_with_features(feats, prev)
        torch.testing.assert_close(logits, OCRHead.forward(head, feats, prev))
        torch.testing.assert_close(logits, head.conv_seg(ocr_feats))
    assert ocr_feats.shape == (1, 16, 8, 16)


def test_scale_attention_head_layout():
    head = ScaleAttentionHead(16, 8).eval()
    assert sorted(k for k in head.state_dict() if not k.endswith('num_batches_tracked')) == \
        sorted([f'convs.{i}.{p}' for i in (0, 1) for p in
                ('conv.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var')] +
               ['conv_attn.weight'])
    x = _rand(2, 16, 5, 7)
    with torch.no_grad():
        h = x
        for unit in head.convs:
            h = F.relu(F.batch_norm(F.conv2d(h, unit.conv.weight, None, 1, 1),
                                    unit.bn.running_mean, unit.bn.running_var, unit.bn.weight,
                                    unit.bn.bias, False, 0., unit.bn.eps))
        torch.testing.assert_close(head(x), torch.sigmoid(F.conv2d(h, head.conv_attn.weight)))


@pytest.mark.parametrize('overrides, error, match', [
    (dict(test_scales=(0.5, 2.0)), ValueError, 'including 1.0'),
    (dict(train_scales=(1.0, 0.5)), ValueError, 'lower, higher'),
    (dict(num_stages=3), ValueError, 'num_stages'),
])
def test_invalid_settings_fail_clearly(overrides, error, match):
    with pytest.raises(error, match=match):
        build(model_cfg(**overrides))


def test_last_head_must_hand_out_features():
    cfg = model_cfg()
    cfg['decode_head'][1]['type'] = 'OCRHead'
    with pytest.raises(TypeError, match='forward_with_features'):
        build(cfg)
    assert issubclass(HierarchicalMultiScaleSegmentor,
                      __import__('mmseg').models.segmentors.CascadeEncoderDecoder)
