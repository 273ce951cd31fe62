"""Parameters and FLOPs of a config's model, and the share its attention modules add.

Built on :mod:`mmengine.analysis` (``FlopAnalyzer``, ``parameter_count``), the counter mmseg's and
mmpose's own ``get_flops`` tools use. Its convention: one fused multiply-add is one flop
(convolution, linear, matmul/bmm/einsum count multiply-adds, bias and additions are ignored);
batch norm, layer norm, group norm, upsampling and adaptive average pooling are estimated per
element; softmax, sigmoid and elementwise ``mul``/``add`` are not counted at all.

Three FLOP figures are reported for every model:

``executed``
    ``FlopAnalyzer`` on the model's ``tensor``-mode forward: the operations that actually run,
    exactly what ``mmseg``/``mmpose`` ``get_flops`` print. mmattn's PSA forward is reassociated
    (the C -> C/2 projections over every position become matrix-vector products), so PSA
    executes ~35x fewer multiply-adds here than the authors' code.
``released``
    The same count, with each attention module replaced by the multiply-adds the authors'
    released formulation would execute on the same input (an analytic count, see
    :func:`psa_released_macs`; counted the way ``FlopAnalyzer`` would count that code). This is
    the figure to compare with a paper that measured its released code.
``paper``
    The convention of the HRNet code base (``get_model_summary``), which the HRNet and PSA papers
    report: multiply-adds of Conv and Linear layers only, attention modules as their released
    convolutions, divided by ``2**30`` (HRNet's code prints ``flops / 1024**3`` as "GFLOPs").
    It reproduces HRNet-W48's 14.6 / 32.9 and HRNet-W48 + PSA_p's 15.7 / 35.4 GFLOPs.

Attention modules are the modules whose class is one of
:func:`mmattn.models.layers.attention_class_names` (outermost only: a module inside another
attention module is part of that module's share).
"""
import copy
import functools
import importlib.util
import inspect
import os.path as osp
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'GIGA', 'PAPER_GIGA', 'Complexity', 'Failure', 'ConfigError', 'ANALYTIC_COUNTS',
    'psa_released_macs', 'attention_modules', 'analyze_model', 'load_config',
    'disable_pretrained', 'default_input_shape', 'build_model',
    'analyze_config', 'find_baseline', 'format_report', 'markdown_table', 'write_markdown'
]

GIGA = 1e9  # mmengine / mmseg / mmpose print decimal G
PAPER_GIGA = 2**30  # the HRNet code base prints flops / 1024**3 as "GFLOPs"

# operators the HRNet-code-base convention counts (Conv and Linear layers)
PAPER_OPS = ('conv', 'linear', 'addmm')
# elementwise operators FlopAnalyzer does not count; not worth a warning line
_SILENT_UNCOUNTED = {
    'aten::add', 'aten::add_', 'aten::mul', 'aten::mul_', 'aten::sub', 'aten::div', 'aten::relu',
    'aten::relu_', 'aten::sigmoid', 'aten::softmax', 'aten::mean', 'aten::addcmul', 'aten::sum',
    'aten::exp', 'aten::rsub', 'aten::neg', 'aten::max', 'aten::tanh', 'aten::gelu',
    'aten::hardswish', 'aten::hardsigmoid', 'aten::silu', 'aten::pow', 'aten::sqrt'
}


# ------------------------------------------------------------------------------------------
# analytic counts of the released attention formulations
# ------------------------------------------------------------------------------------------
def psa_released_macs(channels: int, height: int, width: int, mode: str = 'parallel',
                      formulation: str = 'released', batch: int = 1) -> Counter:
    """Multiply-adds of one Polarized Self-Attention block as the authors' code computes it
    (DeLightCMU/PSA ``PSA_p``/``PSA_s`` modules), by ``FlopAnalyzer`` operator name.
    ``C = channels``, ``P = height * width``.

    Released code, both layouts: four 1x1 convolutions over every position,
    ``conv_q_right`` C -> 1 (``C P``) and ``conv_v_right``, ``conv_q_left``, ``conv_v_left``
    C -> C/2 (``C^2/2 P`` each); two products with a pooled vector, ``v @ softmax(q)^T`` and
    ``g @ theta`` (``C/2 P`` each); ``avgpool(conv_q_left(x))`` (``C/2 P``, counted per input
    element); ``conv_up`` on the (C/2, 1, 1) context: C/2 -> C (``C^2/2``, PSA_p) or the PSA_s
    bottleneck C/2 -> C/8 -> C (``C^2/16 + C^2/8``) with LayerNorm([C/8, 1, 1]) (``5 C/8``).
    The paper formulation adds LayerNorm([C, 1, 1]) after a single ``conv_up`` (``5 C``).
    Softmax, sigmoid and the two elementwise products with ``x`` are not counted (as
    ``FlopAnalyzer`` does not count them).

    PSA_p total: ``1.5 C^2 P + C P`` (conv) ``+ C P`` (matmul) ``+ C/2 P`` (pool)
    ``+ C^2/2`` (conv_up).
    """
    c, p = int(channels), int(height) * int(width)
    half = c // 2
    counts = Counter()
    counts['conv'] = c * p + 3 * c * half * p
    counts['matmul'] = 2 * half * p
    counts['adaptive_avg_pool2d'] = half * p
    if mode == 'sequential' and formulation == 'released':
        counts['conv'] += half * (c // 2 // 4) + (c // 2 // 4) * c
        counts['layer_norm'] = 5 * (c // 2 // 4)
    else:
        counts['conv'] += half * c
        if formulation == 'paper':
            counts['layer_norm'] = 5 * c
    return Counter({k: v * batch for k, v in counts.items()})


def _psa_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    n, c, h, w = shape
    return psa_released_macs(c, h, w, module.mode, module.formulation, batch=n)


# class name -> fn(module, input shape) -> Counter of multiply-adds by FlopAnalyzer op name,
# for attention modules whose executed forward differs from the released formulation
ANALYTIC_COUNTS: Dict[str, Callable[[nn.Module, Sequence[int]], Counter]] = {
    'PolarizedSelfAttention': _psa_count,
}


def _non_local_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    """Embedded Gaussian non-local as released: theta/phi/g 1x1 convs C -> C', the explicit
    (P x P') affinity and aggregation, W_z C' -> C and its norm (P' = P/4 with the max-pool)."""
    n, c, h, w = shape
    p = h * w
    inter = module.inter_channels
    p_key = (h // 2) * (w // 2) if module.sub_sample else p
    counts = Counter(conv=n * (3 * c * inter * p + inter * c * p), matmul=n * 2 * p * p_key * inter)
    if module.conv_out.with_norm:
        counts['batch_norm'] = n * c * p
    return counts


def _position_attention_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    """DANet PAM as released: B, D (C -> C/8) and V (C -> C) 1x1 convs, the explicit (P x P)
    energy B^T D and the aggregation V S^T."""
    n, c, h, w = shape
    p, ck = h * w, module.key_channels
    return Counter(conv=n * (2 * c * ck + c * c) * p, bmm=n * (p * p * ck + p * p * c))


def _dual_attention_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    n, c, h, w = shape
    counts = _position_attention_count(module.pam, shape)
    counts['bmm'] += n * 2 * c * c * h * w  # CAM: energy X X^T and aggregation A X
    return counts


def _acmix_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    """ACmix as released (stride 1): q/k/v 1x1 convs, the positional-encoding conv, the window
    logits and aggregation (k_att^2 multiply-adds per channel and position each; elementwise
    products FlopAnalyzer would not see), the fc over the 3*heads stacked projections and the
    grouped shift conv."""
    n, c_in, h, w = shape
    p, c, k2 = h * w, module.out_channels, module.kernel_att**2
    head, hd, kc2 = module.head, module.head_dim, module.kernel_conv**2
    return Counter(conv=n * (3 * c_in * c * p + 3 * head * kc2 * hd * p + c * kc2 * kc2 * p) +
                   2 * hd * p,
                   mul=n * 2 * k2 * c * p)


def _deform_conv_count(module: nn.Module, shape: Sequence[int]) -> Counter:
    """DCNv2: the offset/mask conv plus the deformable conv's multiply-adds (the bilinear
    sampling, 4 reads per sample, is not counted, like interpolation elsewhere)."""
    n, c, h, w = shape
    kh, kw = module.kernel_size
    ho = (h + 2 * module.padding[0] - module.dilation[0] * (kh - 1) - 1) // module.stride[0] + 1
    wo = (w + 2 * module.padding[1] - module.dilation[1] * (kw - 1) - 1) // module.stride[1] + 1
    per_out = kh * kw * c // module.groups
    offset_out = module.conv_offset.out_channels
    return Counter(conv=n * ho * wo * (module.out_channels * per_out + offset_out * kh * kw * c))


ANALYTIC_COUNTS.update({
    'FusedNonLocal2d': _non_local_count,
    'DANetPositionAttention': _position_attention_count,
    'DANetDualAttention': _dual_attention_count,
    'ACmix': _acmix_count,
    'DeformableConvV2': _deform_conv_count,
})


# ------------------------------------------------------------------------------------------
# counting a model
# ------------------------------------------------------------------------------------------
@dataclass
class Complexity:
    """Counts of one model on one input. Flops are multiply-adds (1 MAC = 1 flop)."""
    name: str
    input_shape: Tuple[int, ...]
    params: int
    flops: int  # executed, FlopAnalyzer total
    flops_released: int
    macs_paper: int  # conv + linear multiply-adds, attention as released
    attn_params: int = 0
    attn_flops: int = 0
    attn_flops_released: int = 0
    attn_macs_paper: int = 0
    attn_modules: int = 0
    attn_classes: Dict[str, int] = field(default_factory=dict)
    analytic: bool = False  # whether some attention module was counted analytically
    by_operator: Counter = field(default_factory=Counter)
    uncounted_ops: Counter = field(default_factory=Counter)
    task: str = ''
    config: str = ''

    # paper units
    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / GIGA

    @property
    def gflops_released(self) -> float:
        return self.flops_released / GIGA

    @property
    def gflops_paper(self) -> float:
        return self.macs_paper / PAPER_GIGA


def attention_modules(model: nn.Module,
                      class_names: Optional[Iterable[str]] = None) -> Dict[str, nn.Module]:
    """``{name: module}`` of the outermost modules of ``model`` whose class is registered by
    mmattn (``attention_class_names()``)."""
    if class_names is None:
        from mmattn.models.layers import attention_class_names
        class_names = attention_class_names()
    class_names = set(class_names)
    found: Dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in class_names:
            continue
        if any(name.startswith(outer + '.') for outer in found):
            continue
        found[name] = module
    return found


def _sdpa_flop_jit(inputs, outputs) -> int:
    """``scaled_dot_product_attention`` and ``ChunkedSoftmaxAttention``: the (Lq x Lk) logits and
    the aggregation,
    ``batch * Lq * Lk * (d_qk + d_v)`` multiply-adds, as the explicit form would count them."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(value) for value in inputs[:3])
    batch = 1
    for size in q[:-2]:
        batch *= size
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _modulated_deform_conv_flop_jit(inputs, outputs) -> int:
    """mmcv's ``ModulatedDeformConv2dFunction`` (inputs: x, offset, mask, weight, ...): one
    multiply-add per output element and weight tap, like a convolution."""
    from mmengine.analysis.jit_handles import get_shape
    weight, out = get_shape(inputs[3]), get_shape(outputs[0])
    taps = 1
    for size in weight[1:]:
        taps *= size
    total = taps
    for size in out:
        total *= size
    return total


def _contraction_flop_jit(inputs, outputs) -> int:
    """PSA's ``_FewRowProducts`` (a batched product with its own backward): one multiply-add
    per output element and step of the contracted dim, the rows' last."""
    from mmengine.analysis.jit_handles import get_shape
    total = get_shape(inputs[0])[-1]
    for size in get_shape(outputs[0]):
        total *= size
    return total


# operators FlopAnalyzer has no handle for, that mmattn's modules run
_EXTRA_HANDLES = {
    'aten::scaled_dot_product_attention': _sdpa_flop_jit,
    # DANet PAM on CPU (mmattn.models.layers.softmax_attention): same count as the fused kernel
    'prim::PythonOp.ChunkedSoftmaxAttention': _sdpa_flop_jit,
    'prim::PythonOp._FewRowProducts': _contraction_flop_jit,
    'prim::PythonOp.ModulatedDeformConv2dFunction': _modulated_deform_conv_flop_jit,
}


def _tensor_mode(model: nn.Module, data_samples=None) -> Callable:
    """A forward taking the image tensor only: OpenMMLab models in ``mode='tensor'`` (what
    mmseg's, mmpose's and mmdet's get_flops trace), any other module as it is."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return model.forward
    if 'mode' in params:
        kwargs = dict(mode='tensor')
        if 'data_samples' in params:
            kwargs['data_samples'] = data_samples
        return functools.partial(model.forward, **kwargs)
    return model.forward


def analyze_model(model: nn.Module, input_shape: Sequence[int], name: str = '',
                  class_names: Optional[Iterable[str]] = None,
                  inputs: Optional[torch.Tensor] = None, data_samples=None) -> Complexity:
    """Count ``model`` on a random input of ``input_shape`` (``(C, H, W)`` or ``(N, C, H,
    W)``) with mmengine's ``FlopAnalyzer`` and ``parameter_count``. ``data_samples`` go to a
    ``mode='tensor'`` forward (a two-stage detector's proposals need the image shapes)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count

    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, ) + shape
    if inputs is None:
        param = next(model.parameters(), None)
        inputs = torch.randn(shape, device=param.device if param is not None else None)
    attention = attention_modules(model, class_names)

    # record the input shape of every attention call for the analytic counts
    seen: Dict[str, List[Tuple[int, ...]]] = {n: [] for n in attention}
    handles = []
    for attn_name, module in attention.items():
        def record(mod, args, _name=attn_name):
            seen[_name].append(tuple(int(s) for s in args[0].shape))
        handles.append(module.register_forward_pre_hook(record))

    original_forward = model.__dict__.get('forward')
    model.forward = _tensor_mode(model, data_samples)
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(model, (inputs, ))
        analyzer.set_op_handle(**_EXTRA_HANDLES)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        with torch.no_grad():
            total = analyzer.total()
        by_operator = Counter(analyzer.by_operator())
        by_module = analyzer.by_module()
        uncounted = Counter(analyzer.unsupported_ops())
    finally:
        for handle in handles:
            handle.remove()
        if original_forward is None:
            del model.forward
        else:
            model.forward = original_forward
        model.train(was_training)

    params = parameter_count(model)['']
    attn_params = sum(p.numel() for m in attention.values() for p in m.parameters())
    attn_flops = attn_released = attn_paper = 0
    paper = sum(by_operator.get(op, 0) for op in PAPER_OPS)
    analytic = False
    classes: Counter = Counter()
    for attn_name, module in attention.items():
        cls = type(module).__name__
        classes[cls] += 1
        executed_ops = Counter(analyzer.by_operator(attn_name)) if attn_name in by_module \
            else Counter()
        executed = sum(executed_ops.values())
        executed_paper = sum(executed_ops.get(op, 0) for op in PAPER_OPS)
        counter = ANALYTIC_COUNTS.get(cls)
        if counter is not None and seen[attn_name]:
            released_ops = Counter()
            for call_shape in seen[attn_name]:
                released_ops.update(counter(module, call_shape))
            analytic = True
        else:
            released_ops = executed_ops
        attn_flops += executed
        attn_released += sum(released_ops.values())
        attn_paper += sum(released_ops.get(op, 0) for op in PAPER_OPS)
        paper -= executed_paper
    paper += attn_paper
    return Complexity(
        name=name, input_shape=shape, params=params, flops=total,
        flops_released=total - attn_flops + attn_released, macs_paper=paper,
        attn_params=attn_params, attn_flops=attn_flops, attn_flops_released=attn_released,
        attn_macs_paper=attn_paper, attn_modules=len(attention), attn_classes=dict(classes),
        analytic=analytic, by_operator=by_operator,
        uncounted_ops=Counter({k: v for k, v in uncounted.items()
                               if k not in _SILENT_UNCOUNTED}))


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------
def disable_pretrained(node) -> int:
    """Set every ``pretrained`` key to None and drop every ``init_cfg`` that loads a
    checkpoint, in place (nested dicts and lists); return how many were changed."""
    count = 0
    if isinstance(node, dict):
        for key in list(node.keys()):
            value = node[key]
            if key == 'pretrained' and value is not None and not isinstance(value, bool):
                node[key] = None
                count += 1
            elif key == 'init_cfg' and _loads_checkpoint(value):
                node[key] = None
                count += 1
            else:
                count += disable_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            count += disable_pretrained(item)
    return count


def _loads_checkpoint(init_cfg) -> bool:
    if isinstance(init_cfg, dict):
        return init_cfg.get('type') == 'Pretrained' or 'checkpoint' in init_cfg
    if isinstance(init_cfg, (list, tuple)):
        return any(_loads_checkpoint(c) for c in init_cfg)
    return False


class ConfigError(ValueError):
    """A config this module cannot count, with the reason in one line."""


def _check_scope(cfg, path: str) -> None:
    """The package of the config's ``default_scope`` must be importable: without it the model's
    types cannot be found (mmengine only warns and then fails on the first type)."""
    scope = cfg.get('default_scope')
    if scope and importlib.util.find_spec(scope) is None:
        raise ConfigError(f'{path}: default_scope {scope!r} needs the package {scope!r}, which '
                          f'is not installed here (models of installed OpenMMLab packages can '
                          f'be counted: mmseg, mmpose, mmdet, ...)')


def load_config(path: str, cfg_options: Optional[dict] = None):
    """The config at ``path`` with ``cfg_options`` merged and pretrained weights disabled."""
    from mmengine.config import Config

    import mmattn  # noqa: F401  (registers the modules, as custom_imports would)
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # noqa: BLE001 - e.g. a `_base_ = 'pkg::...'` of a missing package
        raise ConfigError(f'cannot load config {path}: {type(exc).__name__}: '
                          f'{" ".join(str(exc).split())}') from exc
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    _check_scope(cfg, path)
    if not isinstance(cfg.get('model'), dict):
        raise ConfigError(f'{path} defines no model dict')
    disable_pretrained(cfg._cfg_dict['model'])
    return cfg


def _test_resize_shape(cfg) -> Optional[Tuple[int, int]]:
    """(H, W) of the test pipeline's fixed ``Resize`` (mmdet gives ``scale`` as (W, H))."""
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    pipeline = (loader.get('dataset') or {}).get('pipeline') or cfg.get('test_pipeline') or []
    for step in pipeline:
        scale = step.get('scale') if isinstance(step, dict) else None
        if 'Resize' in str(step.get('type', '')) and isinstance(scale, (list, tuple)) and \
                len(scale) == 2:
            return int(scale[1]), int(scale[0])
    return None


def default_input_shape(cfg) -> Tuple[int, int]:
    """``(H, W)`` the config trains or tests on: the codec's ``input_size`` (mmpose, given as
    W, H), ``crop_size`` (mmseg, given as H, W), else the test pipeline's ``Resize`` scale
    (mmdet, given as W, H), padded up to the data preprocessor's ``pad_size_divisor``."""
    codec = cfg.get('codec')
    if isinstance(codec, (list, tuple)) and codec:
        codec = codec[0]
    if isinstance(codec, dict) and codec.get('input_size') is not None:
        w, h = codec['input_size'][:2]
        return int(h), int(w)
    for key in ('crop_size', 'img_scale', 'input_size'):
        size = cfg.get(key)
        if size is not None:
            if isinstance(size, int):
                return size, size
            return int(size[0]), int(size[1])
    preprocessor = cfg.get('model', {}).get('data_preprocessor') or {}
    if preprocessor.get('size'):
        return tuple(int(s) for s in preprocessor['size'])[:2]
    resized = _test_resize_shape(cfg)
    if resized is not None:
        divisor = int(preprocessor.get('pad_size_divisor') or 1)
        return tuple(-(-s // divisor) * divisor for s in resized)
    raise ConfigError('cannot find the input size in the config (codec.input_size, crop_size, '
                      'a test pipeline Resize scale); give --shape H W')


def build_model(cfg) -> nn.Module:
    """Build ``cfg.model`` in the config's scope, SyncBN reverted to BN, in eval mode."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    scope = cfg.get('default_scope')
    if scope:
        init_default_scope(scope)
    try:
        model = MODELS.build(copy.deepcopy(cfg.model))
    except KeyError as exc:  # a type no imported package registers
        raise ConfigError(f'cannot build the model: {" ".join(str(exc).strip(chr(39)).split())} '
                          f'(default_scope: {scope!r}; a type of another OpenMMLab package '
                          f'needs that package installed and the config\'s default_scope set '
                          f'to it)') from exc
    model = revert_sync_batchnorm(model)
    model.eval()
    return model


def _data_samples(cfg, shape: Tuple[int, int]):
    """Data samples with the image shapes for an mmdet model's ``tensor`` forward (a two-stage
    detector's RPN reads them to decode proposals), else None."""
    if cfg.get('default_scope') != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    h, w = shape
    return [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                        batch_input_shape=(h, w), scale_factor=(1.0, 1.0)))]


def analyze_config(path: str, shape: Optional[Sequence[int]] = None,
                   cfg_options: Optional[dict] = None) -> Complexity:
    """Build the model of the config at ``path`` and count it at ``shape`` ``(H, W)`` (default:
    the config's own input size)."""
    cfg = load_config(path, cfg_options)
    if shape is None:
        shape = default_input_shape(cfg)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        shape = shape * 2
    model = build_model(cfg)
    in_channels = 3
    result = analyze_model(model, (in_channels, ) + shape[-2:], name=_stem(path),
                           data_samples=_data_samples(cfg, shape[-2:]))
    result.task = cfg.get('default_scope') or ''
    result.config = path
    return result


def _stem(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def find_baseline(config: str, candidates: Iterable[str]) -> Optional[str]:
    """The config among ``candidates`` whose name is ``config``'s with one ``-<part>`` removed
    inside a single ``_``-separated field (``...hrnet-w48-psa-p_udp...`` ->
    ``...hrnet-w48_udp...``); the longest such name, or None."""
    name = _stem(config)
    best = None
    for cand in candidates:
        other = _stem(cand)
        if len(other) >= len(name):
            continue
        i = 0
        while i < len(other) and other[i] == name[i]:
            i += 1
        removed = name[i:len(name) - (len(other) - i)]
        if not name.endswith(other[i:]) or not removed.startswith('-') or '_' in removed:
            continue
        if best is None or len(other) > len(_stem(best)):
            best = cand
    return best


# ------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------
def _pct(delta: float, base: float) -> str:
    return f'{100.0 * delta / base:+.1f}%' if base else 'n/a'


CONVENTIONS_TEXT = (
    'FLOPs: mmengine.analysis.FlopAnalyzer, one fused multiply-add = one flop (conv, linear, '
    'matmul count MACs;\nnorm/upsample/pool per element; softmax, sigmoid, elementwise mul/add '
    'not counted); G = 1e9.\n'
    '  executed  = the ops the forward runs (what mmseg/mmpose get_flops print)\n'
    '  released  = attention modules counted as their released code computes them (analytic)\n'
    '  paper     = HRNet code-base convention of the HRNet/PSA papers: conv+linear MACs only, '
    'attention as released, G = 2**30')


def format_report(result: Complexity, baseline: Optional[Complexity] = None) -> str:
    """Plain-text report of one model (and its overhead over ``baseline``)."""
    n, c, h, w = result.input_shape
    lines = [f'config: {result.config or result.name}',
             f'task: {result.task or "-"}    input: {n}x{c}x{h}x{w}', CONVENTIONS_TEXT, '']
    header = f'{"":26s}{"params (M)":>12s}{"GFLOPs executed":>17s}' \
             f'{"GFLOPs released":>17s}{"GFLOPs paper":>14s}'
    lines.append(header)
    lines.append(f'{"model":26s}{result.mparams:12.3f}{result.gflops:17.3f}'
                 f'{result.gflops_released:17.3f}{result.gflops_paper:14.2f}')
    classes = ', '.join(f'{k} x{v}' for k, v in result.attn_classes.items())
    if result.attn_modules:
        label = f'attention ({result.attn_modules})'
        lines.append(f'{label:26s}{result.attn_params / 1e6:12.3f}'
                     f'{result.attn_flops / GIGA:17.3f}'
                     f'{result.attn_flops_released / GIGA:17.3f}'
                     f'{result.attn_macs_paper / PAPER_GIGA:14.2f}')
        lines.append(f'  attention modules: {classes}'
                     + ('' if result.analytic else ' (no analytic count: released = executed)'))
    else:
        lines.append('  no mmattn attention module in this model')
    if baseline is not None:
        lines.append(f'{"baseline":26s}{baseline.mparams:12.3f}{baseline.gflops:17.3f}'
                     f'{baseline.gflops_released:17.3f}{baseline.gflops_paper:14.2f}')
        dp = result.params - baseline.params
        df = result.flops - baseline.flops
        dr = result.flops_released - baseline.flops_released
        dpa = result.macs_paper - baseline.macs_paper
        lines.append(f'{"overhead":26s}{dp / 1e6:+12.3f}{df / GIGA:+17.3f}{dr / GIGA:+17.3f}'
                     f'{dpa / PAPER_GIGA:+14.2f}')
        lines.append(f'{"overhead %":26s}{_pct(dp, baseline.params):>12s}'
                     f'{_pct(df, baseline.flops):>17s}{_pct(dr, baseline.flops_released):>17s}'
                     f'{_pct(dpa, baseline.macs_paper):>14s}')
        lines.append(f'  baseline: {baseline.config or baseline.name}')
    if result.uncounted_ops:
        ops = ', '.join(f'{k} x{v}' for k, v in sorted(result.uncounted_ops.items()))
        lines.append(f'  not counted by FlopAnalyzer (beyond elementwise ops): {ops}')
    return '\n'.join(lines)


TABLE_HEADER = ('| Config | Input | Attention | Params (M) | GFLOPs executed | '
                'GFLOPs released | GFLOPs paper |\n'
                '|---|---|---|---|---|---|---|')


def _cell(value: float, base: Optional[float], digits: int) -> str:
    if base is None:
        return f'{value:.{digits}f}'
    return f'{value:.{digits}f} ({value - base:+.{digits}f}, {_pct(value - base, base)})'


def markdown_row(result: Complexity, baseline: Optional[Complexity] = None) -> str:
    _, _, h, w = result.input_shape
    attn = ', '.join(f'{k} x{v}' for k, v in result.attn_classes.items()) or '-'
    b = baseline
    return (f'| {result.name} | {h}x{w} | {attn} '
            f'| {_cell(result.mparams, b.mparams if b else None, 2)} '
            f'| {_cell(result.gflops, b.gflops if b else None, 2)} '
            f'| {_cell(result.gflops_released, b.gflops_released if b else None, 2)} '
            f'| {_cell(result.gflops_paper, b.gflops_paper if b else None, 2)} |')


@dataclass
class Failure:
    """A config that could not be counted (its row in a table says why)."""
    name: str
    error: str


def markdown_table(results: Sequence, baselines: Optional[Dict[str, Optional[Complexity]]] = None
                   ) -> str:
    """A markdown table, one row per :class:`Complexity` (or :class:`Failure`); ``baselines``
    maps a result's name to the result its overhead is taken over (cells then read
    ``value (+delta, +percent)``)."""
    baselines = baselines or {}
    rows = [TABLE_HEADER]
    for result in results:
        if isinstance(result, Failure):
            error = ' '.join(result.error.split()).replace('|', '/')
            rows.append(f'| {result.name} | - | not counted: {error} | - | - | - | - |')
            continue
        base = baselines.get(result.name)
        rows.append(markdown_row(result, base if isinstance(base, Complexity) else None))
    return '\n'.join(rows)


def write_markdown(path: str, text: str, marker: str = 'complexity-table',
                   heading: str = '## Complexity') -> None:
    """Put ``text`` between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` in the
    markdown file at ``path``; without those markers, append a ``heading`` section holding them
    (inside ``<!-- complexity:start/end -->``). Everything else in the file is kept."""
    start, end = f'<!-- {marker}:start -->', f'<!-- {marker}:end -->'
    block = f'{start}\n{text.rstrip()}\n{end}'
    content = ''
    if osp.exists(path):
        with open(path, encoding='utf-8') as f:
            content = f.read()
    pattern = re.compile(re.escape(start) + r'.*?' + re.escape(end), re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: block, content, count=1)
    else:
        section = f'<!-- complexity:start -->\n{heading}\n\n{block}\n<!-- complexity:end -->\n'
        content = (content.rstrip() + '\n\n' if content.strip() else '') + section
    with open(path, 'w', encoding='utf-8') as f:
        f.write(content)
