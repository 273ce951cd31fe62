"""Test helpers shared by the attention tests: a guard against large intermediate tensors, and
random weights for modules whose init would hide branches (zero or constant parameters)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmattn.utils.torch_compat import tree_leaves
from mmattn.testing import randomise  # noqa: F401  (re-exported for the layer tests)


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
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.limit:
                raise AssertionError(f'{func} returned a tensor of shape {tuple(t.shape)}')
        return out

