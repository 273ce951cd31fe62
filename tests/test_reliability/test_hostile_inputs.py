"""Property-based tests: any module of the zoo, any channel count, batch, height, width, dtype and
memory format gives either a correct output or the documented error, never a crash or a wrong
shape.

Correct output: the shape the module documents, finite, and equal (at the dtype's precision) to
the plain formulation of ``mmattn.testing.plain`` where one exists, else to the module's own
float64 result. Documented error: ``ValueError`` / ``TypeError`` whose message names the module
class or the argument (``in_channels``), raised when the module is built or called.
"""
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mmattn  # noqa: F401
from mmattn.models.layers import build_attention, list_attention, resolve_attention

try:
    from mmattn.testing.plain import has_plain, plain_forward
except ImportError:  # pragma: no cover - plain formulations are optional
    has_plain = None

# modules whose output shape differs from the input's (SPD-Conv: space-to-depth by 2, then a
# conv to out_channels = 2 * in_channels by default; odd sizes are a documented error)
SHAPE = {'spd': lambda n, c, h, w: (n, 2 * c, h // 2, w // 2)}


def _documented(error: Exception, name: str, cls_name: str) -> bool:
    text = str(error)
    return isinstance(error, (ValueError, TypeError)) and (
        cls_name in text or 'in_channels' in text or name in text)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() <= 1 or p.abs().sum() == 0:  # zero-initialised gammas, last convs
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@st.composite
def cases(draw):
    return dict(
        name=draw(st.sampled_from(list_attention())),
        channels=draw(st.integers(1, 48)),
        batch=draw(st.integers(1, 3)),
        height=draw(st.integers(1, 13)),
        width=draw(st.integers(1, 13)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        channels_last=draw(st.booleans()),
        train=draw(st.booleans()),
    )


def _tolerance(dtype):
    return (2e-3, 2e-3) if dtype == torch.float32 else (1e-7, 1e-7)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_any_input_gives_a_correct_output_or_the_documented_error(case):
    torch.set_num_threads(1)
    name, c = case['name'], case['channels']
    cls_name, _ = resolve_attention(name)
    shape = (case['batch'], c, case['height'], case['width'])
    torch.manual_seed(0)
    try:
        module = build_attention(name, c)
    except Exception as error:  # noqa: BLE001
        assert _documented(error, name, cls_name), \
            f'{name} (in_channels={c}): undocumented error at build: {error!r}'
        event('documented error when built')
        return
    module = _randomise(module, 1).to(case['dtype']).train(case['train'])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=case['dtype'])
    if case['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        y = module(x)
    except Exception as error:  # noqa: BLE001
        # training-mode BatchNorm cannot normalise one value per channel: torch's own error,
        # which names the condition; acceptable only in that case
        one_value = case['train'] and 'Expected more than 1 value per channel' in str(error)
        assert one_value or _documented(error, name, cls_name), \
            f'{name} on input {shape} ({case}): undocumented error: {error!r}'
        event('documented error when called')
        return
    expected = SHAPE.get(name, lambda *s: s)(*shape)
    assert tuple(y.shape) == expected, f'{name}: output {tuple(y.shape)} for input {shape}'
    assert y.dtype == case['dtype']
    assert torch.isfinite(y).all(), f'{name}: non-finite output for input {shape}'
    # agreement with a plain formulation (float64) or with its own float64 result
    module64 = module.double().eval()
    x64 = x.double()
    with torch.no_grad():  # compared in eval mode (train-mode BN statistics change per call)
        out = module64(x64)
        # (the plain formulations use .view: they take contiguous input; values are the same)
        ref = plain_forward(module64, x64.contiguous()) if has_plain and has_plain(
            module64) else None
        low = module.to(case['dtype']).eval()(x)
    event('output checked' + (' against the plain formulation' if ref is not None else ''))
    rtol, atol = _tolerance(case['dtype'])
    if ref is not None:
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7,
                                   msg=lambda m: f'{name} vs plain formulation: {m}')
    scale = out.abs().max().item() + 1.0
    torch.testing.assert_close(low.double(), out, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f'{name} {case["dtype"]} vs float64: {m}')


@pytest.mark.parametrize('name', list_attention())
def test_non_tensor_and_wrong_rank_inputs_name_the_module(name):
    cls_name, _ = resolve_attention(name)
    module = build_attention(name, 16).eval()
    for bad in (torch.randn(16, 8, 8), torch.randn(1, 1, 16, 8, 8), [torch.randn(1, 16, 8, 8)]):
        with pytest.raises((ValueError, TypeError), match=re.escape(cls_name)):
            module(bad)
