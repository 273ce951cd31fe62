"""Whole-model benchmark: a shipped config against its baseline config (the same model without
attention), inference pass and training iteration, interleaved, median; next to the FLOPs
overhead counted by ``mmattn.analysis`` (the functions behind ``tools/analysis/get_flops.py``).

* Models come from the real configs with pretrained weights switched off (nothing is
  downloaded), SyncBN reverted to BN, on random inputs of the config's input size.
* Inference: ``model.eval()``, ``torch.no_grad()``, ``model(inputs, mode='tensor')``.
* Training iteration: ``model.train()``, ``model.loss(inputs, data_samples)`` on random
  targets (pose: heatmaps of the codec's size and unit keypoint weights; segmentation: random
  labels of the crop size), ``parse_losses``, and the config's optimizer wrapper
  ``update_params`` (backward, optimizer step, zero grad).
* Peak memory of each phase, model and baseline, after the timed calls (optimizer state
  exists by then): :func:`mmattn.benchmark.memory.peak_bytes` (CPU: profiler allocation
  events; CUDA: allocator statistics), above what was live before the call.
"""
import copy
import glob
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from mmattn.analysis import (analyze_model, build_model, default_input_shape, find_baseline,
                             load_config)
from .memory import peak_bytes
from .timing import median, time_interleaved

__all__ = ['ModelResult', 'ModelBench', 'run_models', 'config_baseline', 'count_flops']


@dataclass
class ModelResult:
    config: str
    baseline: str
    input_hw: Tuple[int, int]
    batch: int
    device: str
    reps: Dict[str, int] = field(default_factory=dict)
    # phase ('infer', 'train') -> {'model': s, 'baseline': s}
    times: Dict[str, Dict[str, float]] = field(default_factory=dict)
    samples: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    # phase -> {'model': bytes, 'baseline': bytes}: peak memory of one call
    peak: Dict[str, Dict[str, int]] = field(default_factory=dict)
    # FLOPs (multiply-adds, batch 1) of model and baseline: executed / released
    flops: Dict[str, Dict[str, int]] = field(default_factory=dict)
    flops_source: str = ''
    attn_modules: int = 0
    error: str = ''

    def to_dict(self) -> dict:
        return asdict(self)

    def time_overhead(self, phase: str) -> Optional[float]:
        t = self.times.get(phase, {})
        if 'model' not in t or 'baseline' not in t or not t['baseline']:
            return None
        return t['model'] / t['baseline'] - 1.0

    def peak_overhead(self, phase: str) -> Optional[float]:
        p = self.peak.get(phase, {})
        if not p.get('model') or not p.get('baseline'):
            return None
        return p['model'] / p['baseline'] - 1.0

    def flops_overhead(self, kind: str = 'executed') -> Optional[float]:
        f = self.flops.get(kind, {})
        if not f.get('baseline'):
            return None
        return f['model'] / f['baseline'] - 1.0


def config_baseline(config: str) -> Optional[str]:
    """The baseline config of ``config``: same folder, name without one ``-<part>``
    (``...hrnet-w48-psa-p_udp...`` -> ``...hrnet-w48_udp...``)."""
    folder = [c for c in glob.glob(osp.join(osp.dirname(config) or '.', '*.py'))
              if osp.abspath(c) != osp.abspath(config)]
    return find_baseline(config, folder)


def count_flops(model: nn.Module, hw: Tuple[int, int]) -> Tuple[Dict[str, int], str, int]:
    """``({'executed': n, 'released': n}, source, attention modules)`` of ``model`` on one
    ``3 x H x W`` image."""
    result = analyze_model(model, (3, ) + tuple(hw))
    return (dict(executed=int(result.flops), released=int(result.flops_released)),
            'mmattn.analysis.analyze_model (get_flops.py)', int(result.attn_modules))


def _data_samples(cfg, batch: int, hw: Tuple[int, int], device):
    """Random training targets for ``model.loss``."""
    scope = cfg.get('default_scope', '')
    gen = torch.Generator().manual_seed(3)
    if scope == 'mmpose':
        from mmengine.structures import InstanceData, PixelData
        from mmpose.structures import PoseDataSample
        codec = cfg.codec[0] if isinstance(cfg.codec, (list, tuple)) else cfg.codec
        hw_heat = (int(codec['heatmap_size'][1]), int(codec['heatmap_size'][0]))
        k = int(cfg.model.head.out_channels)
        samples = []
        for _ in range(batch):
            s = PoseDataSample(metainfo=dict(input_size=(hw[1], hw[0]), img_shape=hw))
            s.gt_fields = PixelData(heatmaps=torch.rand(k, *hw_heat, generator=gen).to(device))
            s.gt_instance_labels = InstanceData(keypoint_weights=torch.ones(1, k, device=device))
            samples.append(s)
        return samples
    if scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        num_classes = _num_classes(cfg.model)
        samples = []
        for _ in range(batch):
            s = SegDataSample(metainfo=dict(img_shape=hw, pad_shape=hw, ori_shape=hw))
            labels = torch.randint(0, num_classes, (1, ) + tuple(hw), generator=gen)
            s.gt_sem_seg = PixelData(data=labels.to(device))
            samples.append(s)
        return samples
    raise ValueError(f'no training targets for scope {scope!r} (mmpose and mmseg supported)')


def _num_classes(model_cfg) -> int:
    head = model_cfg.get('decode_head')
    if isinstance(head, (list, tuple)):
        head = head[-1]
    return int(head['num_classes'])


def _optim_wrapper(cfg, model):
    from mmengine.optim import build_optim_wrapper
    try:
        wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
        if wrapper_cfg.get('type', 'OptimWrapper') != 'OptimWrapper':
            wrapper_cfg['type'] = 'OptimWrapper'  # AMP wrappers need CUDA
        return build_optim_wrapper(model, wrapper_cfg)
    except Exception:  # noqa: BLE001
        return build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=1e-3)))


class ModelBench:
    """One config's model with its input, targets and optimizer: ``infer()`` and
    ``train_iter()`` closures."""

    def __init__(self, config: str, batch: int, device='cpu'):
        self.cfg = load_config(config)
        self.hw = default_input_shape(self.cfg)
        self.model = build_model(self.cfg).to(device)
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(4)
        self.inputs = torch.randn(batch, 3, *self.hw, generator=gen).to(device)
        self.samples = _data_samples(self.cfg, batch, self.hw, device)
        self.optim = _optim_wrapper(self.cfg, self.model)

    def infer(self):
        self.model.eval()
        with torch.no_grad():
            return self.model(self.inputs, None, mode='tensor')

    def train_iter(self):
        self.model.train()
        losses = self.model.loss(self.inputs, self.samples)
        loss, _ = self.model.parse_losses(losses)
        self.optim.update_params(loss)
        return None


def run_models(configs: List[str], batch: int = 1, device='cpu', reps: int = 5,
               budget_s: Optional[float] = 60.0, phases=('infer', 'train'),
               log: Callable[[str], None] = print) -> List[ModelResult]:
    """Time each config against its baseline config (see the module docstring)."""
    results = []
    cache: Dict[str, Tuple[Dict[str, int], str, int]] = {}
    for config in configs:
        baseline = config_baseline(config)
        result = ModelResult(config=config, baseline=baseline or '', input_hw=(0, 0),
                             batch=batch, device=str(device))
        results.append(result)
        if baseline is None:
            result.error = 'no baseline config found (same folder, name without one -<part>)'
            log(f'{config}: {result.error}')
            continue
        try:
            benches = {'model': ModelBench(config, batch, device),
                       'baseline': ModelBench(baseline, batch, device)}
            result.input_hw = tuple(benches['model'].hw)
            for key, path in (('model', config), ('baseline', baseline)):
                if path not in cache:
                    cache[path] = count_flops(benches[key].model, result.input_hw)
                flops, result.flops_source, attn = cache[path]
                for kind, value in flops.items():
                    result.flops.setdefault(kind, {})[key] = value
                if key == 'model':
                    result.attn_modules = attn
            for phase in phases:
                calls = {k: (b.infer if phase == 'infer' else b.train_iter)
                         for k, b in benches.items()}
                times = time_interleaved(calls, reps=reps, warmup=1, device=device,
                                         budget_s=budget_s)
                result.samples[phase] = times
                result.times[phase] = {k: median(v) for k, v in times.items()}
                result.reps[phase] = n = len(times['model'])
                result.peak[phase] = {k: peak_bytes(c, device) for k, c in calls.items()}
                over = result.time_overhead(phase)
                log(f'  {osp.basename(config)} N={batch} {phase}: '
                    f'{1000 * result.times[phase]["model"]:.0f} ms vs '
                    f'{1000 * result.times[phase]["baseline"]:.0f} ms ({100 * over:+.1f}%, '
                    f'{n} reps)')
        except Exception as exc:  # noqa: BLE001
            result.error = f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
            log(f'{config}: failed: {result.error}')
        finally:
            benches = None
    return results
