"""Command line of ``tools/analysis/benchmark.py`` (see its docstring)."""
import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import time
from typing import List, Optional

__all__ = ['parse_args', 'main', 'hardware', 'write_readme_section']

DOC = """Performance benchmark of the mmattn attention modules and of the shipped configs.

Modules: for every module of the zoo (``mmattn.list_attention()``) at the HRNet-W48 branch
shapes of the shipped configs (pose 256x192 and 384x288, Cityscapes 512x1024 crops), batch
sizes 1 and 8, float32 and autocast (bfloat16 on CPU, float16 on CUDA), on CPU and on CUDA
when present: forward (inference) and forward+backward (training) time, median of interleaved
repetitions, and peak memory (CPU: PyTorch profiler allocation events; CUDA:
max_memory_allocated), against the plain formulation of ``mmattn.testing.plain`` with the same
weights and input. ``--compile`` adds ``torch.compile(module)`` against eager.

Peers (``--peers``): the same modules against the implementations users would otherwise pick
(timm ``SEModule``, ``EcaModule``, ``CbamModule``, ``GlobalContext``, ``NonLocalAttn``,
``CoordAttn``; mmcv ``ContextBlock``, ``NonLocal2d``; the layouts of released and widely
copied code, the authors' PSA and DANet PAM; see ``mmattn.benchmark.peers``) with the same
weights, outputs compared, and an A/A control (the module against its deep copy); ratios
peer / mmattn of time and peak memory, those below 0.95 flagged. timm is an optional
benchmark dependency (``pip install timm``); without it its peers are skipped.

Models (``--models CONFIG ...``): inference pass and training iteration of each config against
its baseline config (same folder, name without ``-psa-p`` etc.), with the FLOPs overhead of
``mmattn.analysis`` (``tools/analysis/get_flops.py``).

Writes ``benchmark.md`` (tables), ``benchmark.png`` (time and memory against resolution, per
module) and ``results.json`` into ``--out``.

Examples::

    python tools/analysis/benchmark.py --quick
    python tools/analysis/benchmark.py --modules psa_p psa_s --shapes pose256 --batch 8
    python tools/analysis/benchmark.py --targets --modules acmix --shapes pose256:s4
    python tools/analysis/benchmark.py --peers --shapes pose256@8 --threads 1
    python tools/analysis/benchmark.py --models \\
        configs/psa/td-hm_hrnet-w48-psa-p_udp-8xb32-210e_coco-256x192.py --modules
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=DOC.splitlines()[0], epilog=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help='one small shape (pose256:s32, 384x8x6), batch 2, float32, 2 reps '
                        '(for tests and smoke runs)')
    parser.add_argument('--modules', nargs='*', default=None,
                        help='short names (default: all of mmattn.list_attention()); give the '
                        'flag without names to benchmark no module (models only)')
    parser.add_argument('--shapes', nargs='+', default=None,
                        help='shape sets pose256, pose384, city (optionally :s4/:s8/:s16/:s32) '
                        'or CxHxW, optionally with their own batch sizes after @ (city@1, '
                        'pose256@1,8); default: pose256 pose384 city')
    parser.add_argument('--batch', type=int, nargs='+', default=None,
                        help='batch sizes of the module cases (default: 1 8)')
    parser.add_argument('--device', nargs='+', default=['auto'],
                        help='cpu, cuda or auto (cpu, and cuda when present; default)')
    parser.add_argument('--dtype', nargs='+', default=None, choices=['float32', 'autocast'],
                        help='default: float32 autocast')
    parser.add_argument('--compile', action='store_true',
                        help='also run torch.compile(module) and compare with eager')
    parser.add_argument('--compile-shapes', nargs='+', default=None,
                        help='with --compile: compile only at these shapes (same syntax as '
                        '--shapes; default: every shape)')
    parser.add_argument('--compile-skip', nargs='+', default=[], metavar='NAME',
                        help='with --compile: modules not to compile (e.g. acmix, whose '
                        'unrolled 49-offset window loop takes minutes to compile on a CPU)')
    parser.add_argument('--targets', action='store_true',
                        help="add the target cases: Non-local and DANet PAM at C=512, "
                        'N=2, 32x64 / 64x128 / 128x256; ACmix at C=64, 56x56, N=8')
    parser.add_argument('--targets-full', action='store_true',
                        help='with --targets: also run (not only predict the memory of) the '
                        '128x256 Non-local / PAM cases (minutes per case on a CPU)')
    parser.add_argument('--models', nargs='+', default=None, metavar='CONFIG',
                        help='configs to time against their baseline configs')
    parser.add_argument('--model-batch', type=int, default=8,
                        help='batch size of the whole-model runs (default 8)')
    parser.add_argument('--model-phases', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train'])
    parser.add_argument('--reps', type=int, default=7, help='repetitions per case (max)')
    parser.add_argument('--budget', type=float, default=10.0,
                        help='seconds of timed repetitions per case and phase; fewer reps '
                        '(at least 3, or 1 when one rep exceeds it) when slower')
    parser.add_argument('--model-reps', type=int, default=5)
    parser.add_argument('--model-budget', type=float, default=60.0)
    parser.add_argument('--max-mem', type=float, default=6.0,
                        help='GiB; variants predicted to need more are skipped (default 6)')
    parser.add_argument('--no-plain', action='store_true', help='skip the plain baselines')
    parser.add_argument('--peers', action='store_true',
                        help='add the peers (timm, mmcv, released code) and the A/A control to '
                        'every module that has peers (default modules: those)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--out', default='work_dirs/benchmark', help='output folder')
    parser.add_argument('--readme', default=None, metavar='FILE',
                        help='also write the tables into FILE between <!-- benchmark-results:'
                        'start --> and <!-- benchmark-results:end --> (markers must exist)')
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes = args.shapes or ['pose256:s32']
        args.batch = args.batch or [2]
        args.dtype = args.dtype or ['float32']
        args.reps = min(args.reps, 2)
        args.budget = min(args.budget, 1.0)
        args.model_reps = min(args.model_reps, 1)
    args.shapes = args.shapes or ['pose256', 'pose384', 'city']
    args.batch = args.batch or [1, 8]
    args.dtype = args.dtype or ['float32', 'autocast']
    return args


def hardware(devices) -> str:
    """CPU model, cores and threads used; GPU name when CUDA is used; torch version."""
    import torch
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        info = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = info.get('Model name', model)
        if 'CPU family' in info and 'Model' in info:
            model += f' (family {info["CPU family"]}, model {info["Model"]})'
        flags = info.get('Flags', '').split()
        isa = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
        if isa:
            model += ' ' + '/'.join(isa)
    except (OSError, subprocess.SubprocessError):
        pass
    text = (f'CPU: {model}, {os.cpu_count()} cores, torch {torch.__version__} using '
            f'{torch.get_num_threads()} threads')
    try:
        with open('/proc/meminfo') as f:
            total = int(f.readline().split()[1]) / 2**20
        text += f', {total:.0f} GiB RAM'
    except (OSError, ValueError, IndexError):
        pass
    if any(str(d).startswith('cuda') for d in devices) and torch.cuda.is_available():
        text += f'; GPU: {torch.cuda.get_device_name(0)}'
    return text


def _load() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def _devices(tokens) -> List[str]:
    import torch
    out = []
    for token in tokens:
        if token == 'auto':
            out.append('cpu')
            if torch.cuda.is_available():
                out.append('cuda')
        elif token.startswith('cuda') and not torch.cuda.is_available():
            print(f'--device {token}: CUDA is not available, skipped', file=sys.stderr)
        else:
            out.append(token)
    return list(dict.fromkeys(out))


def write_readme_section(path: str, text: str, marker: str = 'benchmark-results') -> None:
    start, end = f'<!-- {marker}:start -->', f'<!-- {marker}:end -->'
    with open(path) as f:
        content = f.read()
    if start not in content or end not in content:
        raise ValueError(f'{path}: markers {start} / {end} not found')
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, 'w') as f:
        f.write(f'{head}{start}\n{text.strip()}\n{end}{tail}')


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    import mmattn
    from mmattn.benchmark.memory import GiB
    from mmattn.benchmark.modules import Case, grid, run_case
    from mmattn.benchmark.report import (FLAG_BELOW, compile_table, model_table,
                                         module_table, peer_table, plot_results,
                                         split_peer_flags, target_rows, target_table)
    from mmattn.benchmark.shapes import FeatureShape, parse_shapes

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.modules is None:
        from mmattn.benchmark.peers import peer_names
        names = peer_names() if args.peers else mmattn.list_attention()
    else:
        names = args.modules
    unknown = [n for n in names if n not in mmattn.list_attention()]
    if unknown:
        print(f'unknown module(s) {unknown}; available: {mmattn.list_attention()}',
              file=sys.stderr)
        return 2
    cases = []
    try:
        for token in args.shapes:
            token, _, batches = token.partition('@')
            batches = [int(b) for b in batches.split(',')] if batches else args.batch
            cases += grid(names, parse_shapes([token]), batches)
        compile_shapes = parse_shapes(args.compile_shapes) if args.compile_shapes else None
    except ValueError as exc:
        print(f'--shapes: {exc}', file=sys.stderr)
        return 2
    # module-major order, so that one module's cases run together
    order = {name: i for i, name in enumerate(names)}
    cases.sort(key=lambda c: order[c.name])
    devices = _devices(args.device)
    if args.targets:
        for name in ('nonlocal', 'danet_pam'):
            for h, w in ((32, 64), (64, 128), (128, 256)):
                cases.append(Case(name, FeatureShape(512, h, w, 'target'), 2, 'target'))
        cases.append(Case('acmix', FeatureShape(64, 56, 56, 'target'), 8, 'target'))

    if args.peers:
        try:
            import timm  # noqa: F401  (an optional benchmark dependency)
        except ImportError:
            print('timm is not installed: timm peers skipped (pip install timm)', flush=True)
    os.makedirs(args.out, exist_ok=True)
    command = 'python tools/analysis/benchmark.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    hw = hardware(devices)
    load_start = _load()
    print(f'{hw}\nload average at start: {load_start}', flush=True)
    started = time.time()

    results = []
    max_mem = None if args.max_mem <= 0 else int(args.max_mem * GiB)
    for device in devices:
        for dtype in args.dtype:
            for i, case in enumerate(cases):
                if case.tag == 'target' and dtype != 'float32':
                    continue  # the targets are float32 comparisons
                do_compile = args.compile and case.name not in args.compile_skip and (
                    compile_shapes is None or
                    any(case.shape[:3] == s[:3] for s in compile_shapes))
                print(f'[{i + 1}/{len(cases)}] {device} {dtype} {case.name} {case.shape.label} '
                      f'N={case.batch}', flush=True)
                predict_only = (case.tag == 'target' and case.shape.height == 128 and
                                not args.targets_full and device == 'cpu')
                result = run_case(case, dtype=dtype, device=device, reps=args.reps,
                                  compile=do_compile, max_mem_bytes=max_mem,
                                  budget_s=args.budget, with_plain=not args.no_plain,
                                  predict_only=predict_only, peers=args.peers)
                if result.error:
                    print(f'  {result.error}', flush=True)
                results.append(result)

    model_results = []
    if args.models:
        from mmattn.benchmark.models import run_models
        for device in devices:
            model_results += run_models(args.models, batch=args.model_batch, device=device,
                                        reps=args.model_reps, budget_s=args.model_budget,
                                        phases=tuple(args.model_phases))

    elapsed = time.time() - started
    load_end = _load()
    png = plot_results(results, osp.join(args.out, 'benchmark.png'))
    sections = [f'Command: `{command}`', '',
                f'Hardware: {hw}. Load average (1/5/15 min) at start {load_start}, at end '
                f'{load_end}; wall time {elapsed / 60:.1f} min.', '',
                'Times: median of interleaved repetitions, ms. Peak: bytes allocated through '
                'the PyTorch allocator during the call above what was live before it (CPU: '
                'torch.profiler memory events; CUDA: max_memory_allocated), MiB. A cell '
                '`a / b (r x)` is module / plain formulation, `r` = plain / module (> 1: the '
                'module is faster or lighter). `itself`: the module is its own plain '
                'formulation. fwd = eval + no_grad; fwd+bwd = train mode, backward of a random '
                'output gradient (parameter and input gradients). autocast = bfloat16 on '
                'CPU, float16 on CUDA. `skipped: needs N GiB`: predicted peak (fake tensors) '
                f'above --max-mem {args.max_mem:g} GiB. reps: timed repetitions fwd/fwd+bwd; '
                '`1p`: one call, timed while profiled (phases slower than 3x --budget).']
    targets = target_rows(results, model_results)
    if targets:
        sections += ['', '### Targets', '', target_table(targets)]
    if results:
        sections += ['', '### Modules', '', module_table(results)]
    peers = peer_table(results)
    if peers:
        skipped = sorted({note for r in results for note in r.peer_skipped})
        flags, noise = split_peer_flags(results)
        sections += ['', '### Peers', '',
                     'Ratios peer / mmattn (< 1: mmattn is slower or needs more memory), '
                     f'bold below {FLAG_BELOW}; in brackets peer / mmattn in ms or MiB. '
                     '`A/A copy` is the module against its own deep copy: its spread is the '
                     'noise of this run. Output rel. diff: largest |peer - mmattn| / '
                     'max |mmattn| of the forward (eval) outputs.', '', peers]
        if skipped:
            sections += ['', 'Peers not run: ' + '; '.join(skipped) + '.']
        sections += ['', f'Flagged beyond the A/A noise ({len(flags)}): '
                     + ('; '.join(flags) if flags else 'none') + '.',
                     '', f'Flagged within the A/A noise ({len(noise)}: the A/A control of '
                     'the same cell is flagged too, or the ratio is no further below 1 than '
                     'twice the control\'s distance from 1): '
                     + ('; '.join(noise) if noise else 'none') + '.']
    comp = compile_table(results)
    if comp:
        sections += ['', '### torch.compile against eager', '', comp]
    if model_results:
        flops_src = next((m.flops_source for m in model_results if m.flops_source), '')
        sections += ['', '### Whole models', '',
                     f'FLOPs: {flops_src}, batch 1, multiply-adds; `executed` is what the '
                     'forward runs, `released` counts the attention modules as the authors\' '
                     'code computes them. Overheads are model / baseline - 1.', '',
                     model_table(model_results)]
    text = '\n'.join(sections) + '\n'
    md = osp.join(args.out, 'benchmark.md')
    with open(md, 'w') as f:
        f.write(text)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(dict(command=command, hardware=hw, load_start=load_start, load_end=load_end,
                       elapsed_s=elapsed, modules=[r.to_dict() for r in results],
                       models=[m.to_dict() for m in model_results]), f, indent=1, default=str)
    print('\n' + text)
    print(f'written: {md}' + (f', {png}' if png else '') + ', ' +
          osp.join(args.out, 'results.json'))
    if args.readme:
        write_readme_section(args.readme, text)
        print(f'written into {args.readme}')
    return 0
