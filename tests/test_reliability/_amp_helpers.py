"""One training iteration of a shipped config under ``--amp`` (bfloat16 autocast on CPU), on the
tiny-data overrides of tests/test_configs/test_shipped_configs.py (imported, not copied)."""
import importlib.util
import math
import pathlib

import torch
from mmattn.utils import build_runner, enable_amp

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_shipped_helpers():
    path = ROOT / 'tests/test_configs/test_shipped_configs.py'
    spec = importlib.util.spec_from_file_location('_mmattn_shipped_configs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shipped = _load_shipped_helpers()
CONFIGS = shipped.CONFIGS
tiny_data = shipped.tiny_data  # the module-scoped fixture (tiny Cityscapes + COCO)


def scope_of(path) -> str:
    """Which of the two test files runs ``path`` (only to balance them: ``_tiny_cfg`` reads the
    config's real ``default_scope``)."""
    return 'mmpose' if pathlib.Path(path).name.startswith('td-hm_') else 'mmseg'


def train_one_amp_iteration(path, data, work_dir):
    """Build the tiny config with --amp's rewrite, train one iteration, check finiteness."""
    torch.set_num_threads(1)  # many small ops: threads only contend on a shared machine
    cfg = shipped._tiny_cfg(path, data, work_dir)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    enable_amp(cfg)  # what tools/train.py --amp does
    runner = build_runner(cfg)  # as tools/train.py builds it (the configs' runner_type)
    seen = set()
    conv = next(m for m in runner.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'PortableAmpOptimWrapper'
    assert seen == {torch.bfloat16}, f'{path.name}: autocast not active (conv outputs {seen})'
    losses = {k: v.current() for k, v in runner.message_hub.log_scalars.items()
              if k.startswith('train/') and 'loss' in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), \
        f'{path.name}: non-finite loss under bfloat16 autocast: {losses}'
    bad = [k for k, v in runner.model.state_dict().items()
           if v.dtype.is_floating_point and not torch.isfinite(v).all()]
    assert not bad, f'{path.name}: non-finite weights after one bfloat16 step: {bad[:5]}'
