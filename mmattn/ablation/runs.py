"""Training and evaluating one variant x seed through ``tools/train.py`` and ``tools/test.py``
as child processes (plain, or under ``torchrun`` for ``--launcher pytorch``), resumably.

State of a run lives in its folder ``<work_dir>/runs/<variant>/seed_<seed>/`` (which is also the
``--work-dir`` of ``tools/train.py``):

* ``result.json``: the run is over (``status`` ``ok`` with the metrics, or ``failed`` with a
  one-line error); a later invocation skips it;
* ``train.done``: training finished; only the evaluation is left;
* ``last_checkpoint``: an interrupted training; it is resumed with ``--resume`` (mmattn writes
  checkpoints atomically, so the one it names is complete);
* ``fingerprint``: hash of what defines the run (variant config, base config, options, seed);
  a changed definition is refused rather than mixed with the old run.

Children run in their own process group and die with this process (``PR_SET_PDEATHSIG`` on
Linux); a group left by an earlier invocation killed with SIGKILL is ended on the next start.
"""
import ctypes
import hashlib
import json
import os
import os.path as osp
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ['Launcher', 'RunSpec', 'run_one', 'one_line_error', 'train_seconds_per_iter',
           'read_json', 'write_json', 'run_dir_of', 'RunChangedError', 'ChildProcess']

_PR_SET_PDEATHSIG = 1


class RunChangedError(RuntimeError):
    """A run folder holds a run of a different definition (config, options or seed)."""


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader (or a killed
    writer) never sees a partial file."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_dir_of(work_dir: str, variant: str, seed: int) -> str:
    return osp.join(work_dir, 'runs', variant, f'seed_{seed}')


@dataclass
class Launcher:
    """How a tool is started: ``python tools/X.py`` or ``torchrun ... tools/X.py --launcher
    pytorch``."""
    tools_dir: str
    python: str = sys.executable
    launcher: str = 'none'
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = '127.0.0.1'
    master_port: int = 29500

    def command(self, tool: str, args: Sequence[str]) -> List[str]:
        script = osp.join(self.tools_dir, tool)
        if self.launcher == 'none':
            return [self.python, script, *args]
        return [
            self.python, '-m', 'torch.distributed.run', f'--nnodes={self.nnodes}',
            f'--node_rank={self.node_rank}', f'--master_addr={self.master_addr}',
            f'--nproc_per_node={self.nproc_per_node}', f'--master_port={self.master_port}',
            script, *args, '--launcher', self.launcher
        ]

    @property
    def writes_results(self) -> bool:
        """Only the first node writes run records and tables (the work dir is shared)."""
        return self.node_rank == 0


def _set_pdeathsig(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stale-group clean-up still applies
        pass


class ChildProcess:
    """A child in its own process group, its output appended to a log file; ended with its
    group on SIGINT/SIGTERM of this process and when this process dies."""

    current: Optional['ChildProcess'] = None  # the one running (signal handlers end it)

    def __init__(self, cmd: List[str], log_path: str, pid_file: str, env=None, cwd=None):
        self.cmd = cmd
        self.log_path = log_path
        self.pid_file = pid_file
        torchrun = 'torch.distributed.run' in cmd
        # torchrun ends its workers on SIGTERM; a plain tool can simply be killed
        death = signal.SIGTERM if torchrun else signal.SIGKILL

        def preexec():
            os.setsid()
            _set_pdeathsig(death)

        with open(log_path, 'a') as log:
            log.write(f'\n===== {time.strftime("%Y-%m-%d %H:%M:%S")} pid {os.getpid()}: '
                      f'{" ".join(cmd)}\n')
        self.log_offset = osp.getsize(log_path)
        self._log = open(log_path, 'a')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, preexec_fn=preexec)
        with open(pid_file, 'w') as f:
            f.write(f'{self.proc.pid}\n{log_path}\n')
        ChildProcess.current = self

    def wait(self) -> int:
        try:
            return self.proc.wait()
        finally:
            self._log.close()
            ChildProcess.current = None
            if osp.exists(self.pid_file):
                os.remove(self.pid_file)

    def terminate(self, grace_s: float = 10.0) -> None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def new_output(self) -> str:
        with open(self.log_path, errors='replace') as f:
            f.seek(self.log_offset)
            return f.read()


def end_stale_child(pid_file: str, log: Callable[[str], None] = print) -> None:
    """End the process group an earlier invocation started and left running (recorded in
    ``pid_file``), if it is still alive and still that child (its command names the log)."""
    if not osp.exists(pid_file):
        return
    try:
        with open(pid_file) as f:
            pid = int(f.readline())
            log_path = f.readline().strip()
    except (OSError, ValueError):
        os.remove(pid_file)
        return
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
        alive = osp.dirname(log_path) in cmdline
    except OSError:
        alive = False
    if alive:
        log(f'ending process group {pid} left by an earlier run ({log_path})')
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
    os.remove(pid_file)


_ERROR_RE = re.compile(r'^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b'
                       r'(?::|$)')


def one_line_error(output: str, returncode: int) -> str:
    """The error a failed tool printed, on one line: the last exception line of its output
    (``ValueError: ...``; the tools exit with one such line for broken data or checkpoints),
    else its last non-empty line, else the exit status."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_RE.match(line):
            return line[:400]
    if returncode < 0:
        return f'killed by signal {-returncode} ({signal.Signals(-returncode).name})'
    if lines:
        return f'exit status {returncode}: {lines[-1][:300]}'
    return f'exit status {returncode}'


def train_seconds_per_iter(run_dir: str) -> Dict[str, float]:
    """Median seconds per training iteration over the logged intervals of every attempt
    (mmengine's ``vis_data/scalars.json``; the first interval of each attempt, which includes
    start-up, is left out when there are others), and the number of intervals."""
    times = []
    for name in sorted(os.listdir(run_dir)) if osp.isdir(run_dir) else []:
        path = osp.join(run_dir, name, 'vis_data', 'scalars.json')
        if not osp.isfile(path):
            continue
        attempt = []
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if 'time' in record and any(k.startswith('loss') for k in record):
                    attempt.append(float(record['time']))
        times.extend(attempt[1:] if len(attempt) > 1 else attempt)
    if not times:
        return {}
    return dict(train_s_per_iter=statistics.median(times), train_log_intervals=len(times))


@dataclass
class RunSpec:
    variant: str
    seed: int
    config: str  # the variant's config file
    run_dir: str
    train_options: List[str] = field(default_factory=list)  # k=v strings
    test_options: List[str] = field(default_factory=list)
    validate: bool = False
    fingerprint: str = ''

    @property
    def label(self) -> str:
        return f'{self.variant} seed {self.seed}'


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b'\0')
    return h.hexdigest()[:16]


def _check_fingerprint(spec: RunSpec, write: bool) -> None:
    path = osp.join(spec.run_dir, 'fingerprint')
    if osp.exists(path):
        with open(path) as f:
            old = f.read().strip()
        if old != spec.fingerprint:
            raise RunChangedError(
                f'{spec.run_dir} holds a run of {spec.label} with a different definition (the '
                f'variant config, the base config, the options or the metric changed since); use '
                f'another --work-dir, or delete that folder to run it again')
    elif write:
        with open(path, 'w') as f:
            f.write(spec.fingerprint + '\n')


def _event(work_dir: str, spec: RunSpec, event: str, **extra) -> None:
    record = dict(time=round(time.time(), 3), pid=os.getpid(), variant=spec.variant,
                  seed=spec.seed, event=event, **extra)
    with open(osp.join(work_dir, 'events.jsonl'), 'a') as f:
        f.write(json.dumps(record) + '\n')


def _has_checkpoint(run_dir: str) -> bool:
    pointer = osp.join(run_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return False
    with open(pointer) as f:
        path = f.read().strip()
    return bool(path) and osp.isfile(path)


def _options(options: Sequence[str]) -> List[str]:
    return ['--cfg-options', *options] if options else []


def run_one(spec: RunSpec, launcher: Launcher, work_dir: str, metric: str,
            log: Callable[[str], None] = print, env=None, cwd=None) -> dict:
    """Train and evaluate one run (or finish / skip it, from its folder's state); returns its
    record (``status``: ``ok`` / ``failed``), which is also written to ``result.json``."""
    os.makedirs(spec.run_dir, exist_ok=True)
    writer = launcher.writes_results
    result_path = osp.join(spec.run_dir, 'result.json')
    _check_fingerprint(spec, write=writer)
    if osp.exists(result_path):
        record = read_json(result_path)
        if writer:
            _event(work_dir, spec, 'skip', status=record.get('status'))
        log(f'[{spec.label}] already {"done" if record.get("status") == "ok" else "failed"}, '
            f'skipped')
        return record
    node = '' if writer else f'.node{launcher.node_rank}'
    pid_file = osp.join(spec.run_dir, f'child{node}.pid')
    end_stale_child(pid_file, log)
    record = dict(variant=spec.variant, seed=spec.seed, config=spec.config,
                  run_dir=spec.run_dir, metric=metric)
    done_path = osp.join(spec.run_dir, 'train.done')

    def failed(phase, error):
        record.update(status='failed', phase=phase, error=f'{phase}: {error}')
        log(f'[{spec.label}] {phase} failed: {error}')
        if writer:
            _event(work_dir, spec, f'{phase}-failed', error=error)
            write_json(result_path, record)
        return record

    # training (fresh or resumed)
    if not osp.exists(done_path):
        resume = _has_checkpoint(spec.run_dir)
        args = [spec.config, '--work-dir', spec.run_dir]
        args += _options(spec.train_options + [f'randomness.seed={spec.seed}'])
        if resume:
            args.append('--resume')
        if not spec.validate:
            args.append('--no-validate')
        cmd = launcher.command('train.py', args)
        log(f'[{spec.label}] {"resuming" if resume else "training"} '
            f'(log: {osp.join(spec.run_dir, f"train{node}.log")})')
        if writer:
            with open(osp.join(spec.run_dir, 'train_command.txt'), 'w') as f:
                f.write(' '.join(cmd) + '\n')
            _event(work_dir, spec, 'train-resume' if resume else 'train-start')
        start = time.time()
        child = ChildProcess(cmd, osp.join(spec.run_dir, f'train{node}.log'), pid_file, env, cwd)
        rc = child.wait()
        seconds = time.time() - start
        if rc != 0:
            return failed('train', one_line_error(child.new_output(), rc))
        if writer:
            previous = read_json(done_path) if osp.exists(done_path) else {}
            attempts = [*previous.get('attempts', []), round(seconds, 2)]
            write_json(done_path, dict(attempts=attempts, resumed=resume))
            _event(work_dir, spec, 'train-end', seconds=round(seconds, 2))
    else:
        log(f'[{spec.label}] training already finished, evaluating')
    if writer and osp.exists(done_path):
        record['train_attempt_s'] = read_json(done_path).get('attempts', [])
    record.update(train_seconds_per_iter(spec.run_dir))

    # evaluation of the last checkpoint
    pointer = osp.join(spec.run_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return failed('test', 'no last_checkpoint after training (does the config save '
                      'checkpoints? default_hooks.checkpoint)')
    with open(pointer) as f:
        checkpoint = f.read().strip()
    test_dir = osp.join(spec.run_dir, 'test')
    cmd = launcher.command('test.py', [spec.config, checkpoint, '--work-dir', test_dir] +
                           _options(spec.test_options + [f'randomness.seed={spec.seed}']))
    if writer:
        _event(work_dir, spec, 'test-start', checkpoint=checkpoint)
    start = time.time()
    child = ChildProcess(cmd, osp.join(spec.run_dir, f'test{node}.log'), pid_file, env, cwd)
    rc = child.wait()
    record['test_s'] = round(time.time() - start, 2)
    if rc != 0:
        return failed('test', one_line_error(child.new_output(), rc))
    if not writer:
        return dict(record, status='ok')
    metrics_path = osp.join(test_dir, 'metrics.json')
    if not osp.isfile(metrics_path):
        return failed('test', f'tools/test.py wrote no {metrics_path}')
    metrics = read_json(metrics_path)
    if not metrics:
        return failed('test', 'tools/test.py reported no metrics (mmdet\'s CocoMetric reports '
                      'none when the model made no detection above test_cfg.score_thr)')
    if metric not in metrics:
        return failed('test', f'metric {metric!r} is not among the test metrics '
                      f'{sorted(metrics)} (choose one with --metric)')
    record.update(status='ok', value=float(metrics[metric]), metrics=metrics,
                  checkpoint=checkpoint, metrics_file=metrics_path)
    write_json(result_path, record)
    _event(work_dir, spec, 'test-end', value=record['value'])
    log(f'[{spec.label}] {metric} = {record["value"]:.4g}')
    return record
