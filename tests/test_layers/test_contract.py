"""The contract every attention module of the zoo keeps.

Per-module numerical proofs live in the family's own test file; this file checks what all of
them share, parametrised over ``list_attention()`` so a new module is covered on arrival.
"""
import pathlib
import re

import pytest
import torch

import mmattn
from mmattn.models.layers import (attention_class_names, build_attention, list_attention,
                                  resolve_attention)
from mmattn.registry import MODELS
from mmattn.testing import randomise

# Small settings for each short name: channels, constructor kwargs, an odd non-square size the
# method allows, and the output shape as a function of the input shape.
CASES = {
    'psa_p': dict(c=16, hw=(9, 7)),
    'psa_s': dict(c=16, hw=(9, 7)),
    'se': dict(c=32, hw=(5, 7)),
    'eca': dict(c=16, hw=(5, 7)),
    'cbam': dict(c=32, hw=(9, 11)),
    'nonlocal': dict(c=16, hw=(5, 7)),
    'danet_pam': dict(c=16, hw=(5, 7)),
    'danet_cam': dict(c=8, hw=(5, 7)),
    'danet': dict(c=16, hw=(5, 7)),
    'gc': dict(c=32, hw=(5, 7)),
    'triplet': dict(c=8, hw=(9, 11)),
    'coord': dict(c=16, hw=(5, 7)),
    'acmix': dict(c=16, hw=(9, 11)),
    'dat': dict(c=16, hw=(12, 10)),
    'spd': dict(c=8, hw=(8, 6), kwargs=dict(out_channels=12),
                out=lambda n, c, h, w: (n, 12, h // 2, w // 2)),
    'dcnv2': dict(c=8, hw=(7, 5)),
}
# Modules torch.export cannot capture, with the reason (also listed in the README).
EXPORT_XFAIL = {
    'dcnv2': 'mmcv.ops ModulatedDeformConv2d is an autograd.Function over a C++ extension '
             'without a registered fake/meta kernel',
}


def _case(name):
    case = CASES[name]
    return case['c'], case.get('kwargs', {}), case['hw'], case.get('out', lambda *s: s)


def _build(name, dtype=torch.float32):
    c, kwargs, _, _ = _case(name)
    torch.manual_seed(0)
    return build_attention(name, c, **kwargs).to(dtype)


def _input(name, n=2, dtype=torch.float32):
    c, _, (h, w), _ = _case(name)
    torch.manual_seed(1)
    return torch.randn(n, c, h, w, dtype=dtype)


def _randomise(module):
    """Perturb the constant initial parameters (residual gammas, zero last convs) so the checks
    below exercise the whole computation, not an identity."""
    return randomise(module, seed=2, scale=0.1, only_constant=True)


def test_every_short_name_has_a_case():
    assert sorted(CASES) == sorted(list_attention())


def test_every_registered_layer_has_a_short_name():
    """Each class that mmattn.models.layers registers is reachable by a short name (and so by
    this file's checks); a new module registered without one fails here."""
    registered = {name for name, cls in MODELS.module_dict.items()
                  if cls.__module__.startswith('mmattn.models.layers.')}
    assert registered == set(attention_class_names())


@pytest.mark.parametrize('name', list_attention())
def test_registered_and_built_from_class_name(name):
    module = _build(name)
    cls_name = type(module).__name__
    c, kwargs, _, _ = _case(name)
    _, implied = resolve_attention(name)
    # the registry builds the class under its own name (DeformableConvV2's entry imports
    # mmcv's ops on first build, so MODELS holds a small entry class for it)
    built = MODELS.build(dict(type=cls_name, in_channels=c, **implied, **kwargs))
    assert type(built) is type(module)
    # the class name works in the factory with the defaults the short name implies
    again = build_attention(cls_name, c, **implied, **kwargs)
    assert type(again) is type(module)


@pytest.mark.parametrize('name', list_attention())
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('n', [1, 2])
def test_shape_dtype_batch(name, dtype, n):
    module = _randomise(_build(name, dtype)).eval()
    x = _input(name, n, dtype)
    y = module(x)
    assert y.dtype == dtype
    assert tuple(y.shape) == _case(name)[3](*x.shape)
    assert torch.isfinite(y).all()


def _non_contiguous_views(x):
    """The values of ``x`` in three non-contiguous layouts a backbone hands over: a crop of a
    wider map (and of more channels), a transposed map, channels_last."""
    n, c, h, w = x.shape
    big = torch.zeros(n, c + 3, h, w + 5, dtype=x.dtype)
    big[:, 1:c + 1, :, 2:w + 2] = x
    cropped = big[:, 1:c + 1, :, 2:w + 2]
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    return dict(cropped=cropped, transposed=transposed, channels_last=channels_last)


@pytest.mark.parametrize('layout', ['cropped', 'transposed', 'channels_last'])
@pytest.mark.parametrize('name', list_attention())
def test_non_contiguous_input_matches_contiguous(name, layout):
    module = _randomise(_build(name, torch.float64)).eval()
    x = _input(name, 2, torch.float64)
    view = _non_contiguous_views(x)[layout]
    assert torch.equal(view, x)
    if layout != 'channels_last':
        assert not view.is_contiguous() and \
            not view.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(module(view), module(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', list_attention())
def test_autocast_bfloat16_cpu_finite(name):
    module = _randomise(_build(name)).train()
    x = _input(name, 2).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = module(x)
    assert torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    # still close to float32 at bfloat16's precision
    with torch.no_grad():
        ref = module.eval()(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = module(x).float()
    assert (low - ref).abs().max() <= 0.1 * ref.abs().max() + 0.1


@pytest.mark.parametrize('name', list_attention())
def test_wrong_channels_and_rank_name_the_module(name):
    module = _build(name)
    cls_name = type(module).__name__
    x = _input(name)
    with pytest.raises(ValueError, match=re.escape(cls_name)):
        module(torch.cat([x, x], dim=1))
    with pytest.raises(ValueError, match=re.escape(cls_name)):
        module(x[0])


@pytest.mark.parametrize('name', list_attention())
def test_export_matches_eager(name):
    if name in EXPORT_XFAIL:
        pytest.xfail(EXPORT_XFAIL[name])
    module = _randomise(_build(name)).eval()
    x = _input(name)
    exported = torch.export.export(module, (x, ))
    torch.testing.assert_close(exported.module()(x), module(x), rtol=1e-5, atol=1e-5)


# mmattn subclasses of mmcv bricks, as mmcv plugins of mmdet's ResNet Bottleneck: (ours,
# mmcv's) configs that compute the same function
MMCV_PLUGIN_PAIRS = [
    (dict(type='GlobalContextBlock'), dict(type='ContextBlock', ratio=1 / 16)),
    (dict(type='FusedNonLocal2d', norm_cfg=None, use_scale=True), dict(type='NonLocal2d')),
]


@pytest.mark.parametrize('ours,theirs', MMCV_PLUGIN_PAIRS, ids=['gc', 'nonlocal'])
def test_mmcv_plugin_checkpoints_load(ours, theirs):
    """A Bottleneck with mmcv's brick as its plugin (mmdet's GCNet / Non-local configs) and
    the same Bottleneck with mmattn's class: the same state dict keys (plugin names come from
    ``_abbr_``), so the checkpoint loads strictly, and the same output."""
    from mmdet.models.backbones.resnet import Bottleneck

    def block(cfg):
        torch.manual_seed(0)
        return Bottleneck(64, 16, plugins=[dict(cfg=cfg, position='after_conv3')])

    mmcv_block, our_block = block(theirs), block(ours)
    randomise(mmcv_block, scale=0.2).double().eval()
    our_block.double().eval().load_state_dict(mmcv_block.state_dict(), strict=True)
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(our_block(x), mmcv_block(x), rtol=1e-10, atol=1e-10)


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match=r"did you mean .*'psa_p'"):
        build_attention('psa_q', 16)
    with pytest.raises(KeyError, match='Available short names: psa_p, psa_s'):
        build_attention('nothing_like_it', 16)


def test_class_names_are_unambiguous():
    """No mmattn class name is also registered, for another class, by mmseg, mmdet or mmpose
    (in whose scope a config's ``type`` would then build theirs)."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmpose.registry import MODELS as MMPOSE_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    from mmdet.utils import register_all_modules as register_mmdet
    from mmpose.utils import register_all_modules as register_mmpose
    from mmseg.utils import register_all_modules as register_mmseg
    for register in (register_mmdet, register_mmpose, register_mmseg):
        register(init_default_scope=False)
    for registry in (MMDET_MODELS, MMPOSE_MODELS, MMSEG_MODELS):
        assert len(registry.module_dict) > 20  # the downstream modules are registered
        for cls_name in attention_class_names():
            theirs = registry.module_dict.get(cls_name)
            assert theirs is None or theirs is MODELS.get(cls_name), (registry.scope, cls_name)


# mmattn's reduction ratio under its deprecated names: (short name, old kwargs, rd_ratio)
OLD_REDUCTION_NAMES = [
    ('se', dict(ratio=4), 1 / 4), ('cbam', dict(ratio=8), 1 / 8), ('gc', dict(ratio=1 / 8), 1 / 8),
    ('nonlocal', dict(reduction=4), 1 / 4), ('danet_pam', dict(reduction=4), 1 / 4),
    ('danet', dict(reduction=4), 1 / 4), ('coord', dict(reduction=4), 1 / 4),
]


@pytest.mark.parametrize('name,old,rd_ratio', OLD_REDUCTION_NAMES,
                         ids=[case[0] for case in OLD_REDUCTION_NAMES])
def test_deprecated_reduction_names_build_the_same_module(name, old, rd_ratio):
    """``ratio``/``reduction`` still work with a DeprecationWarning naming ``rd_ratio``, give the
    same layer widths (so state dicts saved with them load strictly) and the same output."""
    c = 32
    new = randomise(build_attention(name, c, rd_ratio=rd_ratio), scale=0.3).eval()
    (key, value), = old.items()
    with pytest.warns(DeprecationWarning, match=f'{key}={value!r} is deprecated, use rd_ratio'):
        legacy = build_attention(name, c, **old).eval()
    assert legacy.rd_ratio == pytest.approx(rd_ratio)
    legacy.load_state_dict(new.state_dict(), strict=True)
    x = torch.randn(2, c, 5, 6)
    torch.testing.assert_close(legacy(x), new(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match='rd_ratio'):
        build_attention(name, c, rd_ratio=rd_ratio, **old)


def test_no_fixed_device_in_forward_code():
    src_dir = pathlib.Path(mmattn.__file__).parent / 'models'
    for path in src_dir.rglob('*.py'):
        text = path.read_text()
        assert '.cuda()' not in text, f'{path} calls .cuda()'
        assert not re.search(r"device\s*=\s*['\"]cuda", text), f'{path} fixes a device'
