"""Benchmark of single attention modules: forward and forward+backward time, peak memory, the
plain formulation (``mmattn.testing.plain``) as baseline and ``torch.compile`` against eager.

One case = one module at one feature shape, batch size, dtype and device. Variants of a case:

* ``module``: the module as shipped (eager);
* ``plain``: the plain formulation with the same module's weights, on the same input (only for
  modules that have one, see :func:`mmattn.testing.plain.has_plain`);
* ``compiled``: ``torch.compile(module)`` (with ``--compile``);
* with ``peers=True``: the other libraries' classes of :mod:`mmattn.benchmark.peers` with the
  module's weights (named by their label, e.g. ``timm SEModule``), and the A/A control
  ``A/A copy``, a deep copy of the module measured as if it were a peer (its ratios show the
  noise of the run).

Phases: ``fwd`` is inference (``eval()``, ``torch.no_grad()``); ``fwdbwd`` is training
(``train()``, input requiring grad, forward, ``backward`` of a fixed random output gradient,
parameter and input gradients reset to None before each call). Under ``autocast`` the forward
runs in ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA), the backward outside it, as in
AMP training. In each phase the first call of every variant is run under the memory meter
(see :mod:`mmattn.benchmark.memory`) and doubles as warm-up; then the variants are timed in
turns (:func:`mmattn.benchmark.timing.time_interleaved`), median of the repetitions.
"""
import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmattn.testing.weights import randomise
from .memory import GiB, peak_bytes, predict_peak_bytes
from .shapes import FeatureShape
from .timing import median, reps_within, time_call, time_interleaved

__all__ = ['Case', 'CaseResult', 'module_kwargs', 'build_module', 'run_case', 'autocast_dtype',
           'PHASES']

PHASES = ('fwd', 'fwdbwd')


@dataclass
class Case:
    """What to measure: module short name, feature shape, batch size."""
    name: str
    shape: FeatureShape
    batch: int
    tag: str = ''  # e.g. 'target' for the cases of report.TARGETS


@dataclass
class CaseResult:
    name: str
    cls: str
    shape: str  # CxHxW
    source: str
    channels: int
    height: int
    width: int
    batch: int
    dtype: str
    device: str
    plain: str  # description of the baseline, '' when the module is its own plain form
    tag: str = ''
    # per phase -> per variant -> median seconds / peak bytes / predicted bytes
    times: Dict[str, Dict[str, float]] = field(default_factory=dict)
    samples: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    peak: Dict[str, Dict[str, int]] = field(default_factory=dict)
    predicted: Dict[str, Dict[str, Optional[int]]] = field(default_factory=dict)
    skipped: Dict[str, Dict[str, str]] = field(default_factory=dict)
    compile_s: Optional[float] = None
    compile_error: str = ''
    graph_breaks: Optional[int] = None
    max_rel_err: Dict[str, float] = field(default_factory=dict)  # variant vs module (fwd)
    peers: List[str] = field(default_factory=list)  # peer variants, A/A control last
    peer_skipped: List[str] = field(default_factory=list)  # why a peer was not built
    profiled_time: List[str] = field(default_factory=list)  # phases timed by the profiled call
    error: str = ''

    def to_dict(self) -> dict:
        return asdict(self)


def module_kwargs(name: str) -> dict:
    """Constructor arguments the benchmark adds to ``build_attention(name, C)``."""
    if name == 'spd':
        return dict(pad_odd=True)  # pose 384x288 gives odd maps (12x9)
    return {}


def build_module(name: str, channels: int, device='cpu', seed: int = 0) -> nn.Module:
    from mmattn.models.layers import build_attention
    torch.manual_seed(seed)
    module = build_attention(name, channels, **module_kwargs(name))
    # constant initial parameters (residual gammas, zero-init norms) perturbed, so that no
    # branch is skipped by a shortcut and the outputs compared are not the input
    return randomise(module, seed, scale=0.1, only_constant=True).to(device)


def autocast_dtype(device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == 'cuda' else torch.bfloat16


def _autocast(dtype: str, device):
    if dtype == 'autocast':
        dev = torch.device(device).type
        return lambda: torch.autocast(dev, dtype=autocast_dtype(device))
    return contextlib.nullcontext


def _graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(sum(counters['graph_break'].values()))
    except Exception:  # noqa: BLE001
        return 0


def _first_line(exc: BaseException) -> str:
    text = f'{type(exc).__name__}: {exc}'.strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    scale = b.abs().max().clamp_min(1e-12)
    return float((a - b).abs().max() / scale)


def run_case(case: Case, dtype: str = 'float32', device='cpu', reps: int = 5,
             compile: bool = False, max_mem_bytes: Optional[int] = 6 * GiB,
             budget_s: Optional[float] = 10.0, with_plain: bool = True,
             predict_only: bool = False, peers: bool = False,
             log: Callable[[str], None] = print) -> CaseResult:
    """Measure one case (see the module docstring); never raises, errors land in
    ``result.error`` / ``result.skipped``. ``predict_only``: only the fake-tensor memory
    prediction (no arithmetic), every variant marked ``not run``."""
    from mmattn.testing.plain import has_plain, plain_description, plain_forward

    shape, n = case.shape, case.batch
    device = torch.device(device)
    result = CaseResult(
        name=case.name, cls='', shape=shape.label, source=shape.source, channels=shape.channels,
        height=shape.height, width=shape.width, batch=n, dtype=dtype, device=str(device),
        plain='', tag=case.tag)
    try:
        module = build_module(case.name, shape.channels, device)
    except Exception as exc:  # noqa: BLE001
        result.error = f'build failed: {_first_line(exc)}'
        return result
    result.cls = type(module).__name__
    plain = with_plain and has_plain(module)
    result.plain = plain_description(module) if plain else ''

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, shape.channels, shape.height, shape.width, generator=gen).to(device)
    autocast = _autocast(dtype, device)

    forwards: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {'module': module}
    if plain:
        forwards['plain'] = lambda t: plain_forward(module, t)
    if compile:
        torch._dynamo.reset()
        forwards['compiled'] = torch.compile(module)
    others: List[nn.Module] = []  # peers and the A/A copy: own parameters, own train mode
    if peers:
        from .peers import AA_CONTROL, build_peers
        built, result.peer_skipped = build_peers(case.name, module)
        built[AA_CONTROL] = copy.deepcopy(module)
        for label, peer in built.items():
            forwards[label] = peer
            others.append(peer)
        result.peers = list(built)

    params = [p for m in [module] + others for p in m.parameters()]
    grads: Dict[torch.dtype, torch.Tensor] = {}

    def out_grad(y: torch.Tensor) -> torch.Tensor:
        if y.dtype not in grads or grads[y.dtype].shape != y.shape:
            g = torch.Generator().manual_seed(2)
            grads[y.dtype] = torch.randn(y.shape, generator=g).to(device=device, dtype=y.dtype)
        return grads[y.dtype]

    def make_fwd(f):
        def call():
            with torch.no_grad(), autocast():
                return f(x)
        return call

    xg = x.clone().requires_grad_(True)

    def reset_grads():
        for p in params:
            p.grad = None
        xg.grad = None

    def make_fwdbwd(f):
        def run():
            with autocast():
                y = f(xg)
            y.backward(out_grad(y))

        def call():
            reset_grads()  # frees the previous call's gradients (timed alike for all)
            run()
        call.run = run
        return call

    # ---- memory budget: predict each eager variant's peak on fake tensors, skip what won't fit
    for phase in PHASES:
        result.predicted[phase] = {}
        result.skipped[phase] = {}
    for variant in ('module', 'plain'):
        if variant not in forwards:
            continue
        for phase in ('fwdbwd', 'fwd'):
            fits = result.predicted['fwdbwd'].get(variant)
            if phase == 'fwd' and not predict_only and fits is not None and \
                    (max_mem_bytes is None or fits <= max_mem_bytes):
                continue  # the forward alone needs less than forward + backward

            def make_call(fake, phase=phase, variant=variant):
                mod = fake.module
                mod.train(phase == 'fwdbwd')
                fn = mod if variant == 'module' else (lambda t: plain_forward(mod, t))
                if phase == 'fwd':
                    xf = fake(x)

                    def call():
                        with torch.no_grad(), autocast():
                            return fn(xf)
                    return call
                xf = fake(xg)
                prm = list(mod.parameters())

                def call():
                    with autocast():
                        y = fn(xf)
                    y.backward(torch.ones_like(y))
                    for p in prm:
                        p.grad = None
                return call

            predicted = predict_peak_bytes(make_call, module)
            result.predicted[phase][variant] = predicted
            if max_mem_bytes is not None and predicted is not None and \
                    predicted > max_mem_bytes:
                result.skipped[phase][variant] = f'skipped: needs {predicted / GiB:.1f} GiB'
    if predict_only:
        for phase in PHASES:
            for variant, value in result.predicted[phase].items():
                if variant not in result.skipped[phase]:
                    need = '?' if value is None else f'{value / GiB:.2f}'
                    result.skipped[phase][variant] = f'not run: predicted {need} GiB'
        return result
    # the compiled variant is skipped where the eager module is
    if 'compiled' in forwards:
        for phase in PHASES:
            if 'module' in result.skipped[phase]:
                result.skipped[phase]['compiled'] = result.skipped[phase]['module']

    # ---- phases (the compiled variant is compiled once per phase, untimed)
    for phase in PHASES:
        for m in [module] + others:
            m.train(phase == 'fwdbwd')
        make = make_fwd if phase == 'fwd' else make_fwdbwd
        calls = {v: make(f) for v, f in forwards.items() if v not in result.skipped[phase]}
        if 'compiled' in calls:
            breaks = _graph_breaks()
            start = time.perf_counter()
            try:
                time_call(calls['compiled'], device)
                result.compile_s = (result.compile_s or 0.0) + time.perf_counter() - start
                result.graph_breaks = (result.graph_breaks or 0) + _graph_breaks() - breaks
            except Exception as exc:  # noqa: BLE001
                result.compile_error = _first_line(exc)
                result.skipped[phase]['compiled'] = f'compile failed: {result.compile_error}'
                del calls['compiled']
        result.peak[phase] = {}
        first: Dict[str, float] = {}
        outputs: Dict[str, torch.Tensor] = {}
        for variant in list(calls):
            start = time.perf_counter()
            try:
                if phase == 'fwd':
                    holder = {}

                    def keep(call=calls[variant], holder=holder):
                        holder['y'] = call()
                    result.peak[phase][variant] = peak_bytes(keep, device)
                    outputs[variant] = holder.pop('y')
                else:
                    # gradients of the previous call freed outside the measured region
                    reset_grads()
                    result.peak[phase][variant] = peak_bytes(calls[variant].run, device)
            except Exception as exc:  # noqa: BLE001
                result.skipped[phase][variant] = f'failed: {_first_line(exc)}'
                del calls[variant]
                if variant == 'compiled':
                    result.compile_error = result.compile_error or _first_line(exc)
                continue
            first[variant] = time.perf_counter() - start
        for y in outputs.values():
            out_grad(y)  # the output gradients of the fwdbwd phase, made outside its meter
        if phase == 'fwd' and 'module' in outputs:
            for variant, y in outputs.items():
                if variant != 'module':
                    result.max_rel_err[variant] = _rel_err(y, outputs['module'])
        outputs.clear()
        if not calls:
            continue
        # repetitions: about budget_s in total, judged from the (profiled) first calls; a
        # phase slower than 3x the budget keeps the time of its profiled call (one sample:
        # the profiler adds little to a few long kernels)
        per_rep = sum(first.values())
        n_reps = reps
        if budget_s is not None and per_rep > 0:
            n_reps = reps_within(budget_s, per_rep, reps)
            if per_rep > 3 * budget_s:
                n_reps = 0
        if n_reps == 0:
            times = {v: [t] for v, t in first.items()}
            result.profiled_time.append(phase)
        else:
            times = time_interleaved(calls, reps=n_reps, warmup=0, device=device)
        result.samples[phase] = times
        result.times[phase] = {v: median(t) for v, t in times.items()}
        summary = ', '.join(f'{v} {1000 * s:.2f} ms' for v, s in result.times[phase].items())
        log(f'  {case.name} {shape.label} N={n} {dtype} {phase}: {summary} '
            f'({n_reps or "1 profiled"} reps)')
    return result


def grid(names: Sequence[str], shapes: Sequence[FeatureShape],
         batches: Sequence[int], tag: str = '') -> List[Case]:
    """Every module at every shape and batch size (module-major order)."""
    return [Case(name, shape, batch, tag) for name in names for shape in shapes
            for batch in batches]
