"""Markers for what the installed torch can do on this machine, probed rather than assumed from
a version number. Tests that need a capability the oldest supported torch lacks say so."""
import pytest
import torch


def _cpu_float16_kernels() -> bool:
    """torch 2.1 has no float16 CPU kernels for convolution and batched matmul."""
    try:
        x = torch.ones(1, 1, 3, 3, dtype=torch.float16)
        torch.nn.functional.conv2d(x, torch.ones(1, 1, 1, 1, dtype=torch.float16))
        torch.bmm(x[0], x[0])
    except RuntimeError:
        return False
    return True


requires_cpu_float16 = pytest.mark.skipif(
    not _cpu_float16_kernels(),
    reason='this torch has no float16 CPU kernels for conv2d/bmm (torch < 2.2)')
