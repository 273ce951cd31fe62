"""Performance benchmark suite of the attention modules and the shipped configs
(``tools/analysis/benchmark.py``): timing (interleaved, median), peak memory (CPU: profiler
allocation events; CUDA: allocator statistics), plain baselines, torch.compile, whole models."""
from .memory import (LiveStorageMeter, cpu_peak_bytes, cuda_peak_bytes, peak_bytes,  # noqa
                     predict_peak_bytes)
from .modules import Case, CaseResult, build_module, grid, run_case  # noqa: F401
from .shapes import SHAPE_SETS, FeatureShape, parse_shapes  # noqa: F401
from .timing import median, time_call, time_interleaved  # noqa: F401

__all__ = [
    'LiveStorageMeter', 'cpu_peak_bytes', 'cuda_peak_bytes', 'peak_bytes', 'predict_peak_bytes',
    'Case', 'CaseResult', 'build_module', 'grid', 'run_case', 'SHAPE_SETS', 'FeatureShape',
    'parse_shapes', 'median', 'time_call', 'time_interleaved'
]
