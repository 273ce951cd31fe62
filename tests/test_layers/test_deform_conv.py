"""DeformableConvV2: the plain conv it starts as, deformable sampling checked
against shifted inputs (integer and bilinear offsets), gradients, dtypes/autocast, errors."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.ops import ModulatedDeformConv2dPack
from _torch_support import requires_cpu_float16
from mmengine.model import Sequential

from mmattn.models.layers import DeformableConvV2, DeformableConvV2Entry, build_attention
from mmattn.registry import MODELS

# (constructor kwargs besides in_channels=4) covering stride, dilation, padding, groups,
# deformable groups and non-square kernels
VARIANTS = [
    dict(),
    dict(stride=2),
    dict(dilation=2),
    dict(padding=0),
    dict(kernel_size=1),
    dict(out_channels=6, groups=2),
    dict(deform_groups=2),
    dict(out_channels=6, kernel_size=(3, 5), stride=(2, 1), dilation=(1, 2), groups=2,
         deform_groups=2),
]


def _build(seed=0, **kwargs):
    torch.manual_seed(seed)
    module = DeformableConvV2(4, **kwargs).double()
    with torch.no_grad():
        module.bias.normal_()
    return module


def _input(n=2, c=4, h=7, w=6, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, c, h, w, dtype=torch.float64)


def _set_offsets(module, dy, dx, mask_logit):
    """Make conv_offset output constant: offset (dy, dx) and mask logit per (deformable group,
    kernel point), given as tensors of shape (deform_groups, kh * kw) or scalars. mmcv's layout:
    dy at channel 2 * (g * K + k), dx at 2 * (g * K + k) + 1, mask logit at 2 * G * K + g * K + k.
    """
    kh, kw = module.kernel_size
    g_k = module.deform_groups * kh * kw
    shape = (module.deform_groups, kh * kw)
    dy, dx, mask_logit = (torch.as_tensor(v, dtype=torch.float64).expand(shape).flatten()
                          for v in (dy, dx, mask_logit))
    bias = torch.zeros(3 * g_k, dtype=torch.float64)
    bias[0:2 * g_k:2] = dy
    bias[1:2 * g_k:2] = dx
    bias[2 * g_k:] = mask_logit
    with torch.no_grad():
        module.conv_offset.weight.zero_()
        module.conv_offset.bias.copy_(bias.to(module.conv_offset.bias))


def _shift(t, dy, dx):
    """out[..., a, b] = t[..., a + dy, b + dx], zero where that is outside ``t``."""
    out = torch.zeros_like(t)
    h, w = t.shape[-2:]
    a0, a1 = max(0, -dy), min(h, h - dy)
    b0, b1 = max(0, -dx), min(w, w - dx)
    if a0 < a1 and b0 < b1:
        out[..., a0:a1, b0:b1] = t[..., a0 + dy:a1 + dy, b0 + dx:b1 + dx]
    return out


def _reference(module, x, dy, dx, mask):
    """Deformable conv with offsets constant over positions, written with F.conv2d only.

    Kernel point (i, j) of deformable group g reads the zero-padded input at
    ``p * stride + (i, j) * dilation + (dy, dx)[g, k]``; a fractional offset is the bilinear
    mix of its four integer neighbours (zero outside the map); each read is scaled by
    ``mask[g, k]``. One F.conv2d per (group, kernel point, neighbour), on a shifted input with
    the other channels and kernel points zeroed.
    """
    kh, kw = module.kernel_size
    ph, pw = module.padding
    dg = module.deform_groups
    cpg = x.shape[1] // dg
    dy, dx, mask = (torch.as_tensor(v, dtype=torch.float64).expand(dg, kh * kw)
                    for v in (dy, dx, mask))
    xp = F.pad(x, (pw, pw, ph, ph))
    out = 0
    for g in range(dg):
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                y0, x0 = int(torch.floor(dy[g, k])), int(torch.floor(dx[g, k]))
                fy, fx = float(dy[g, k] - y0), float(dx[g, k] - x0)
                for sy, sx, wgt in [(0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                                    (1, 0, fy * (1 - fx)), (1, 1, fy * fx)]:
                    if wgt == 0:
                        continue
                    xs = torch.zeros_like(xp)
                    xs[:, g * cpg:(g + 1) * cpg] = _shift(xp[:, g * cpg:(g + 1) * cpg],
                                                           y0 + sy, x0 + sx)
                    weight = torch.zeros_like(module.weight)
                    weight[:, :, i, j] = module.weight[:, :, i, j] * mask[g, k] * wgt
                    out = out + F.conv2d(xs, weight, None, module.stride, 0, module.dilation,
                                         module.groups)
    return out + module.bias[None, :, None, None]


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize('kwargs', VARIANTS)
def test_at_init_is_half_weight_conv(kwargs):
    # conv_offset is zero at init: offsets 0 and mask = sigmoid(0) = 0.5 everywhere, so the
    # module is F.conv2d with weights * 0.5 (the bias is not masked)
    module = _build(**kwargs)
    assert module.conv_offset.weight.abs().sum() == 0 and module.conv_offset.bias.abs().sum() == 0
    x = _input()
    ref = F.conv2d(x, 0.5 * module.weight, module.bias, module.stride, module.padding,
                   module.dilation, module.groups)
    y = module(x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs', VARIANTS)
def test_unit_mask_zero_offset_is_plain_conv(kwargs):
    module = _build(**kwargs)
    _set_offsets(module, 0, 0, 50.0)  # sigmoid(50) == 1 in float64
    x = _input()
    ref = F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation,
                   module.groups)
    torch.testing.assert_close(module(x), ref, rtol=1e-12, atol=1e-12)


def test_default_shape_preserving():
    for kwargs in [dict(), dict(dilation=2), dict(kernel_size=5), dict(kernel_size=(1, 3))]:
        module = DeformableConvV2(4, **kwargs)
        assert module(torch.randn(1, 4, 7, 5)).shape == (1, 4, 7, 5)
    assert DeformableConvV2(4, 8, stride=2)(torch.randn(1, 4, 7, 5)).shape == (1, 8, 4, 3)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize('kwargs', VARIANTS)
def test_shift_one_pixel_right_equals_conv_of_shifted_input(kwargs):
    # every sampling point moves +1 in x with mask 1: the conv of the (zero-padded) input
    # shifted one pixel left, zero at the border
    module = _build(**kwargs)
    _set_offsets(module, 0, 1, 50.0)
    x = _input()
    ph, pw = module.padding
    shifted = _shift(F.pad(x, (pw, pw, ph, ph)), 0, 1)
    ref = F.conv2d(shifted, module.weight, module.bias, module.stride, 0, module.dilation,
                   module.groups)
    torch.testing.assert_close(module(x), ref, rtol=1e-12, atol=1e-12)
    # and the offset really moved the samples
    plain = F.conv2d(x, module.weight, module.bias, module.stride, module.padding,
                     module.dilation, module.groups)
    assert (module(x) - plain).abs().max() > 1e-3


@pytest.mark.parametrize('kwargs', VARIANTS)
def test_per_point_integer_offsets_and_masks(kwargs):
    # a different integer (dy, dx) and mask for every deformable group and kernel point:
    # checks mmcv's channel layout (dy/dx interleaved, kernel points row-major, then masks)
    module = _build(**kwargs)
    kh, kw = module.kernel_size
    torch.manual_seed(3)
    shape = (module.deform_groups, kh * kw)
    dy = torch.randint(-2, 3, shape).double()
    dx = torch.randint(-2, 3, shape).double()
    logits = torch.randn(shape, dtype=torch.float64)
    _set_offsets(module, dy, dx, logits)
    x = _input()
    ref = _reference(module, x, dy, dx, torch.sigmoid(logits))
    torch.testing.assert_close(module(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kwargs', [dict(), dict(stride=2, dilation=2), dict(deform_groups=2)])
def test_half_pixel_offset_is_average_of_neighbouring_shifts(kwargs):
    module = _build(**kwargs)
    x = _input()
    outs = {}
    for dx in (0.0, 0.5, 1.0):
        _set_offsets(module, 0, dx, 50.0)
        outs[dx] = module(x)
    torch.testing.assert_close(outs[0.5], 0.5 * (outs[0.0] + outs[1.0]), rtol=1e-12, atol=1e-12)
    for dy in (-1.0, -0.5, 0.0):
        _set_offsets(module, dy, 0, 50.0)
        outs[dy, 'y'] = module(x)
    torch.testing.assert_close(outs[-0.5, 'y'], 0.5 * (outs[-1.0, 'y'] + outs[0.0, 'y']),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs', VARIANTS[:3] + VARIANTS[-1:])
def test_fractional_per_point_offsets_are_bilinear(kwargs):
    module = _build(**kwargs)
    kh, kw = module.kernel_size
    torch.manual_seed(4)
    shape = (module.deform_groups, kh * kw)
    dy = torch.rand(shape, dtype=torch.float64) * 5 - 2.5
    dx = torch.rand(shape, dtype=torch.float64) * 5 - 2.5
    logits = torch.randn(shape, dtype=torch.float64)
    _set_offsets(module, dy, dx, logits)
    x = _input()
    torch.testing.assert_close(module(x), _reference(module, x, dy, dx, torch.sigmoid(logits)),
                               rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- gradients
def test_forward_backward_at_init_matches_conv_gradients():
    module = _build(deform_groups=2)
    x = _input().requires_grad_()
    module(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = module.weight.detach().clone().requires_grad_()
    b_ref = module.bias.detach().clone().requires_grad_()
    F.conv2d(x_ref, 0.5 * w_ref, b_ref, 1, 1).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module.bias.grad, b_ref.grad, rtol=1e-10, atol=1e-10)
    # the offset/mask conv learns from the first step (zero init does not block its gradient)
    assert module.conv_offset.weight.grad.abs().sum() > 0
    assert module.conv_offset.bias.grad.abs().sum() > 0


def test_gradcheck_float64():
    # every input, offset, mask, weight and bias gradient of mmcv's float64 CPU kernel against
    # finite differences (fast_mode: random projections, a handful of evaluations)
    torch.manual_seed(0)
    module = DeformableConvV2(4, stride=2, groups=2, deform_groups=2).double()
    with torch.no_grad():
        module.bias.normal_()
        module.conv_offset.weight.normal_(std=0.1)
        module.conv_offset.bias.uniform_(-1.5, 1.5)  # fractional offsets, masks not 0.5
    x = _input(n=1, h=5, w=4).requires_grad_()
    assert torch.autograd.gradcheck(module, (x, ), eps=1e-6, atol=1e-6, fast_mode=True)
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())

    def by_params(*ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (x.detach(), ))

    assert torch.autograd.gradcheck(by_params, params, eps=1e-6, atol=1e-6, fast_mode=True)


# ----------------------------------------------------------------------------- dtypes, layout
def test_float64_is_native_and_matches_float32():
    module = _build(deform_groups=2)
    _set_offsets(module, torch.tensor([[0.3] * 9, [-1.2] * 9]), 0.7, 1.0)
    x = _input()
    y64 = module(x)
    assert y64.dtype == torch.float64
    y32 = module.float()(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), rtol=1e-4, atol=1e-4)


def test_channels_last_with_offsets_matches_contiguous():
    module = _build(deform_groups=2)
    with torch.no_grad():
        module.conv_offset.weight.normal_(std=0.2)
        module.conv_offset.bias.normal_()
    x = _input()
    y = module(x)
    torch.testing.assert_close(module(x.contiguous(memory_format=torch.channels_last)), y,
                               rtol=0, atol=0)
    torch.testing.assert_close(module(x.transpose(2, 3).contiguous().transpose(2, 3)), y,
                               rtol=0, atol=0)


def test_autocast_bfloat16_runs_in_float32():
    module = _build().float().train()
    with torch.no_grad():
        module.conv_offset.weight.normal_(std=0.2)
        module.conv_offset.bias.normal_()
    x = _input().float().requires_grad_()
    ref = module(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(module.conv_offset.weight.grad).all()


@requires_cpu_float16
def test_bfloat16_and_float16_inputs_without_autocast():
    module = _build().float()
    x = _input().float()
    ref = module(x)
    y_bf16 = module.to(torch.bfloat16)(x.to(torch.bfloat16))  # mmcv has no bf16 kernel
    assert y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf16.float(), ref, rtol=0.05, atol=0.05)
    y_half = module.half()(x.half())  # mmcv's kernels dispatch float16 natively, CPU included
    assert y_half.dtype == torch.float16
    torch.testing.assert_close(y_half.float(), ref, rtol=0.01, atol=0.01)


# ----------------------------------------------------------------------------- errors, init
@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(groups=3), ValueError, 'in_channels=4 must be divisible by groups=3'),
    (dict(out_channels=6, groups=4), ValueError, 'out_channels=6 must be divisible by groups=4'),
    (dict(deform_groups=3), ValueError, 'in_channels=4 must be divisible by deform_groups=3'),
    (dict(kernel_size=2), ValueError, 'kernel_size must be odd when padding is None'),
    (dict(kernel_size=(3, 3, 3)), ValueError, 'kernel_size must be an int or a pair'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be >= 1'),
    (dict(stride=0), ValueError, 'stride must be >= 1'),
    (dict(padding=-1), ValueError, 'padding must be >= 0'),
    (dict(dilation=1.5), TypeError, 'dilation must be an int'),
    (dict(groups=0), ValueError, 'groups must be >= 1'),
    (dict(deform_groups=True), TypeError, 'deform_groups must be an int'),
    (dict(bias='auto'), TypeError, 'bias must be a bool'),
    (dict(out_channels=0), ValueError, 'out_channels must be >= 1'),
])
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match='DeformableConvV2: ' + match):
        DeformableConvV2(4, **kwargs)


def test_even_kernel_with_explicit_padding_is_allowed():
    module = DeformableConvV2(4, kernel_size=2, padding=0)
    assert module(torch.randn(1, 4, 5, 6)).shape == (1, 4, 4, 5)


def test_bad_inputs_name_the_module():
    module = DeformableConvV2(4)
    with pytest.raises(ValueError, match='DeformableConvV2 was built for in_channels=4'):
        module(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match='DeformableConvV2 expects a 4-D input'):
        module(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match='DeformableConvV2 needs a feature map of at least 3x5'):
        DeformableConvV2(4, kernel_size=(3, 5), padding=0)(torch.randn(1, 4, 4, 4))


def test_registry_keeps_mmcv_dcnv2_and_loads_its_weights():
    assert MODELS.get('DCNv2') is ModulatedDeformConv2dPack
    # the registry holds a light entry that imports mmcv's ops only when a module is built
    assert MODELS.get('DeformableConvV2') is DeformableConvV2Entry
    assert isinstance(build_attention('dcnv2', 4), DeformableConvV2)
    torch.manual_seed(0)
    mmcv_module = MODELS.build(dict(type='DCNv2', in_channels=4, out_channels=4, kernel_size=3,
                                    padding=1, deform_groups=2)).double()
    with torch.no_grad():
        for p in mmcv_module.parameters():
            p.normal_(std=0.3)
    ours = DeformableConvV2(4, deform_groups=2).double()
    ours.load_state_dict(mmcv_module.state_dict())
    x = _input()
    torch.testing.assert_close(ours(x), mmcv_module(x), rtol=1e-12, atol=1e-12)


def test_init_cfg_keeps_offset_conv_zero_unless_pretrained(tmp_path):
    module = DeformableConvV2(
        4, init_cfg=dict(type='Constant', val=0.25, bias=0.1,
                         layer=['DeformableConvV2', 'Conv2d']))
    assert torch.all(module.weight == 0.25) and torch.all(module.bias == 0.1)
    assert module.conv_offset.weight.abs().sum() == 0 and module.conv_offset.bias.abs().sum() == 0
    # a parent's init_cfg that covers every Conv2d does not leave conv_offset non-zero
    parent = Sequential(DeformableConvV2(4), DeformableConvV2(4, init_cfg=dict(
        type='Constant', val=0.25, layer='DeformableConvV2')),
        init_cfg=dict(type='Normal', std=0.5, layer='Conv2d'))
    parent.init_weights()
    for child in parent:
        assert child.conv_offset.weight.abs().sum() == 0
    assert torch.all(parent[1].weight == 0.25)
    # a checkpoint's trained offsets are kept
    trained = DeformableConvV2(4)
    with torch.no_grad():
        trained.conv_offset.weight.normal_()
    path = tmp_path / 'dcn.pth'
    torch.save(trained.state_dict(), path)
    loaded = DeformableConvV2(4, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    torch.testing.assert_close(loaded.conv_offset.weight, trained.conv_offset.weight)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_cpu_known_offsets():
    module = _build(out_channels=6, groups=2, deform_groups=2, stride=2).float()
    kh, kw = module.kernel_size
    torch.manual_seed(3)
    shape = (2, kh * kw)
    dy = torch.rand(shape, dtype=torch.float64) * 4 - 2
    dx = torch.randint(-2, 3, shape).double()
    _set_offsets(module, dy, dx, torch.randn(shape, dtype=torch.float64))
    x = _input().float()
    cpu = module(x)
    # the +1 pixel shift and the per-point offsets give the same result on the GPU
    gpu_module = module.to('cuda')
    gpu = gpu_module(x.to('cuda'))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    _set_offsets(gpu_module, 0, 1, 50.0)
    cpu_shift = module.cpu()(x)
    gpu_shift = module.to('cuda')(x.to('cuda'))
    torch.testing.assert_close(gpu_shift.cpu(), cpu_shift, rtol=1e-4, atol=1e-4)
    with torch.autocast('cuda', dtype=torch.float16):
        y = module(x.to('cuda'))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(y.cpu(), cpu_shift, rtol=1e-4, atol=1e-4)
