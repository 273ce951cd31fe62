"""Cost of each variant: parameters and FLOPs (``mmattn.analysis``, the counter behind
``tools/analysis/get_flops.py``), and time and peak memory (``mmattn.benchmark``) of the real
training step and inference step, all variants interleaved in one process.

* Counting builds each variant's model from its config file (pretrained weights off), which
  also checks that the variant can be built at all before anything is trained.
* Timing uses one real batch of the base config's train dataloader and one of its test
  dataloader (the data pipeline is the same for every variant), and the model's own
  ``train_step`` (data preprocessor, loss, backward, optimizer step: what the Runner's training
  loop calls) and ``test_step`` (preprocessor, predict, post-processing); the variants are
  called in turns (:func:`mmattn.benchmark.time_interleaved`), median over repetitions, so that
  a change of the machine's load affects all of them alike.
* Peak memory: :func:`mmattn.benchmark.peak_bytes` of one training step (CPU: profiler
  allocation events above what was live before the step; CUDA: allocator peak).
"""
import copy
import os.path as osp
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

__all__ = ['load_variant_config', 'input_shape', 'count_variant', 'benchmark_variants']


def load_variant_config(path: str, cfg_options: Optional[dict] = None):
    """The config at ``path`` with ``cfg_options`` merged, pretrained weights off."""
    from mmattn.analysis import load_config
    return load_config(path, cfg_options)


def _pipeline_shape(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of the test pipeline's fixed ``Resize`` (``scale`` is given as (W, H))."""
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    dataset = loader.get('dataset') or {}
    for step in dataset.get('pipeline') or []:
        scale = step.get('scale') if isinstance(step, dict) else None
        if 'Resize' in str(step.get('type', '')) and isinstance(scale, (list, tuple)) and \
                len(scale) == 2:
            return int(scale[1]), int(scale[0])
    return None


def input_shape(cfg, shape: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """(H, W) to count FLOPs at: ``shape``, else the config's training size (codec input size,
    crop size: :func:`mmattn.analysis.default_input_shape`), else its test ``Resize`` scale."""
    from mmattn.analysis import default_input_shape
    if shape:
        shape = tuple(int(s) for s in shape)
        return (shape * 2)[:2] if len(shape) == 1 else shape[:2]
    try:
        return default_input_shape(cfg)
    except ValueError:
        found = _pipeline_shape(cfg)
        if found is None:
            raise ValueError('cannot find the input size in the config (codec input_size, '
                             'crop_size, a test Resize scale); give --shape H W') from None
        return found


def count_variant(path: str, cfg_options: Optional[dict] = None,
                  shape: Optional[Sequence[int]] = None) -> dict:
    """Params and FLOPs of the variant config's model on one 3 x H x W image."""
    from mmattn.analysis import GIGA, analyze_model, build_model
    cfg = load_variant_config(path, cfg_options)
    hw = input_shape(cfg, shape)
    model = build_model(cfg)
    result = analyze_model(model, (3, ) + tuple(hw), name=osp.basename(path))
    return dict(
        input_hw=list(hw), params=int(result.params), attn_params=int(result.attn_params),
        params_m=result.params / 1e6, gflops=result.flops / GIGA,
        gflops_released=result.flops_released / GIGA, attn_modules=int(result.attn_modules),
        attn_classes=dict(result.attn_classes))


def _batch(cfg, key: str):
    """One collated batch of the config's ``key`` dataloader (no worker processes)."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg[key])
    loader_cfg['num_workers'] = 0
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    return next(iter(loader))


def _optim_wrapper(cfg, model, device):
    from mmengine.optim import build_optim_wrapper
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    if wrapper_cfg.get('type', 'OptimWrapper') == 'AmpOptimWrapper' and \
            torch.device(device).type != 'cuda':
        wrapper_cfg['type'] = 'OptimWrapper'  # mmengine's AMP wrapper asserts a GPU
    return build_optim_wrapper(model, wrapper_cfg)


def _batch_size(batch) -> int:
    inputs = batch['inputs']
    return len(inputs) if isinstance(inputs, (list, tuple)) else int(inputs.shape[0])


def benchmark_variants(configs: Dict[str, str], cfg_options: Optional[dict] = None,
                       device: Optional[str] = None, reps: int = 10, budget_s: float = 60.0,
                       log: Callable[[str], None] = print) -> dict:
    """Time ``train_step`` and ``test_step`` of every variant (``{name: config path}``) on the
    same real batches, interleaved, and the peak memory of a training step. Returns
    ``{'settings': ..., 'variants': {name: {...}}}``; a variant that fails gets ``error``."""
    from mmengine.registry import init_default_scope

    from mmattn.analysis import build_model
    from mmattn.benchmark import median, peak_bytes, time_interleaved
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    first = load_variant_config(next(iter(configs.values())), cfg_options)
    init_default_scope(first.get('default_scope'))
    torch.manual_seed(0)
    train_batch = _batch(first, 'train_dataloader')
    test_key = 'test_dataloader' if first.get('test_dataloader') else 'val_dataloader'
    test_batch = _batch(first, test_key)
    settings = dict(device=device, train_batch=_batch_size(train_batch),
                    test_batch=_batch_size(test_batch), threads=torch.get_num_threads(),
                    reps=reps, budget_s=budget_s, timer='mmattn.benchmark.time_interleaved',
                    memory='mmattn.benchmark.peak_bytes')
    out: Dict[str, dict] = {name: {} for name in configs}
    benches = {}
    for name, path in configs.items():
        try:
            cfg = load_variant_config(path, cfg_options)
            torch.manual_seed(0)
            with warnings.catch_warnings():  # the libraries' deprecation notes, per variant
                warnings.simplefilter('ignore')
                model = build_model(cfg).to(device)
            benches[name] = (model, _optim_wrapper(cfg, model, device))
        except Exception as exc:  # noqa: BLE001  (reported in the table, the others go on)
            out[name]['error'] = f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
            log(f'benchmark: {name} cannot be built: {out[name]["error"]}')

    def train_call(model, optim):
        def call():
            model.train()
            return model.train_step(train_batch, optim)
        return call

    def test_call(model):
        def call():
            model.eval()
            with torch.no_grad():
                return model.test_step(test_batch)
        return call

    for phase, make in (('train', lambda m, o: train_call(m, o)),
                        ('infer', lambda m, o: test_call(m))):
        calls = {}
        for name, (model, optim) in benches.items():
            call = make(model, optim)
            try:
                call()  # a variant that fails here is reported, not timed
                calls[name] = call
            except Exception as exc:  # noqa: BLE001
                out[name]['error'] = f'{phase}: {type(exc).__name__}: {exc}'.splitlines()[0][:300]
                log(f'benchmark: {name} {phase} step failed: {out[name]["error"]}')
        if not calls:
            continue
        times = time_interleaved(calls, reps=reps, warmup=1, device=device, budget_s=budget_s)
        for name, samples in times.items():
            per = settings['train_batch'] if phase == 'train' else settings['test_batch']
            key = 'train_ms_per_iter' if phase == 'train' else 'infer_ms_per_img'
            value = median(samples) * 1000 / (1 if phase == 'train' else per)
            out[name][key] = value
            out[name][f'{phase}_reps'] = len(samples)
        log(f'benchmark {phase}: ' + ', '.join(
            f'{n} {out[n]["train_ms_per_iter" if phase == "train" else "infer_ms_per_img"]:.1f}'
            for n in calls) + (' ms/iter' if phase == 'train' else ' ms/img'))
    for name, (model, optim) in benches.items():
        if 'error' in out[name]:
            continue
        try:
            out[name]['peak_train_mib'] = peak_bytes(train_call(model, optim), device) / 2**20
        except Exception as exc:  # noqa: BLE001
            out[name]['error'] = f'memory: {type(exc).__name__}: {exc}'.splitlines()[0][:300]
    return dict(settings=settings, variants=out)
