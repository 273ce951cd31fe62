"""The environment's stack imports together with mmattn, and mmcv's compiled deformable conv runs
on this machine. (Which versions are allowed is mmattn's declared ranges, checked against the
installed packages in tests/test_install/test_packaging.py; no version is pinned here.)"""
import subprocess
import sys

import torch


def test_stack_imports_in_a_fresh_interpreter():
    code = ('import mmattn, mmseg.models, mmpose.models, mmpose.visualization, mmdet.models; '
            'from mmcv.ops import ModulatedDeformConv2dPack; import mmcv._ext; '
            'import mmcv.ops; print(mmcv.ops.ModulatedDeformConv2dPack.__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ['mmcv.ops.modulated_deform_conv']


def test_modulated_deform_conv_forward_backward_on_cpu():
    from mmcv.ops import ModulatedDeformConv2dPack
    torch.manual_seed(0)
    conv = ModulatedDeformConv2dPack(4, 6, 3, padding=1)
    # non-zero offsets and masks so the deformable sampling itself is exercised
    torch.nn.init.normal_(conv.conv_offset.weight, std=0.1)
    x = torch.randn(2, 4, 7, 5, requires_grad=True)
    y = conv(x)
    assert y.shape == (2, 6, 7, 5)
    y.square().sum().backward()
    for grad in (x.grad, conv.weight.grad, conv.conv_offset.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
