"""The released PSA Cityscapes checkpoints (NVIDIA semantic-segmentation format) convert into
HierarchicalMultiScaleSegmentor checkpoints that compute what the released model computes.

The released layout is written here from the public code (DeLightCMU/PSA
``semantic-segmentation/network/hrnetv2.py`` + ``PSA.py``; NVIDIA/semantic-segmentation
``network/ocrnet.py``, ``ocr_utils.py``, ``utils.py``, ``mynn.py``) for a small HRNet, filled
with random weights, converted, loaded strictly, and the model's outputs compared with a plain
torch forward of the *released* state dict written from the papers' equations and that code
(HRNet, PSA, OCR, scale attention, hierarchical fusion) - no mmseg or mmattn module involved.
"""
import argparse
import importlib.util
import math
import os.path as osp
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

import mmattn  # noqa: F401
import mmattn.models.segmentors  # noqa: F401  (the mmseg-only parts the configs import)
from mmattn.convert import official_psa
from mmattn.convert.official_psa import (ConversionError, build_model, check_against_model,
                                         convert_state_dict, detect_variant,
                                         load_released_state_dict)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
NUM_CLASSES, MID, KEY, BOT = 5, 16, 8, 8
# small HRNet: stage widths 8/16/32/64 (divisible by 8 for PSA_s), stage 4 with two modules and
# two blocks in its first branch so module and block indices are exercised
TINY = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ),
                num_channels=(8, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1),
                num_channels=(8, 16)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1),
                num_channels=(8, 16, 32)),
    stage4=dict(num_modules=2, num_branches=4, block='BASIC', num_blocks=(2, 1, 1, 1),
                num_channels=(8, 16, 32, 64)))
W48 = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4, ),
                num_channels=(64, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4),
                num_channels=(48, 96)),
    stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4),
                num_channels=(48, 96, 192)),
    stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                num_channels=(48, 96, 192, 384)))
MODES = {'PSA_p': 'parallel', 'PSA_s': 'sequential'}
N_BLOCKS = 2 + 3 + 2 * 5  # BasicBlocks of TINY stages 2-4, each with a PSA 'deattn'


def cli_main(argv):
    """``main`` of tools/convert/official_psa_to_mmattn.py, loaded from its file."""
    path = osp.join(REPO, 'tools', 'convert', 'official_psa_to_mmattn.py')
    spec = importlib.util.spec_from_file_location('_official_psa_to_mmattn', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


# --------------------------------------------------------------------------- released layout
def _bn(out, p, c):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        out[p + name] = (c, )
    out[p + 'num_batches_tracked'] = ()


def _psa(out, p, c, variant):
    out[p + 'conv_q_right.weight'] = (1, c, 1, 1)
    out[p + 'conv_v_right.weight'] = (c // 2, c, 1, 1)
    if variant == 'PSA_p':
        out[p + 'conv_up.weight'] = (c, c // 2, 1, 1)
    else:  # Sequential(Conv(bias), LayerNorm([C/8, 1, 1]), ReLU, Conv(bias))
        out[p + 'conv_up.0.weight'] = (c // 8, c // 2, 1, 1)
        out[p + 'conv_up.0.bias'] = (c // 8, )
        out[p + 'conv_up.1.weight'] = (c // 8, 1, 1)
        out[p + 'conv_up.1.bias'] = (c // 8, 1, 1)
        out[p + 'conv_up.3.weight'] = (c, c // 8, 1, 1)
        out[p + 'conv_up.3.bias'] = (c, )
    out[p + 'conv_q_left.weight'] = (c // 2, c, 1, 1)
    out[p + 'conv_v_left.weight'] = (c // 2, c, 1, 1)


def released_layout(extra, variant, num_classes=NUM_CLASSES, mid=MID, key=KEY, bot=BOT):
    """key -> shape of ``MscaleOCR`` with the PSA HRNetV2 trunk (without ``module.``)."""
    out = OrderedDict()
    p = 'backbone.'
    out[p + 'conv1.weight'] = (64, 3, 3, 3)
    _bn(out, p + 'bn1.', 64)
    out[p + 'conv2.weight'] = (64, 64, 3, 3)
    _bn(out, p + 'bn2.', 64)
    planes, inp = extra['stage1']['num_channels'][0], 64
    for k in range(extra['stage1']['num_blocks'][0]):
        q = f'{p}layer1.{k}.'
        out[q + 'conv1.weight'] = (planes, inp, 1, 1)
        _bn(out, q + 'bn1.', planes)
        out[q + 'conv2.weight'] = (planes, planes, 3, 3)
        _bn(out, q + 'bn2.', planes)
        out[q + 'conv3.weight'] = (planes * 4, planes, 1, 1)
        _bn(out, q + 'bn3.', planes * 4)
        if k == 0 and inp != planes * 4:
            out[q + 'downsample.0.weight'] = (planes * 4, inp, 1, 1)
            _bn(out, q + 'downsample.1.', planes * 4)
        inp = planes * 4
    pre = [inp]
    for s in (2, 3, 4):
        cfg = extra[f'stage{s}']
        cur = list(cfg['num_channels'])
        t = f'{p}transition{s - 1}.'
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    out[f'{t}{i}.0.weight'] = (c, pre[i], 3, 3)
                    _bn(out, f'{t}{i}.1.', c)
            else:
                for j in range(i + 1 - len(pre)):
                    cin = pre[-1]
                    cout = c if j == i - len(pre) else cin
                    out[f'{t}{i}.{j}.0.weight'] = (cout, cin, 3, 3)
                    _bn(out, f'{t}{i}.{j}.1.', cout)
        for m in range(cfg['num_modules']):
            q = f'{p}stage{s}.{m}.'
            for b, c in enumerate(cur):
                for k in range(cfg['num_blocks'][b]):
                    r = f'{q}branches.{b}.{k}.'
                    out[r + 'conv1.weight'] = (c, c, 3, 3)
                    _bn(out, r + 'bn1.', c)
                    _psa(out, r + 'deattn.', c, variant)
                    out[r + 'conv2.weight'] = (c, c, 3, 3)
                    _bn(out, r + 'bn2.', c)
            for i in range(len(cur)):
                for j in range(len(cur)):
                    f = f'{q}fuse_layers.{i}.{j}.'
                    if j > i:
                        out[f + '0.weight'] = (cur[i], cur[j], 1, 1)
                        _bn(out, f + '1.', cur[i])
                    elif j < i:
                        for k in range(i - j):
                            cout = cur[i] if k == i - j - 1 else cur[j]
                            out[f'{f}{k}.0.weight'] = (cout, cur[j], 3, 3)
                            _bn(out, f'{f}{k}.1.', cout)
        pre = cur
    high = sum(pre)
    o = 'ocr.'
    out[o + 'conv3x3_ocr.0.weight'] = (mid, high, 3, 3)
    out[o + 'conv3x3_ocr.0.bias'] = (mid, )
    _bn(out, o + 'conv3x3_ocr.1.0.', mid)  # BNReLU = Sequential(BN, ReLU)
    d = o + 'ocr_distri_head.object_context_block.'
    for name in ('f_pixel', 'f_object'):
        out[f'{d}{name}.0.weight'] = (key, mid, 1, 1)
        _bn(out, f'{d}{name}.1.0.', key)
        out[f'{d}{name}.2.weight'] = (key, key, 1, 1)
        _bn(out, f'{d}{name}.3.0.', key)
    out[d + 'f_down.0.weight'] = (key, mid, 1, 1)
    _bn(out, d + 'f_down.1.0.', key)
    out[d + 'f_up.0.weight'] = (mid, key, 1, 1)
    _bn(out, d + 'f_up.1.0.', mid)
    out[o + 'ocr_distri_head.conv_bn_dropout.0.weight'] = (mid, 2 * mid, 1, 1)
    _bn(out, o + 'ocr_distri_head.conv_bn_dropout.1.0.', mid)
    out[o + 'cls_head.weight'] = (num_classes, mid, 1, 1)
    out[o + 'cls_head.bias'] = (num_classes, )
    out[o + 'aux_head.0.weight'] = (high, high, 1, 1)
    out[o + 'aux_head.0.bias'] = (high, )
    _bn(out, o + 'aux_head.1.0.', high)
    out[o + 'aux_head.2.weight'] = (num_classes, high, 1, 1)
    out[o + 'aux_head.2.bias'] = (num_classes, )
    a = 'scale_attn.'
    out[a + 'conv0.weight'] = (bot, mid, 3, 3)
    _bn(out, a + 'bn0.', bot)
    out[a + 'conv1.weight'] = (bot, bot, 3, 3)
    _bn(out, a + 'bn1.', bot)
    out[a + 'conv2.weight'] = (1, bot, 1, 1)
    return out


def random_released(variant, extra=TINY, seed=0, dtype=torch.float64):
    """Random weights of moderate scale in the released layout (``module.`` prefixed)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in released_layout(extra, variant).items():
        name = key.rsplit('.', 1)[-1]
        if name == 'num_batches_tracked':
            t = torch.tensor(7)
        elif name == 'running_var':
            t = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        elif name in ('running_mean', 'bias'):
            t = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        elif len(shape) == 1 or (len(shape) == 3 and name == 'weight'):  # BN / LayerNorm scale
            t = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        else:  # conv weight, std 1/sqrt(fan_in): activations stay O(1), softmaxes soft
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g, dtype=dtype) / fan_in**0.5
            if key == 'scale_attn.conv2.weight':
                t = 4 * t  # spread the attention over (0, 1)
        out['module.' + key] = t
    return out


# --------------------------------------------------------------------------- reference forward
def _conv(sd, p, x, stride=1):
    w = sd[p + 'weight']
    return F.conv2d(x, w, sd.get(p + 'bias'), stride, w.shape[-1] // 2)


def _bnf(sd, p, x):
    return F.batch_norm(x, sd[p + 'running_mean'], sd[p + 'running_var'], sd[p + 'weight'],
                        sd[p + 'bias'], False, 0.0, 1e-5)


def _psa_ref(sd, p, x, variant):
    """PSA as the released PSA.py computes it."""
    n, c, h, w = x.shape

    def channel(x):
        v = _conv(sd, p + 'conv_v_right.', x).flatten(2)  # N, C/2, HW
        q = torch.softmax(_conv(sd, p + 'conv_q_right.', x).flatten(2), dim=2)  # N, 1, HW
        ctx = (v @ q.transpose(1, 2)).unsqueeze(-1)  # N, C/2, 1, 1
        if variant == 'PSA_p':
            z = _conv(sd, p + 'conv_up.', ctx)
        else:
            z = _conv(sd, p + 'conv_up.0.', ctx)
            z = F.layer_norm(z, z.shape[1:], sd[p + 'conv_up.1.weight'],
                             sd[p + 'conv_up.1.bias'])
            z = _conv(sd, p + 'conv_up.3.', F.relu(z))
        return x * torch.sigmoid(z)

    def spatial(x):
        g = _conv(sd, p + 'conv_q_left.', x).mean(dim=(2, 3)).unsqueeze(1)  # N, 1, C/2
        theta = _conv(sd, p + 'conv_v_left.', x).flatten(2)  # N, C/2, HW
        if variant == 'PSA_p':
            s = torch.softmax(g @ theta, dim=2)
        else:
            s = g @ torch.softmax(theta, dim=2)
        return x * torch.sigmoid(s).view(n, 1, h, w)

    if variant == 'PSA_p':
        return channel(x) + spatial(x)
    return spatial(channel(x))


def _up(x, size):
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def hrnet_ref(sd, x, extra, variant):
    """The PSA repo's HighResolutionNet.forward on the released keys (``backbone.``)."""
    p = 'backbone.'
    x = F.relu(_bnf(sd, p + 'bn1.', _conv(sd, p + 'conv1.', x, 2)))
    x = F.relu(_bnf(sd, p + 'bn2.', _conv(sd, p + 'conv2.', x, 2)))
    for k in range(extra['stage1']['num_blocks'][0]):
        q = f'{p}layer1.{k}.'
        y = F.relu(_bnf(sd, q + 'bn1.', _conv(sd, q + 'conv1.', x)))
        y = F.relu(_bnf(sd, q + 'bn2.', _conv(sd, q + 'conv2.', y)))
        y = _bnf(sd, q + 'bn3.', _conv(sd, q + 'conv3.', y))
        res = _bnf(sd, q + 'downsample.1.', _conv(sd, q + 'downsample.0.', x)) \
            if q + 'downsample.0.weight' in sd else x
        x = F.relu(y + res)
    xs = [x]
    for s in (2, 3, 4):
        cfg = extra[f'stage{s}']
        t = f'{p}transition{s - 1}.'
        new = []
        for i in range(cfg['num_branches']):
            if f'{t}{i}.0.weight' in sd:  # same resolution, channel change
                new.append(F.relu(_bnf(sd, f'{t}{i}.1.', _conv(sd, f'{t}{i}.0.', xs[i]))))
            elif i < len(xs):
                new.append(xs[i])
            else:  # new branch from the last one, 3x3 stride-2 convs
                y, j = xs[-1], 0
                while f'{t}{i}.{j}.0.weight' in sd:
                    y = F.relu(_bnf(sd, f'{t}{i}.{j}.1.', _conv(sd, f'{t}{i}.{j}.0.', y, 2)))
                    j += 1
                new.append(y)
        xs = new
        for m in range(cfg['num_modules']):
            q = f'{p}stage{s}.{m}.'
            for b in range(len(xs)):
                for k in range(cfg['num_blocks'][b]):
                    r = f'{q}branches.{b}.{k}.'
                    y = F.relu(_bnf(sd, r + 'bn1.', _conv(sd, r + 'conv1.', xs[b])))
                    y = _psa_ref(sd, r + 'deattn.', y, variant)
                    y = _bnf(sd, r + 'bn2.', _conv(sd, r + 'conv2.', y))
                    xs[b] = F.relu(y + xs[b])
            fused = []
            for i in range(len(xs)):
                y = 0
                for j in range(len(xs)):
                    f = f'{q}fuse_layers.{i}.{j}.'
                    if j == i:
                        z = xs[j]
                    elif j > i:  # 1x1 conv + BN, one bilinear resize to the target size
                        z = _up(_bnf(sd, f + '1.', _conv(sd, f + '0.', xs[j])), xs[i].shape[2:])
                    else:  # i - j stride-2 3x3 conv + BN, ReLU between them
                        z = xs[j]
                        for k in range(i - j):
                            z = _bnf(sd, f'{f}{k}.1.', _conv(sd, f'{f}{k}.0.', z, 2))
                            if k < i - j - 1:
                                z = F.relu(z)
                    y = y + z
                fused.append(F.relu(y))
            xs = fused
    return xs


def ocr_ref(sd, feats):
    """NVIDIA OCR_block.forward + scale_attn on the released keys: (cls, aux, attn)."""
    o = 'ocr.'
    size = feats[0].shape[2:]
    high = torch.cat([feats[0]] + [_up(f, size) for f in feats[1:]], dim=1)
    aux = F.relu(_bnf(sd, o + 'aux_head.1.0.', _conv(sd, o + 'aux_head.0.', high)))
    aux = _conv(sd, o + 'aux_head.2.', aux)
    f = F.relu(_bnf(sd, o + 'conv3x3_ocr.1.0.', _conv(sd, o + 'conv3x3_ocr.0.', high)))
    n, c, h, w = f.shape
    # SpatialGather: softmax over positions of each class map, class centres (N, C, K, 1)
    probs = torch.softmax(aux.flatten(2), dim=2)
    proxy = (probs @ f.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(3)
    d = o + 'ocr_distri_head.object_context_block.'

    def two(name, x):
        x = F.relu(_bnf(sd, f'{d}{name}.1.0.', _conv(sd, f'{d}{name}.0.', x)))
        return F.relu(_bnf(sd, f'{d}{name}.3.0.', _conv(sd, f'{d}{name}.2.', x)))

    def one(name, x):
        return F.relu(_bnf(sd, f'{d}{name}.1.0.', _conv(sd, f'{d}{name}.0.', x)))

    query = two('f_pixel', f).flatten(2).transpose(1, 2)  # N, HW, key
    key = two('f_object', proxy).flatten(2)  # N, key, K
    value = one('f_down', proxy).flatten(2).transpose(1, 2)  # N, K, key
    sim = torch.softmax(query @ key * KEY**-0.5, dim=-1)
    context = (sim @ value).transpose(1, 2).reshape(n, KEY, h, w)
    context = one('f_up', context)
    cb = o + 'ocr_distri_head.conv_bn_dropout.'
    ocr_feats = F.relu(_bnf(sd, cb + '1.0.', _conv(sd, cb + '0.', torch.cat([context, f], 1))))
    cls = _conv(sd, o + 'cls_head.', ocr_feats)
    a = 'scale_attn.'
    att = F.relu(_bnf(sd, a + 'bn0.', _conv(sd, a + 'conv0.', ocr_feats)))
    att = F.relu(_bnf(sd, a + 'bn1.', _conv(sd, a + 'conv1.', att)))
    attn = torch.sigmoid(_conv(sd, a + 'conv2.', att))
    return cls, aux, attn


def mscale_fwd_ref(sd, x, variant):
    """``MscaleOCR._fwd``: outputs upsampled to the input size."""
    cls, aux, attn = ocr_ref(sd, hrnet_ref(sd, x, TINY, variant))
    size = x.shape[2:]
    return _up(cls, size), _up(aux, size), _up(attn, size)


def resize_x(x, s):
    """NVIDIA mynn.ResizeX."""
    return F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False,
                         recompute_scale_factor=True)


def nscale_ref(sd, x, variant):
    """``nscale_forward`` for scales (0.5, 1.0, 2.0) in closed form:
    ``up(a_.5 p_.5) + (1 - up(a_.5)) * (a_1 p_1 + (1 - a_1) * down(p_2))``."""
    p2, _, _ = mscale_fwd_ref(sd, resize_x(x, 2.0), variant)
    p1, _, a1 = mscale_fwd_ref(sd, resize_x(x, 1.0), variant)
    p05, _, a05 = mscale_fwd_ref(sd, resize_x(x, 0.5), variant)
    size = p1.shape[2:]
    joint = a1 * p1 + (1 - a1) * _up(p2, size)
    return _up(a05 * p05, size) + (1 - _up(a05, size)) * joint


# --------------------------------------------------------------------------- mmseg side
def tiny_config(variant):
    norm = dict(type='BN', requires_grad=True)
    chans = list(TINY['stage4']['num_channels'])
    return dict(
        default_scope='mmseg',
        custom_imports=dict(imports=['mmattn', 'mmattn.models.segmentors'],
                            allow_failed_imports=False),
        model=dict(
            type='HierarchicalMultiScaleSegmentor',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[0., 0., 0.],
                                   std=[1., 1., 1.], pad_val=0, seg_pad_val=255),
            backbone=dict(
                type='AttentionBackbone',
                backbone=dict(type='HRNet', norm_cfg=norm, extra=TINY),
                plugins=[dict(preset='released', cfg=dict(type='PolarizedSelfAttention',
                                                          mode=MODES[variant]))]),
            decode_head=[
                dict(type='FCNHead', in_channels=chans, channels=sum(chans),
                     in_index=(0, 1, 2, 3), input_transform='resize_concat', kernel_size=1,
                     num_convs=1, concat_input=False, dropout_ratio=-1,
                     num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
                dict(type='MscaleOCRHead', in_channels=chans, in_index=(0, 1, 2, 3),
                     input_transform='resize_concat', channels=MID, ocr_channels=KEY,
                     dropout_ratio=0.05, num_classes=NUM_CLASSES, norm_cfg=norm,
                     align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
            ],
            scale_attn_head=dict(type='ScaleAttentionHead', in_channels=MID, channels=BOT,
                                 norm_cfg=norm),
            test_scales=(0.5, 1.0, 2.0),
            train_cfg=dict(),
            test_cfg=dict(mode='whole')))


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """Per variant: (released state dict, model loaded from the converted checkpoint)."""
    root = tmp_path_factory.mktemp('convert')
    result = {}
    for variant in ('PSA_p', 'PSA_s'):
        src, dst = root / f'{variant}.pth', root / f'{variant}_mmattn.pth'
        cfg = root / f'{variant}_cfg.py'
        Config(tiny_config(variant)).dump(str(cfg))
        released = random_released(variant, seed=len(result))
        torch.save(dict(state_dict=released, epoch=1, mean_iu=0.5), src)
        assert cli_main([str(src), str(dst), '--config', str(cfg)]) == 0
        model = build_model(str(cfg)).double().eval()
        ckpt = torch.load(dst, map_location='cpu', weights_only=True)
        assert ckpt['meta']['variant'] == variant
        incompatible = model.load_state_dict(ckpt['state_dict'], strict=True)
        assert not incompatible.missing_keys and not incompatible.unexpected_keys
        sd = {k[len('module.'):]: v for k, v in released.items()}
        result[variant] = (sd, model)
    return result


def _image(h, w, seed=1):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize('variant', ['PSA_p', 'PSA_s'])
def test_backbone_keys_keep_their_role(converted, variant):
    """Each released backbone tensor (PSA included) lands on the mmseg parameter doing the same
    job: the mmseg backbone's four branch outputs equal the released HRNet's, written above
    from the PSA repo's hrnetv2.py, at an input size whose branches are not exact halves."""
    sd, model = converted[variant]
    x = _image(36, 60)
    with torch.no_grad():
        ours = model.extract_feat(x)
        ref = hrnet_ref(sd, x, TINY, variant)
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    assert sum(k.endswith('deattn.conv_q_right.weight') for k in sd) == N_BLOCKS


@pytest.mark.parametrize('variant', ['PSA_p', 'PSA_s'])
def test_single_scale_outputs_equal_released_computation(converted, variant):
    sd, model = converted[variant]
    x = _image(36, 60)
    with torch.no_grad():
        outs = model.forward_scale(x)
        cls, aux, attn = mscale_fwd_ref(sd, x, variant)
        model.test_scales = (1.0, )
        try:
            logits = model.predict(x)[0].seg_logits.data
        finally:
            model.test_scales = (0.5, 1.0, 2.0)
    torch.testing.assert_close(outs['cls'], cls)
    torch.testing.assert_close(outs['aux'], aux)
    torch.testing.assert_close(outs['attn'], attn)
    torch.testing.assert_close(logits, cls[0])
    # the attention is not saturated, so the fusion below weighs both terms
    assert 0.02 < attn.min() and attn.max() < 0.98


@pytest.mark.parametrize('variant', ['PSA_p', 'PSA_s'])
def test_hierarchical_multiscale_equals_released_computation(converted, variant):
    sd, model = converted[variant]
    x = _image(64, 128)
    with torch.no_grad():
        ours = model.predict(x)[0].seg_logits.data
        ref = nscale_ref(sd, x, variant)[0]
        single = mscale_fwd_ref(sd, x, variant)[0][0]
    assert ours.shape == (NUM_CLASSES, 64, 128)
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(ours, single)  # the other scales do contribute


def test_bias_before_bn_is_folded_exactly(converted):
    """The released conv3x3_ocr / aux_head convs carry a bias that mmseg's ConvModule lacks;
    it moves into the BN running mean."""
    sd, model = converted['PSA_p']
    for unit, name in ((model.decode_head[1].bottleneck, 'conv3x3_ocr'),
                       (model.decode_head[0].convs[0], 'aux_head')):
        expected = sd[f'ocr.{name}.1.0.running_mean'] - sd[f'ocr.{name}.0.bias']
        torch.testing.assert_close(unit.bn.running_mean, expected)
        assert unit.conv.bias is None


@pytest.mark.parametrize('variant', ['PSA_p', 'PSA_s'])
def test_variant_detection(variant):
    state = {k[len('module.'):]: v for k, v in random_released(variant).items()}
    assert detect_variant(state) == variant
    _, info = convert_state_dict(state)
    assert info['variant'] == variant
    n_psa = sum('.deattn.' in k for k in state)
    assert info['counts']['psa'] == n_psa == N_BLOCKS * (5 if variant == 'PSA_p' else 10)


def test_variant_detection_rejects_mixed_and_plain():
    p = {k[len('module.'):]: v for k, v in random_released('PSA_p').items()}
    s = {k[len('module.'):]: v for k, v in random_released('PSA_s').items()}
    with pytest.raises(ConversionError, match='both PSA_p'):
        detect_variant({**p, **{k: v for k, v in s.items() if 'conv_up' in k}})
    with pytest.raises(ConversionError, match='no PSA block'):
        detect_variant({k: v for k, v in p.items() if '.deattn.' not in k})


@pytest.mark.parametrize('variant', ['PSA_p', 'PSA_s'])
def test_shipped_w48_configs_take_the_w48_release_layout(variant):
    """Every key and shape of a full-size release (HRNetV2-W48, 19 classes, OCR 512/256,
    attention 256) is what the shipped evaluation config's model has."""
    layout = released_layout(W48, variant, num_classes=19, mid=512, key=256, bot=256)
    state = OrderedDict((k, torch.empty(s, device='meta')) for k, s in layout.items())
    converted_state, info = convert_state_dict(state)
    model = build_model(osp.join(REPO, official_psa.CONFIGS[variant]))
    assert check_against_model(converted_state, model, variant) == []
    assert info['counts']['psa'] == 104 * (5 if variant == 'PSA_p' else 10)


def _run(tmp_path, state, name='ckpt.pth', wrap=True, variant_cfg='PSA_p'):
    cfg = tmp_path / 'cfg.py'
    Config(tiny_config(variant_cfg)).dump(str(cfg))
    src = tmp_path / name
    torch.save(dict(state_dict=state) if wrap else state, src)
    return cli_main([str(src), str(tmp_path / 'out.pth'), '--config', str(cfg)])


def test_cli_prints_variant_counts_and_config(tmp_path, capsys):
    # top-level state dict without the DataParallel prefix is accepted too
    state = {k[len('module.'):]: v for k, v in random_released('PSA_s').items()}
    assert _run(tmp_path, state, wrap=False, variant_cfg='PSA_s') == 0
    out = capsys.readouterr().out
    assert 'variant: PSA_s' in out
    assert f'converted {len(state)} released tensors' in out
    assert 'tools/test.py' in out and 'cfg.py' in out


def test_extra_key_fails_naming_it(tmp_path, capsys):
    state = random_released('PSA_p')
    state['module.ocr.cls_head_extra.weight'] = torch.zeros(1)
    assert _run(tmp_path, state) == 1
    assert 'ocr.cls_head_extra.weight' in capsys.readouterr().err
    # an unknown backbone key passes the mapping but not the model check
    state = random_released('PSA_p')
    state['module.backbone.last_layer.0.weight'] = torch.zeros(1)
    assert _run(tmp_path, state) == 1
    err = capsys.readouterr().err
    assert 'backbone.last_layer.0.weight' in err and 'does not have' in err
    assert not (tmp_path / 'out.pth').exists()


def test_missing_keys_fail_naming_them(tmp_path, capsys):
    state = random_released('PSA_p')
    del state['module.backbone.stage3.0.branches.2.0.deattn.conv_v_left.weight']
    del state['module.scale_attn.bn1.running_var']
    assert _run(tmp_path, state) == 1
    err = capsys.readouterr().err
    assert 'backbone.stage3.0.branches.2.0.deattn.conv_v_left.weight' in err
    assert 'scale_attn_head.convs.1.bn.running_var' in err and 'missing' in err
    state = random_released('PSA_p')
    del state['module.ocr.conv3x3_ocr.0.bias']
    assert _run(tmp_path, state) == 1
    assert 'ocr.conv3x3_ocr.0.bias' in capsys.readouterr().err


def test_wrong_variant_config_fails(tmp_path, capsys):
    assert _run(tmp_path, random_released('PSA_s'), variant_cfg='PSA_p') == 1
    err = capsys.readouterr().err
    assert 'PSA_s checkpoint does not match' in err and 'deattn.conv_up.0.weight' in err


def test_non_checkpoint_files_fail_clearly(tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'this is not a checkpoint\x00\x01')
    with pytest.raises(ConversionError, match='not a PyTorch checkpoint'):
        load_released_state_dict(str(junk))
    with pytest.raises(ConversionError, match='no such file'):
        load_released_state_dict(str(tmp_path / 'absent.pth'))
    listed = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ConversionError, match='not a state dict'):
        load_released_state_dict(str(listed))
    optimizer_only = tmp_path / 'opt.pth'
    torch.save(dict(state_dict=dict(lr=0.1, epoch=3)), optimizer_only)
    with pytest.raises(ConversionError, match='not tensors'):
        load_released_state_dict(str(optimizer_only))


def test_checkpoint_with_pickled_metadata_loads(tmp_path):
    """NVIDIA snapshots carry non-tensor entries next to the weights; a pickled object makes
    torch's weights-only loading refuse, and the loader falls back."""
    path = tmp_path / 'meta.pth'
    state = random_released('PSA_p')
    torch.save(dict(state_dict=state, args=argparse.Namespace(arch='ocrnet.HRNet_Mscale')), path)
    loaded = load_released_state_dict(str(path))
    assert list(loaded) == [k[len('module.'):] for k in state]
