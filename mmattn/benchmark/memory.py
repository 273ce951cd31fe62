"""Peak memory of a call, on CPU and CUDA, and a prediction that runs no arithmetic.

CPU (``cpu_peak_bytes``): the PyTorch profiler with ``profile_memory=True`` records one event
per allocation and per free made through PyTorch's CPU allocator (``c10`` reports every
allocation and release while a profiler with memory profiling is active), including the
temporaries that kernels allocate internally. The peak is the maximum of the running sum of
those events in time order: the largest number of bytes live at once *above what was live when
the call started* (inputs, weights and earlier results excluded). Memory obtained outside the
PyTorch allocator (oneDNN/BLAS scratch buffers, Python objects) is not counted.

CUDA (``cuda_peak_bytes``): ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the bytes allocated before the call, with synchronisation.

Prediction (``predict_peak_bytes``): the call runs under ``FakeTensorMode`` (shapes, dtypes and
devices propagate, no data is allocated or computed) inside :class:`LiveStorageMeter`, a
``TorchDispatchMode`` that adds the bytes of every new storage an operator returns and
subtracts them when the storage is freed. It sees operator outputs only (no kernel-internal
temporaries), so it is a slight underestimate; it is used to skip cases that would not fit the
memory budget before running them, and to report what a skipped case would need.
"""
import copy
import weakref
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmattn.utils.torch_compat import tree_leaves

__all__ = ['cpu_peak_bytes', 'cuda_peak_bytes', 'peak_bytes', 'LiveStorageMeter',
           'predict_peak_bytes', 'GiB', 'MiB']

MiB = 2**20
GiB = 2**30


def _kineto_events(prof):
    profiler = prof.profiler
    results = getattr(profiler, 'kineto_results', None)
    if results is None:
        results = getattr(profiler, 'kinetoResults')
    return results.events()


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through PyTorch's CPU allocator while ``fn()`` runs, above the
    bytes live when it started (profiler allocation events, see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=False, with_stack=False) as prof:
        out = fn()
        del out
    events = []
    for event in _kineto_events(prof):
        if event.name() != '[memory]':
            continue
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        # start_ns() from torch 2.2 on; torch 2.1 has start_us() only
        start = event.start_ns() if hasattr(event, 'start_ns') else event.start_us() * 1000
        events.append((start, event.nbytes()))
    events.sort(key=lambda e: e[0])  # stable: same-time events keep their recorded order
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(fn: Callable[[], object], device=None) -> int:
    """Peak bytes allocated by the CUDA caching allocator while ``fn()`` runs, above the
    bytes allocated when it started."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    del out
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def peak_bytes(fn: Callable[[], object], device='cpu') -> int:
    """``cpu_peak_bytes`` or ``cuda_peak_bytes`` according to ``device``."""
    if torch.device(device).type == 'cuda':
        return cuda_peak_bytes(fn, device)
    return cpu_peak_bytes(fn)


def _storages_keep_python_objects() -> bool:
    """Whether a storage keeps one Python object for its lifetime (torch >= 2.2); torch 2.1
    makes a new one per ``untyped_storage()`` call, so a finalizer on it says nothing."""
    t = torch.empty(1)
    return t.untyped_storage() is t.untyped_storage()


class LiveStorageMeter(TorchDispatchMode):
    """Bytes of the storages that operators return, live at once (``peak``, ``live``).

    A storage is counted when an operator first returns a tensor on it and released when
    the storage is freed: a weakref finalizer on the storage where storages keep their Python
    object (torch >= 2.2), else on every tensor an operator returns on it (views included),
    the storage being freed with the last of them. Storages that existed before (inputs,
    weights) are not counted unless an operator returns them; in-place results (``out``
    aliasing an input) are not new storages when the input's storage is already known, so
    call :meth:`reset` to start a region.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes = {}
        self._holders = {}  # storage key -> ids of the live tensors on it (torch 2.1)
        self._seen = weakref.WeakSet()
        self._per_storage = _storages_keep_python_objects()

    def reset(self):
        self.peak = self.live

    def _release(self, key: int, nbytes: int):
        if self._sizes.pop(key, None) is not None:
            self.live -= nbytes

    def _drop_holder(self, key: int, holder: int):
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[key]
            nbytes = self._sizes.get(key)
            if nbytes is not None:
                self._release(key, nbytes)

    def _hold(self, tensor: torch.Tensor, key: int):
        """torch 2.1: the storage ``key`` lives at least as long as ``tensor``."""
        if tensor in self._seen:
            return
        self._seen.add(tensor)
        self._holders.setdefault(key, set()).add(id(tensor))
        weakref.finalize(tensor, self._drop_holder, key, id(tensor))

    def _track(self, tensor: torch.Tensor):
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return
        key = storage._cdata
        if not self._per_storage:
            self._hold(tensor, key)
        if key in self._sizes:
            return
        nbytes = storage.nbytes()
        self._sizes[key] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        if self._per_storage:
            weakref.finalize(storage, self._release, key, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage()._cdata for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor) and _has_storage(a)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _has_storage(t):
                key = t.untyped_storage()._cdata
                if key in inputs:
                    # a view or an in-place result: no new memory (but on torch 2.1 a
                    # view of a counted storage keeps it alive)
                    if not self._per_storage and key in self._sizes:
                        self._hold(t, key)
                    continue
                self._track(t)
        return out


def _has_storage(t: torch.Tensor) -> bool:
    try:
        t.untyped_storage()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def predict_peak_bytes(make_call: Callable[[Callable[[torch.Tensor], torch.Tensor]],
                                           Callable[[], object]],
                       module: Optional[torch.nn.Module] = None) -> Optional[int]:
    """Predict the peak of a call without running its arithmetic, or None when the call
    cannot run on fake tensors (e.g. C++ extension ops without a fake kernel).

    ``make_call(fake)`` must return the zero-argument call to measure, building its tensors
    through ``fake(real_tensor)`` (which turns a real tensor into a fake one of the same
    shape, dtype and device). ``module``, when given, is deep-copied first so that neither its
    parameters' ``.grad`` nor its buffers are touched; the copy is passed as the
    ``module`` attribute of ``fake`` (``fake.module``).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    copied = copy.deepcopy(module) if module is not None else None
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def fake(t: torch.Tensor) -> torch.Tensor:
        out = mode.from_tensor(t.detach())
        return out.requires_grad_(t.requires_grad)

    fake.module = copied
    try:
        with mode:
            call = make_call(fake)
            meter = LiveStorageMeter()
            with meter:
                meter.reset()
                out = call()
                del out
        return int(meter.peak)
    except Exception:  # noqa: BLE001 - any failure means "cannot predict"
        return None
