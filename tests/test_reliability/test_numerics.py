"""Every module of ``mmattn.list_attention()`` stays finite - output, input gradient and parameter
gradients - under CPU autocast (bfloat16) and in float32, on inputs that break naive code:
large magnitude (1e4, where an unshifted softmax or a sum of squares overflows), constant maps
(a softmax over identical values, zero variance for every norm) and zeros."""
import pytest
import torch

import mmattn  # noqa: F401
from mmattn.models.layers import build_attention, list_attention

CHANNELS = {'danet_cam': 8, 'triplet': 8, 'spd': 8, 'dcnv2': 8}  # others: 32
SIZE = {'dat': (12, 10), 'spd': (8, 6)}  # others: (9, 7)

INPUTS = {
    'large_1e4': lambda shape: 1e4 * torch.randn(shape, generator=torch.Generator().manual_seed(1)),
    'constant': lambda shape: torch.full(shape, 3.0),
    'constant_1e4': lambda shape: torch.full(shape, 1e4),
    'zeros': lambda shape: torch.zeros(shape),
}


def _module(name, randomise):
    torch.manual_seed(0)
    module = build_attention(name, CHANNELS.get(name, 32))
    if randomise:  # zero-initialised gammas / last convs would hide the attention path
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() <= 1 or p.abs().sum() == 0:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.train()


@pytest.mark.parametrize('randomise', [True, False], ids=['randomised', 'as_initialised'])
@pytest.mark.parametrize('precision', ['autocast_bf16', 'float32'])
@pytest.mark.parametrize('kind', list(INPUTS))
@pytest.mark.parametrize('name', list_attention())
def test_finite_under_hostile_inputs(name, kind, precision, randomise):
    module = _module(name, randomise)
    h, w = SIZE.get(name, (9, 7))
    x = INPUTS[kind]((2, module.in_channels, h, w)).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'autocast_bf16'):
        y = module(x)
    where = f'{type(module).__name__} ({name}), input {kind} {tuple(x.shape)}, {precision}'
    assert torch.isfinite(y.float()).all(), f'non-finite output: {where}'
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert torch.isfinite(x.grad).all(), f'non-finite input gradient: {where}'
    bad = [n for n, p in module.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f'non-finite gradient of {bad}: {where}'
