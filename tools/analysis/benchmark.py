"""Performance benchmark of the attention modules and of the shipped configs.

    python tools/analysis/benchmark.py --quick
    python tools/analysis/benchmark.py [--modules NAME ...] [--shapes pose256 pose384 city|CxHxW]
        [--batch 1 8] [--device auto|cpu|cuda] [--dtype float32 autocast] [--compile]
        [--targets] [--models CONFIG ...] [--max-mem GiB] [--out DIR]

Every module of the zoo at the HRNet-W48 branch shapes of the shipped configs: forward and
forward+backward time (median of interleaved repetitions; CUDA events with synchronisation on
GPU) and peak memory (CPU: torch.profiler allocation events; CUDA: max_memory_allocated),
against the plain formulation of ``mmattn.testing.plain`` (same weights, same input, same run),
optionally against ``torch.compile``. ``--models`` times a training iteration and an
inference pass of each config against its baseline config next to the FLOPs overhead of
``tools/analysis/get_flops.py``. Writes ``benchmark.md``, ``benchmark.png`` and
``results.json`` into ``--out``. ``--help`` lists every option.
"""
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

from mmattn.benchmark.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
