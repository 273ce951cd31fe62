"""Wall-clock timing of several variants of one computation, interleaved, median of several.

CPU: ``time.perf_counter`` around each call (PyTorch CPU ops are synchronous).
CUDA: a pair of CUDA events around each call, ``torch.cuda.synchronize`` before the start
event and after the end event, elapsed time from the events.

The variants are called in turns within each repetition (``a b c``, then ``c b a``, ...), so
that a drift of the machine (load of other processes, frequency changes) affects all of them
alike; the median over repetitions is reported.
"""
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

__all__ = ['time_call', 'time_interleaved', 'reps_within', 'median']


def time_call(fn: Callable[[], object], device='cpu') -> float:
    """Seconds one ``fn()`` takes (synchronised on CUDA)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        del out
        return start.elapsed_time(end) / 1000.0
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float('nan')


def reps_within(budget_s: float, per_rep: float, reps: int, min_reps: int = 3) -> int:
    """Repetitions of ``per_rep`` seconds that fit ``budget_s``: at most ``reps``, at least
    ``min_reps`` (1 when one repetition alone exceeds the budget)."""
    floor = 1 if per_rep > budget_s else min(min_reps, reps)
    return max(floor, min(reps, int(budget_s // per_rep)))


def time_interleaved(fns: Dict[str, Callable[[], object]], reps: int = 5, warmup: int = 1,
                     device='cpu', budget_s: Optional[float] = None,
                     min_reps: int = 3) -> Dict[str, List[float]]:
    """Time every variant of ``fns`` ``reps`` times, interleaved; returns the seconds of each
    repetition per variant (call :func:`median` on them).

    ``warmup`` untimed calls of each variant come first (compilation, allocator, caches). With
    ``budget_s``, the number of repetitions is lowered so that the timed part takes about
    ``budget_s`` seconds (judged from the slowest warm-up), but not below ``min_reps`` (nor
    above ``reps``); a variant slower than the whole budget gets a single repetition.
    """
    names = list(fns)
    slowest = 0.0
    for _ in range(max(warmup, 0)):
        for name in names:
            slowest = max(slowest, time_call(fns[name], device))
    if budget_s is not None and warmup > 0 and slowest > 0:
        reps = reps_within(budget_s, slowest * len(names), reps, min_reps)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_call(fns[name], device))
    return times
