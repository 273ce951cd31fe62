"""One command for an attention ablation: the baseline and each variant trained and evaluated
on the same config, schedule, data and seeds, and the comparison table written
(``tools/analysis/compare_attention.py``).

Work dir layout::

    compare.json                   the settings of the comparison
    configs/<variant>.py           readable variant configs (_base_ = the base config)
    configs/<variant>.cost.json    params and FLOPs of the variant
    runs/<variant>/seed_<s>/       tools/train.py work dir (+ test/metrics.json, result.json)
    benchmark.json                 time and memory of all variants, measured interleaved
    events.jsonl                   what each invocation started, resumed, skipped, finished
    comparison.{md,csv,json,png}   the result
"""
import argparse
import fcntl
import os
import os.path as osp
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from mmattn.utils.paths import tools_root

from .report import summarise, write_outputs
from .runs import (ChildProcess, Launcher, RunSpec, fingerprint, read_json, run_dir_of, run_one,
                   write_json, _check_fingerprint)
from .variants import (BASELINE, Variant, VariantError, attention_variants, load_variants_file,
                       variant_config_text)

__all__ = ['CompareOptions', 'run_comparison', 'DEFAULT_METRICS', 'parse_cfg_options',
           'WorkDirBusy']

DEFAULT_METRICS = {'mmseg': 'mIoU', 'mmpose': 'coco/AP', 'mmdet': 'coco/bbox_mAP'}
# the folder holding the mmattn package: children import this mmattn first
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@dataclass
class CompareOptions:
    config: str
    work_dir: str
    attention: Sequence[str] = ()
    variants_file: Optional[str] = None
    preset: Optional[str] = None
    position: Optional[str] = None
    stages: Optional[Sequence[int]] = None
    block_types: Optional[Sequence[str]] = None
    branches: Optional[Sequence[int]] = None
    seeds: Sequence[int] = (0, )
    metric: Optional[str] = None
    cfg_options: List[str] = field(default_factory=list)  # k=v, train and test
    train_options: List[str] = field(default_factory=list)
    test_options: List[str] = field(default_factory=list)
    validate: bool = False
    retry_failed: bool = False
    shape: Optional[Sequence[int]] = None
    bench: bool = True
    bench_reps: int = 10
    bench_budget: float = 60.0
    bench_device: Optional[str] = None
    plot_x: str = 'gflops'
    # how tools/train.py and tools/test.py are started (torchrun settings, tools folder)
    launch: Launcher = field(default_factory=lambda: Launcher(tools_root()))
    dry_run: bool = False


def parse_cfg_options(options: Sequence[str]) -> dict:
    """``['a.b=1', 'c=[1,2]']`` as the dict mmengine's ``DictAction`` makes of them (what the
    tools do with the same strings)."""
    if not options:
        return {}
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *options]).o


def _write_text(path: str, text: str) -> None:
    if osp.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _recorded_options(opts: CompareOptions) -> dict:
    """The options as compare.json records them: without this machine's paths (the tools
    folder, the Python executable)."""
    options = asdict(opts)
    options['launch'] = {k: v for k, v in options['launch'].items()
                         if k not in ('tools_dir', 'python')}
    return options


class WorkDirBusy(RuntimeError):
    """Another invocation is running on the same work dir."""


class _WorkDirLock:
    """One invocation per work dir (per node): a second one would train the same runs."""

    def __init__(self, work_dir: str, node_rank: int):
        name = '.compare.lock' if node_rank == 0 else f'.compare.node{node_rank}.lock'
        self.path = osp.join(work_dir, name)
        self.file = None

    def __enter__(self):
        self.file = open(self.path, 'a+')
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip()
            self.file.close()
            raise WorkDirBusy(f'another compare_attention.py ({holder or "unknown pid"}) is '
                               f'running in {osp.dirname(self.path)}') from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f'pid {os.getpid()}\n')
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _install_signal_handlers() -> None:
    """SIGINT/SIGTERM/SIGHUP end the running child's process group and this process, without
    recording the interrupted run as failed (the next invocation resumes it)."""

    def handler(signum, frame):
        child = ChildProcess.current
        if child is not None:
            child.terminate()
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _base_info(opts: CompareOptions):
    from mmengine.config import Config
    if not osp.isfile(opts.config):
        raise FileNotFoundError(f'base config {opts.config} does not exist')
    cfg = Config.fromfile(opts.config)
    options = parse_cfg_options(opts.cfg_options)
    if options:
        cfg.merge_from_dict(options)
    scope = cfg.get('default_scope')
    model = cfg.get('model') or {}
    backbone = model.get('backbone')
    imports = (cfg.get('custom_imports') or {}).get('imports') or []
    if isinstance(imports, str):
        imports = [imports]
    backbone = backbone.to_dict() if hasattr(backbone, 'to_dict') else backbone
    return scope, backbone, imports, 'runner_type' not in cfg


def _variants(opts: CompareOptions) -> List[Variant]:
    if opts.variants_file and opts.attention:
        raise VariantError('give --attention or --variants, not both')
    if opts.variants_file:
        if opts.preset or opts.position or opts.stages or opts.block_types or opts.branches:
            raise VariantError('--preset/--position/--stages/--block-types/--branches apply to '
                               '--attention; in a variants file each variant has its own '
                               'placement')
        found = load_variants_file(opts.variants_file)
    elif opts.attention:
        found = attention_variants(opts.attention, opts.preset, opts.position, opts.stages,
                                   opts.block_types, opts.branches)
    else:
        raise VariantError('nothing to compare: give --attention NAME ... (or all) or '
                           '--variants FILE')
    return [Variant(BASELINE, None, 'the base config')] + found


def run_comparison(opts: CompareOptions, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the comparison; returns the paths of the outputs and the rows."""
    seeds = list(dict.fromkeys(int(s) for s in opts.seeds))
    if not seeds:
        raise ValueError('give at least one seed')
    scope, base_backbone, imports, add_runner = _base_info(opts)
    metric = opts.metric or DEFAULT_METRICS.get(scope)
    if metric is None:
        raise ValueError(f'no default metric for default_scope {scope!r}; give --metric')
    variants = _variants(opts)
    work_dir = osp.abspath(opts.work_dir)
    os.makedirs(osp.join(work_dir, 'configs'), exist_ok=True)
    launcher = opts.launch
    writer = launcher.writes_results

    # the variant configs, and the run definitions checked against what the work dir holds
    with open(opts.config, 'rb') as f:
        base_text = f.read().decode(errors='replace')
    configs, specs = {}, []
    texts = {}
    for variant in variants:
        texts[variant.name] = variant_config_text(variant, opts.config, base_backbone, imports,
                                                  resumable=add_runner)
        configs[variant.name] = osp.join(work_dir, 'configs', f'{variant.name}.py')
    for seed in seeds:
        for variant in variants:
            spec = RunSpec(
                variant.name, seed, configs[variant.name], run_dir_of(work_dir, variant.name, seed),
                train_options=list(opts.cfg_options) + list(opts.train_options),
                test_options=list(opts.cfg_options) + list(opts.test_options),
                validate=opts.validate)
            spec.fingerprint = fingerprint(texts[variant.name], base_text, spec.train_options,
                                           spec.test_options, seed, spec.validate)
            if osp.isdir(spec.run_dir):
                _check_fingerprint(spec, write=False)  # refuse before anything is written
            specs.append(spec)
    for name, text in texts.items():
        _write_text(configs[name], text)
    if opts.dry_run:
        for spec in specs:
            log(f'{spec.label}: {spec.config} -> {spec.run_dir}')
        return dict(configs=configs, specs=specs)

    with _WorkDirLock(work_dir, launcher.node_rank):
        _install_signal_handlers()
        settings = dict(
            base_config=osp.abspath(opts.config), metric=metric, seeds=seeds,
            variants=[dict(name=v.name, plugins=v.plugins, description=v.description)
                      for v in variants], options=_recorded_options(opts),
            task=scope)
        if writer:
            write_json(osp.join(work_dir, 'compare.json'), settings)
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO_ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])

        cfg_options = parse_cfg_options(opts.cfg_options)
        complexity = _count_all(variants, configs, texts, cfg_options, opts, work_dir, log) \
            if writer else {}
        broken = {name for name, cost in complexity.items() if cost.get('error')}

        def outputs(bench=None, final=False):
            if not writer:
                return None
            records = _records(variants, seeds, work_dir, metric)
            rows = summarise(variants, records, complexity, bench, seeds, metric)
            info = dict(settings, bench_text=_bench_text(bench), finished=final,
                        written=time.strftime('%Y-%m-%d %H:%M:%S'))
            return write_outputs(work_dir, rows, metric, info, opts.plot_x), rows

        for spec in specs:
            if spec.variant in broken:
                continue
            if opts.retry_failed and writer:
                _forget_failure(spec)
            run_one(spec, launcher, work_dir, metric, log, env=env)
            outputs()
        if not writer:
            return {}
        bench = None
        if opts.bench:
            bench = _benchmark(variants, configs, texts, broken, cfg_options, opts, work_dir, log)
        paths, rows = outputs(bench, final=True)
    log(f'comparison written: {", ".join(paths.values())}')
    return dict(paths=paths, rows=rows, configs=configs)


def _forget_failure(spec: RunSpec) -> None:
    path = osp.join(spec.run_dir, 'result.json')
    if osp.exists(path) and read_json(path).get('status') == 'failed':
        os.remove(path)


def _records(variants, seeds, work_dir, metric) -> Dict[str, List[dict]]:
    """The record of every finished run, its value taken for ``metric`` from the stored test
    metrics (so the table can be remade for another metric without re-running)."""
    records: Dict[str, List[dict]] = {}
    for variant in variants:
        for seed in seeds:
            path = osp.join(run_dir_of(work_dir, variant.name, seed), 'result.json')
            if not osp.exists(path):
                continue
            record = read_json(path)
            if record.get('status') == 'ok' and record.get('metric') != metric:
                metrics = record.get('metrics', {})
                if metric in metrics:
                    record.update(metric=metric, value=float(metrics[metric]))
                else:
                    record.update(status='failed', error=f'test: metric {metric!r} is not among '
                                  f'the test metrics {sorted(metrics)}')
            records.setdefault(variant.name, []).append(record)
    return records


def _count_all(variants, configs, texts, cfg_options, opts, work_dir, log) -> Dict[str, dict]:
    """Params and FLOPs of every variant (cached next to its config); a variant whose model
    cannot be built gets ``error`` and is not trained."""
    from .measure import count_variant
    out = {}
    for variant in variants:
        path = osp.join(work_dir, 'configs', f'{variant.name}.cost.json')
        key = fingerprint(texts[variant.name], cfg_options, opts.shape)
        if osp.exists(path):
            cached = read_json(path)
            if cached.get('key') == key:
                out[variant.name] = cached
                continue
        start = time.time()
        try:
            with warnings.catch_warnings():  # the libraries' deprecation notes, per variant
                warnings.simplefilter('ignore')
                cost = count_variant(configs[variant.name], cfg_options, opts.shape)
            log(f'[{variant.name}] {cost["params_m"]:.3f} M params, {cost["gflops"]:.3f} GFLOPs '
                f'executed, {cost["gflops_released"]:.3f} released ({time.time() - start:.1f} s)')
        except Exception as exc:  # noqa: BLE001  (the variant is reported, the others go on)
            error = f'build: {type(exc).__name__}: {exc}'.splitlines()[0][:400]
            cost = dict(error=error)
            log(f'[{variant.name}] cannot be built, not trained: {error}')
        cost['key'] = key
        write_json(path, cost)
        out[variant.name] = cost
    return out


def _benchmark(variants, configs, texts, broken, cfg_options, opts, work_dir, log):
    from .measure import benchmark_variants
    names = [v.name for v in variants if v.name not in broken]
    path = osp.join(work_dir, 'benchmark.json')
    key = fingerprint([texts[n] for n in names], names, cfg_options, opts.bench_reps,
                      opts.bench_budget, opts.bench_device)
    if osp.exists(path):
        cached = read_json(path)
        if cached.get('key') == key:
            return cached
    if not names:
        return None
    log(f'benchmark: {len(names)} variants, train and test step interleaved')
    bench = benchmark_variants({n: configs[n] for n in names}, cfg_options, opts.bench_device,
                               opts.bench_reps, opts.bench_budget, log)
    bench['key'] = key
    write_json(path, bench)
    return bench


def _bench_text(bench: Optional[dict]) -> str:
    if not bench:
        return 'not measured'
    s = bench['settings']
    return (f"`train_step` (batch {s['train_batch']}) and `test_step` (batch {s['test_batch']}, "
            f"per image) of each model on the same real batch, {s['device']}, "
            f"{s['threads']} threads, variants interleaved, median of up to {s['reps']} "
            f"repetitions; peak memory of one training step above what was live before it; "
            f"'train s/iter (runs)' is the median logged iteration time of the training runs")
