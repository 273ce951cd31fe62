"""Random weights for equality tests: initialisations that zero a branch (residual gammas,
zero-initialised norms) would otherwise hide it."""
import torch
import torch.nn as nn

__all__ = ['randomise']


def randomise(module: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Every parameter ``scale * N(0, 1)``, BatchNorm running means ``scale * N(0, 1)`` and
    running variances ``0.5 + U(0, 1)`` (eval mode uses them), from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, buf in module.named_buffers():
            if name.endswith('running_mean'):
                buf.copy_(scale * torch.randn(buf.shape, generator=gen, dtype=buf.dtype))
            elif name.endswith('running_var'):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen, dtype=buf.dtype))
    return module
