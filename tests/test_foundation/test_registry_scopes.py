"""A module registered by mmattn is found from mmseg's, mmpose's and mmdet's scopes alike."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import DefaultScope

import mmattn  # noqa: F401
from mmattn.registry import MODELS


@MODELS.register_module(force=True)
class _ScopeProbe(torch.nn.Module):
    """Trivial module: scales its input, so a built instance is recognisable."""

    def __init__(self, in_channels=1, factor=2.0):
        super().__init__()
        self.in_channels = in_channels
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _downstream_registry(scope):
    if scope == 'mmseg':
        from mmseg.registry import MODELS as registry
    elif scope == 'mmpose':
        from mmpose.registry import MODELS as registry
    else:
        from mmdet.registry import MODELS as registry
    return registry


@pytest.mark.parametrize('scope', ['mmseg', 'mmpose', 'mmdet'])
def test_found_from_downstream_scope(scope):
    registry = _downstream_registry(scope)
    with DefaultScope.overwrite_default_scope(scope):
        module = registry.build(dict(type='_ScopeProbe', factor=3.0))
    assert isinstance(module, _ScopeProbe) and module.factor == 3.0
    assert torch.equal(module(torch.ones(2)), torch.full((2, ), 3.0))


def test_found_by_mmcv_plugin_builder():
    from mmcv.cnn import build_plugin_layer
    name, layer = build_plugin_layer(dict(type='_ScopeProbe'), postfix=1, in_channels=8)
    assert isinstance(layer, _ScopeProbe) and layer.in_channels == 8
    assert name.endswith('1')


@pytest.mark.parametrize('scope', ['mmseg', 'mmpose', 'mmdet'])
def test_custom_imports_is_all_a_config_needs(tmp_path, scope):
    """In a fresh interpreter that never imported mmattn, a config's custom_imports registers
    the modules, and the downstream scope builds one by name."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent(f"""
        default_scope = '{scope}'
        custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
        attn = dict(type='PolarizedSelfAttention', in_channels=16)
    """))
    script = textwrap.dedent(f"""
        import sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'mmattn' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})  # runs custom_imports
        assert 'mmattn' in sys.modules
        init_default_scope(cfg.default_scope)
        from {scope}.registry import MODELS
        m = MODELS.build(cfg.attn)
        y = m(torch.randn(1, 16, 5, 6))
        print(type(m).__name__, tuple(y.shape))
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'PolarizedSelfAttention (1, 16, 5, 6)' in out.stdout
