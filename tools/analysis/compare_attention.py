"""Which attention helps this model: train and evaluate the baseline and each attention variant
of one config on the same schedule, data and seeds, and write the comparison table.

    python tools/analysis/compare_attention.py BASE_CONFIG --attention psa_p psa_s se cbam gc \
        [--preset {paper,released} | --position P [--stages S ...] [--block-types T ...]] \
        [--seeds 0 1 2] [--work-dir D] [--metric KEY] [--cfg-options k=v ...] \
        [--launcher pytorch --nproc-per-node N]
    python tools/analysis/compare_attention.py BASE_CONFIG --variants my_variants.py ...

Variants: ``--attention`` short names of ``mmattn.list_attention()`` (or ``all``) with one
placement for all (default ``--preset paper``: every residual block, after its first 3x3
convolution), or ``--variants FILE`` (.py with a ``variants`` dict, .yaml/.yml or .json) naming
each variant with its own ``AttentionBackbone`` plugin dict(s). The baseline is BASE_CONFIG
itself. Each variant is written as ``<work-dir>/configs/<name>.py`` (``_base_`` = BASE_CONFIG
plus the plugins), which ``tools/train.py`` runs alone as well.

Every variant x seed is trained with ``tools/train.py`` and its last checkpoint evaluated with
``tools/test.py`` (child processes; with ``--launcher pytorch`` under torchrun), the seed set
by ``randomness.seed``. Killed and re-run with the same arguments, the tool skips finished runs
and resumes an interrupted one from its last checkpoint (``--resume``). A variant that fails
(not buildable in this backbone, or a run that crashes) is reported with its one-line error and
the others go on; failed runs are kept as failed unless ``--retry-failed``.

Written to the work dir: ``comparison.md`` / ``.csv`` / ``.json`` (per variant: the metric's
mean and sample standard deviation over seeds, the difference to the baseline, params (M),
GFLOPs executed and in the released-code convention from ``mmattn.analysis``, training and
inference time and peak training memory from ``mmattn.benchmark``, measured for all variants
interleaved in one process on the same real batch, and the median logged iteration time of the
runs) and ``comparison.png`` (metric against GFLOPs or params, one point per variant with its
spread over seeds, the baseline marked). The main metric defaults to ``mIoU`` (mmseg),
``coco/AP`` (mmpose) and ``coco/bbox_mAP`` (mmdet).
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)


def _kv(text: str) -> str:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'{text!r}: expected key=value')
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train and evaluate a config with each attention module on the same seeds '
        'and write the comparison table',
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('config', help='base config (the baseline)')
    what = parser.add_argument_group('variants')
    what.add_argument('--attention', nargs='+', default=[], metavar='NAME',
                      help='attention short names (mmattn.list_attention()) or class names, '
                      "or 'all'")
    what.add_argument('--variants', dest='variants_file', metavar='FILE',
                      help='named variants with their plugin dicts (.py/.yaml/.yml/.json)')
    what.add_argument('--preset', choices=['paper', 'released'],
                      help="placement preset (default 'paper' unless --position is given)")
    what.add_argument('--position', help='plugin position, e.g. after_conv1, before_add')
    what.add_argument('--stages', type=int, nargs='+', help='stage numbers for --position')
    what.add_argument('--block-types', nargs='+', help='block classes, e.g. BasicBlock')
    what.add_argument('--branches', type=int, nargs='+', help='HRNet branch indices')
    runs = parser.add_argument_group('runs')
    runs.add_argument('--seeds', type=int, nargs='+', default=[0])
    runs.add_argument('--work-dir', help='default work_dirs/compare_<config name>')
    runs.add_argument('--metric', help='main metric key of tools/test.py\'s metrics.json '
                      '(default mIoU / coco/AP / coco/bbox_mAP by task)')
    runs.add_argument('--cfg-options', nargs='+', type=_kv, default=[], metavar='K=V',
                      help='overrides for training and testing (as tools/train.py takes them)')
    runs.add_argument('--train-options', nargs='+', type=_kv, default=[], metavar='K=V',
                      help='overrides for training only')
    runs.add_argument('--test-options', nargs='+', type=_kv, default=[], metavar='K=V',
                      help='overrides for testing only')
    runs.add_argument('--validate', action='store_true',
                      help='keep the config\'s validation during training (off by default: '
                      'tools/test.py evaluates the last checkpoint)')
    runs.add_argument('--retry-failed', action='store_true', help='run failed runs again')
    runs.add_argument('--dry-run', action='store_true',
                      help='write the variant configs and list the runs, run nothing')
    dist = parser.add_argument_group('distributed (torchrun)')
    dist.add_argument('--launcher', choices=['none', 'pytorch'], default='none')
    dist.add_argument('--nproc-per-node', type=int, default=1)
    dist.add_argument('--nnodes', type=int, default=1)
    dist.add_argument('--node-rank', type=int, default=0,
                      help='run the same command on every node with a shared work dir; node 0 '
                      'writes the records and the table')
    dist.add_argument('--master-addr', default='127.0.0.1')
    dist.add_argument('--master-port', type=int, default=29500)
    cost = parser.add_argument_group('cost measurement')
    cost.add_argument('--shape', type=int, nargs='+', metavar='N',
                      help='H [W] to count FLOPs at (default: the config\'s input size)')
    cost.add_argument('--no-bench', dest='bench', action='store_false',
                      help='skip the time and memory measurement')
    cost.add_argument('--bench-reps', type=int, default=10)
    cost.add_argument('--bench-budget', type=float, default=60.0,
                      help='seconds per timed phase (repetitions are lowered to fit)')
    cost.add_argument('--bench-device', help='default cuda when available, else cpu')
    cost.add_argument('--plot-x', choices=['gflops', 'gflops_released', 'params_m'],
                      default='gflops')
    args = parser.parse_args(argv)
    if not args.attention and not args.variants_file:
        parser.error('give --attention NAME ... (or all) or --variants FILE')
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes H or H W')
    if args.launcher == 'none' and (args.nproc_per_node != 1 or args.nnodes != 1):
        parser.error('--nproc-per-node/--nnodes need --launcher pytorch')
    if args.work_dir is None:
        args.work_dir = osp.join('work_dirs',
                                 'compare_' + osp.splitext(osp.basename(args.config))[0])
    return args


def main(argv=None):
    args = parse_args(argv)
    import dataclasses

    from mmattn.ablation import CompareOptions, VariantError, WorkDirBusy, run_comparison
    from mmattn.ablation.runs import Launcher, RunChangedError
    from mmattn.utils.paths import tools_root
    options = vars(args)
    # the torchrun flags are named as Launcher's fields
    launch = Launcher(tools_root(), **{f.name: options.pop(f.name)
                                       for f in dataclasses.fields(Launcher)
                                       if f.name in options})
    opts = CompareOptions(**options, launch=launch)
    try:
        result = run_comparison(opts)
    except (VariantError, RunChangedError, WorkDirBusy, FileNotFoundError) as error:
        sys.exit(f'{type(error).__name__}: {error}')
    paths = result.get('paths') or {}
    if 'md' in paths:
        with open(paths['md']) as f:
            print(f.read())
    return 0


if __name__ == '__main__':
    sys.exit(main())
