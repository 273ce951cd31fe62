"""``import mmattn`` in an environment without mmsegmentation and mmpose (an mmdet user's):
light, no patching of mmengine, and every module plus an mmdet detector with
``AttentionBackbone`` and ``AttentionNeck`` builds and runs."""
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter where `import mmseg` / `import mmpose` raise ImportError, as when
# they are not installed.
_NO_SEG_POSE = '''
import sys
for name in ('mmseg', 'mmpose'):
    sys.modules[name] = None  # makes `import name` raise ImportError
'''


def _run(code: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, '-c', _NO_SEG_POSE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_import_is_light_and_patches_nothing():
    out = _run('''
        import mmengine.runner as runner_pkg
        import mmengine.runner.checkpoint as ckpt
        from mmengine.hooks import CheckpointHook
        from mmengine.optim import AmpOptimWrapper
        before = dict(save=ckpt.save_checkpoint, find=ckpt.find_latest_checkpoint,
                      runner_save=runner_pkg.save_checkpoint,
                      hook=CheckpointHook._save_checkpoint_with_step,
                      register=runner_pkg.Runner.register_hooks,
                      amp=AmpOptimWrapper.__init__)
        import mmattn
        after = dict(save=ckpt.save_checkpoint, find=ckpt.find_latest_checkpoint,
                     runner_save=runner_pkg.save_checkpoint,
                     hook=CheckpointHook._save_checkpoint_with_step,
                     register=runner_pkg.Runner.register_hooks,
                     amp=AmpOptimWrapper.__init__)
        assert before == after, [k for k in before if before[k] is not after[k]]
        heavy = sorted(m for m in ('mmseg', 'mmpose', 'mmdet', 'mmcv.ops', 'mmcv._ext')
                       if sys.modules.get(m) is not None)
        assert not heavy, heavy
        print('ok')
    ''')
    assert out.strip() == 'ok'


def test_plain_mmengine_runner_keeps_exactly_its_hooks(tmp_path):
    out = _run(f'''
        import torch
        from mmengine.model import BaseModel
        from mmengine.runner import Runner

        class Toy(BaseModel):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 1)
            def forward(self, inputs, mode='tensor'):
                return self.linear(inputs)

        def hooks(work_dir):
            runner = Runner(model=Toy(), work_dir=work_dir, default_scope='mmengine')
            return [type(h).__module__ + '.' + type(h).__name__ for h in runner.hooks]

        without = hooks({str(tmp_path / 'a')!r})
        import mmattn  # noqa: F401
        with_mmattn = hooks({str(tmp_path / 'b')!r})
        assert without == with_mmattn, (without, with_mmattn)
        assert all(h.startswith('mmengine.') for h in with_mmattn), with_mmattn
        print(len(with_mmattn))
    ''')
    assert int(out.strip().splitlines()[-1]) >= 6


def test_every_module_builds_and_runs_without_mmseg_and_mmpose():
    out = _run('''
        import torch
        import mmattn
        names = mmattn.list_attention()
        for name in names:
            channels = 16
            module = mmattn.build_attention(name, channels).eval()
            x = torch.randn(2, channels, 16, 12)
            with torch.no_grad():
                y = module(x)
            assert torch.isfinite(y).all(), name
            if name == 'spd':  # space-to-depth halves H and W, then a conv to out_channels
                assert y.shape == (2, module.conv.conv.out_channels, 8, 6), tuple(y.shape)
            else:
                assert y.shape == x.shape, (name, tuple(y.shape))
        assert sys.modules.get('mmseg') is None and sys.modules.get('mmpose') is None
        print(len(names))
    ''')
    assert int(out.strip().splitlines()[-1]) == 16


@pytest.mark.parametrize('detector', ['retinanet/retinanet_r50_fpn_1x_coco.py',
                                      'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'])
def test_mmdet_detector_with_attention_backbone_and_neck(detector, tmp_path):
    """An mmdet config with ``custom_imports=['mmattn']``: CBAM in every Bottleneck through
    ``AttentionBackbone`` and a GC block on every FPN level through ``AttentionNeck``."""
    config = tmp_path / 'detector.py'
    config.write_text(f"_base_ = 'mmdet::{detector}'\n"
                      "custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)\n")
    out = _run(f'''
        import torch
        from mmengine.config import Config
        from mmengine.registry import DefaultScope
        cfg = Config.fromfile({str(config)!r})  # imports mmattn, as a user's config would
        assert 'mmattn' in sys.modules
        backbone = dict(cfg.model.backbone)
        backbone.pop('init_cfg', None)  # no download of ImageNet weights here
        cfg.model.backbone = dict(type='AttentionBackbone', backbone=backbone,
                                  plugins=[dict(cfg=dict(type='cbam'), position='after_conv3')])
        cfg.model.neck = [cfg.model.neck, dict(type='AttentionNeck', in_channels=[256] * 5,
                                               attention='gc')]
        from mmdet.registry import MODELS
        with DefaultScope.overwrite_default_scope('mmdet'):
            model = MODELS.build(cfg.model).eval()
        counts = dict(cbam=0, gc=0)
        for module in model.modules():
            kind = type(module).__name__
            if kind in ('CBAM', 'GlobalContextBlock'):
                key = 'cbam' if kind == 'CBAM' else 'gc'
                counts[key] += 1
                module.register_forward_hook(
                    lambda m, i, o, key=key: calls.__setitem__(key, calls[key] + 1))
        calls = dict(cbam=0, gc=0)
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 64, 64))
        assert len(feats) == 5 and all(torch.isfinite(f).all() for f in feats)
        assert counts == dict(cbam=16, gc=5), counts
        assert calls == counts, (calls, counts)
        assert sys.modules.get('mmseg') is None and sys.modules.get('mmpose') is None
        print(counts)
    ''')
    assert 'cbam' in out


def test_without_mmcv_compiled_ops_only_dcnv2_is_unavailable():
    """As with mmcv-lite: ``import mmattn`` and every other module work; building DCNv2 says
    in one message what is missing."""
    out = _run('''
        sys.modules['mmcv._ext'] = None  # mmcv without its compiled extension
        import torch
        import mmattn
        for name in mmattn.list_attention():
            if name != 'dcnv2':
                mmattn.build_attention(name, 16)
        try:
            mmattn.build_attention('dcnv2', 16)
        except ImportError as error:
            print(str(error).splitlines()[0])
    ''')
    assert out.strip().startswith('DeformableConvV2 needs mmcv built with its compiled ops')
