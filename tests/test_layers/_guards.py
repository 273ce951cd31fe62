"""Test helpers shared by the attention tests: a guard against large intermediate tensors, and
random weights for modules whose init would hide branches (zero or constant parameters)."""
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class NoLargeTensors(TorchDispatchMode):
    """Raise as soon as any aten op, forward or backward, returns a tensor of at least
    ``limit`` elements; records the op names it saw. Used to prove that fused attention never
    forms the explicit (HW x HW) matrix."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.limit:
                raise AssertionError(f'{func} returned a tensor of shape {tuple(t.shape)}')
        return out


def randomise(module, seed=0):
    """Random weights, biases and BatchNorm running statistics (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module
