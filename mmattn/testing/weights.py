"""Random weights for equality tests and benchmarks: initialisations that zero a branch
(residual gammas, zero-initialised last convs and norms) would otherwise hide it."""
import torch
import torch.nn as nn

__all__ = ['randomise']


def randomise(module: nn.Module, seed: int = 0, scale: float = 1.0,
              only_constant: bool = False) -> nn.Module:
    """Random parameters from a seeded generator, in place; returns ``module``.

    By default every parameter becomes ``scale * N(0, 1)``, and BatchNorm running means
    ``scale * N(0, 1)`` and running variances ``0.5 + U(0, 1)`` (eval mode uses them).

    ``only_constant=True`` keeps the initialisation and only perturbs, by ``scale * N(0, 1)``,
    the parameters whose entries are all equal (zero gammas and last convs, norm weights of
    one, zero biases): the whole computation runs, at the scale the module was built for.
    """
    gen = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return scale * torch.randn(t.shape, generator=gen, dtype=t.dtype)

    with torch.no_grad():
        for p in module.parameters():
            if not only_constant:
                p.copy_(noise(p))
            elif p.numel() and bool((p == p.flatten()[0]).all()):
                p.add_(noise(p))
        if only_constant:
            return module
        for name, buf in module.named_buffers():
            if name.endswith('running_mean'):
                buf.copy_(noise(buf))
            elif name.endswith('running_var'):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen, dtype=buf.dtype))
    return module
