"""Parameters and FLOPs of a config's model, and what its attention modules add.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--cfg-options k=v ...]
                                       [--baseline BASELINE_CONFIG]
    python tools/analysis/get_flops.py --markdown CONFIG [CONFIG ...] [--write README.md]
    python tools/analysis/get_flops.py --table configs/psa [--write configs/psa/README.md]

The whole model is counted, as mmseg's and mmpose's own get_flops do: ``model.forward`` in
``tensor`` mode on one random image of the given shape (default: the config's crop size or
codec input size), with ``mmengine.analysis.FlopAnalyzer`` and ``parameter_count``. Pretrained
weights (``pretrained``, ``init_cfg=Pretrained``) are switched off: nothing is downloaded.

Units are the papers': M parameters, GFLOPs counted as multiply-adds (FlopAnalyzer counts one
fused multiply-add as one flop). Three FLOP figures (see ``mmattn/analysis/complexity.py``):
``executed`` (what the forward runs, = mmseg/mmpose get_flops), ``released`` (attention modules
counted as the authors' released code computes them) and ``paper`` (the HRNet code-base
convention the HRNet and PSA papers report: conv + linear multiply-adds / 2**30).

``--markdown``/``--table`` print one markdown row per config, with the overhead over its
baseline: the config of the same folder whose name lacks one ``-<part>`` (``-psa-p``,
``-psa-s``, ``-<plugin>``). ``--write FILE`` puts the table between ``<!-- complexity-table:start
-->`` and ``<!-- complexity-table:end -->`` in FILE (adding a ``## Complexity`` section inside
``<!-- complexity:start/end -->`` when the markers are missing).
"""
import argparse
import glob
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Params and FLOPs of a config\'s model and of its attention modules',
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('config', nargs='*', help='config file(s)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='input H [W] (default: the config\'s crop / input size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config settings, xxx=yyy format, e.g. '
                        'model.backbone.plugins.0.preset=paper')
    parser.add_argument('--baseline', help='config to report the overhead over (single config)')
    parser.add_argument('--markdown', action='store_true',
                        help='print a markdown table of the given configs (overhead over the '
                        'baseline found by name)')
    parser.add_argument('--table', metavar='DIR',
                        help='markdown table of every config (*.py) in DIR')
    parser.add_argument('--zoo', type=int, nargs='?', const=256, metavar='C',
                        help='table of every attention module of the zoo at C channels '
                        '(default 256) on an HxW map (--shape, default 64 64)')
    parser.add_argument('--write', metavar='FILE',
                        help='with --markdown/--table/--zoo: write the table into FILE between '
                        'its markers (complexity-table / zoo-table)')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes H or H W')
    if args.zoo is not None:
        if args.config or args.table or args.markdown or args.baseline:
            parser.error('--zoo counts the attention modules alone; give no config')
        return args
    if args.table:
        if not osp.isdir(args.table):
            parser.error(f'--table {args.table}: not a directory')
        args.config = sorted(glob.glob(osp.join(args.table, '*.py'))) + list(args.config)
        args.markdown = True
        if not args.config:
            parser.error(f'--table {args.table}: no config (*.py) there')
    if not args.config:
        parser.error('give a CONFIG (or --table DIR)')
    if args.write and not args.markdown:
        parser.error('--write needs --markdown or --table')
    if not args.markdown and len(args.config) > 1:
        parser.error('several configs: use --markdown (or --table DIR)')
    if args.baseline and args.markdown:
        parser.error('--baseline is for the single-config report; --markdown finds baselines '
                     'by name')
    for path in args.config + ([args.baseline] if args.baseline else []):
        if not osp.isfile(path):
            parser.error(f'config {path} does not exist')
    return args


def zoo_table(channels: int, shape) -> str:
    """Markdown table of every module of ``mmattn.list_attention()`` on (1, C, H, W)."""
    import torch

    import mmattn
    from mmattn.analysis import analyze_model
    from mmattn.models.layers import resolve_attention
    h, w = (shape * 2)[:2] if shape else (64, 64)
    rows = ['| short name | class | params | MFLOPs executed | MFLOPs released |',
            '|---|---|---:|---:|---:|']
    for name in mmattn.list_attention():
        torch.manual_seed(0)
        module = mmattn.build_attention(name, channels)
        result = analyze_model(module, (channels, h, w), name=name)
        rows.append(f'| `{name}` | `{resolve_attention(name)[0]}` | {result.params:,} | '
                    f'{result.flops / 1e6:,.1f} | {result.flops_released / 1e6:,.1f} |')
    return (f'Generated by `python tools/analysis/get_flops.py --zoo {channels} --shape {h} {w}`'
            f' (one {channels}x{h}x{w} input, batch 1). MFLOPs = multiply-adds / 1e6 as '
            f'mmengine counts them; "executed" is what mmattn\'s forward runs, "released" the '
            f'authors\' formulation on the same input (differs for PSA, whose forward is '
            f'reassociated, and for ACmix, whose window products are elementwise; counted on '
            f'CPU, where DANet PAM runs its blockwise softmax: on CUDA its kernel pads C/8 to '
            f'a multiple of 8). SPD-Conv includes its 3x3 conv to 2C '
            f'channels; DCNv2 is a 3x3 conv.\n\n' + '\n'.join(rows))


def main(argv=None):
    """Run the tool; a config it cannot count ends in one line on stderr and exit status 2."""
    from mmattn.analysis import ConfigError
    try:
        return _main(argv)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2


def _main(argv=None):
    args = parse_args(argv)
    if args.zoo is not None:
        from mmattn.analysis import write_markdown
        text = zoo_table(args.zoo, args.shape)
        print(text)
        if args.write:
            write_markdown(args.write, text, marker='zoo-table')
        return 0
    from mmattn.analysis import (Failure, analyze_config, find_baseline, format_report,
                                 markdown_table, write_markdown)

    cache = {}

    def count(path):
        key = osp.abspath(path)
        if isinstance(cache.get(key), Failure):
            raise RuntimeError(cache[key].error)
        if key not in cache:
            start = time.time()
            cache[key] = analyze_config(path, args.shape, args.cfg_options)
            print(f'counted {osp.basename(path)} in {time.time() - start:.1f} s',
                  file=sys.stderr, flush=True)
        return cache[key]

    if not args.markdown:
        result = count(args.config[0])
        baseline = count(args.baseline) if args.baseline else None
        print(format_report(result, baseline))
        return 0

    def count_or_failure(path):
        try:
            return count(path)
        # a broken config gets an error row, the table goes on
        except Exception as exc:  # noqa: BLE001
            print(f'cannot count {path}: {type(exc).__name__}: {exc}', file=sys.stderr)
            failure = Failure(osp.splitext(osp.basename(path))[0],
                              f'{type(exc).__name__}: {exc}')
            cache[osp.abspath(path)] = failure
            return failure

    results, baselines = [], {}
    for path in args.config:
        result = count_or_failure(path)
        results.append(result)
        if isinstance(result, Failure):
            continue
        candidates = [c for c in args.config if c != path]
        folder = [c for c in glob.glob(osp.join(osp.dirname(path) or '.', '*.py'))
                  if osp.abspath(c) != osp.abspath(path)]
        base = find_baseline(path, candidates) or find_baseline(path, folder)
        baselines[result.name] = count_or_failure(base) if base else None
    table = markdown_table(results, baselines)
    shape = 'the config\'s own input size' if args.shape is None else \
        'x'.join(str(s) for s in (args.shape * 2)[:2])
    options = f'; `--cfg-options {" ".join(f"{k}={v}" for k, v in args.cfg_options.items())}`' \
        if args.cfg_options else ''
    note = (f'Generated by `python tools/analysis/get_flops.py '
            f'{"--table " + args.table if args.table else "--markdown ..."}` (input: {shape}'
            f'{options}). Parameters in M; GFLOPs = multiply-adds / 1e9 (executed, released) '
            f'or / 2^30 (paper); `(+delta, +%)` is the overhead over the baseline config.')
    text = f'{note}\n\n{table}'
    print(text)
    if args.write:
        write_markdown(args.write, text)
        print(f'written to {args.write}', file=sys.stderr)
    return 1 if any(isinstance(r, Failure) for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
