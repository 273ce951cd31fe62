"""Checkpoint files that are written atomically and read with one clear error.

* :func:`save_checkpoint_atomic` writes a checkpoint to a temporary file in the target directory,
  fsyncs it and renames it into place (``os.replace``), so a process killed at any moment never
  leaves a half-written file under the final name.
* :func:`write_text_atomic` does the same for small text files (mmengine's ``last_checkpoint``).
* :func:`checkpoint_problem` tells, without unpickling, why a file is not a complete
  ``torch.save`` file (truncated zip archive, CRC mismatch, empty file, not a checkpoint at all).
* :func:`load_checkpoint_file` loads a local checkpoint and turns every failure into a
  :class:`CheckpointError` naming the file.
* :func:`find_last_complete_checkpoint` is what auto-resume uses: the checkpoint
  ``last_checkpoint`` names if it is complete, else the newest complete ``iter_*.pth`` /
  ``epoch_*.pth`` of the work dir (with a warning).

:class:`~mmattn.engine.ResumableRunner` and :class:`~mmattn.engine.AtomicCheckpointHook` (selected
by a config's ``runner_type``) route the Runner's saving and auto-resume through these functions.
"""
import io
import logging
import os
import os.path as osp
import re
import zipfile
import zlib
from typing import List, Optional

import torch
from mmengine.logging import print_log

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'checkpoint_problem', 'check_checkpoint_file',
    'load_checkpoint_file', 'save_checkpoint_atomic', 'write_text_atomic',
    'find_last_complete_checkpoint', 'temporary_path', 'commit_file', 'discard'
]

_TMP_MARK = '.tmp-'
_STEP_CKPT = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


class CheckpointError(RuntimeError):
    """A checkpoint file that does not exist or cannot be read; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


# --------------------------------------------------------------------------------- checking
def checkpoint_problem(path: str) -> Optional[str]:
    """A short reason why ``path`` is not a complete ``torch.save`` file, or None if it is.

    Files in torch's zip format (every torch >= 1.6 save, all mmengine checkpoints) are checked
    completely: the zip directory (missing when the file is truncated), the ``data.pkl`` record,
    and the CRC of every record (bit rot, partly overwritten files). Nothing is unpickled. Files
    in the legacy pickle format can only be checked by loading them; they pass here.
    """
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(4)
    except FileNotFoundError:
        return 'no such file'
    except OSError as error:
        return f'cannot be read: {error.strerror or error}'
    if size == 0:
        return 'truncated or corrupt: empty file (0 bytes)'
    if head.startswith(b'PK'):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
                    return 'not a PyTorch checkpoint (a zip archive without data.pkl)'
                bad = archive.testzip()
        except zipfile.BadZipFile as error:
            return f'truncated or corrupt: {error} ({size} bytes)'
        except (OSError, EOFError, zlib.error, ValueError) as error:
            return f'truncated or corrupt: {type(error).__name__}: {error}'
        if bad is not None:
            return f'truncated or corrupt: CRC mismatch in record {bad}'
        return None
    if head[:1] == b'\x80':  # a pickle stream: torch's legacy (pre-1.6) format
        return None
    return 'not a PyTorch checkpoint (neither a zip archive nor a pickle)'


def _describe(path: str, reason: str) -> str:
    if reason == 'no such file':
        return f'{path} does not exist'
    if reason.startswith('not a PyTorch checkpoint'):
        return f'{path} is {reason}'
    return (f'{path} is not a readable checkpoint ({reason}); the file is damaged (e.g. cut '
            f'short by an interrupted write or copy): re-create or re-download it, or use '
            f'another checkpoint')


def check_checkpoint_file(path: str) -> str:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete checkpoint file;
    return the (user-expanded) path. URLs (``scheme://``) are returned unchecked."""
    path = osp.expanduser(str(path))
    if '://' in path:
        return path
    if not osp.isfile(path):
        raise CheckpointNotFoundError(f'{path} does not exist' +
                                      (' (it is a directory)' if osp.isdir(path) else ''))
    reason = checkpoint_problem(path)
    if reason is not None:
        raise CheckpointError(_describe(path, reason))
    return path


def _short(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    text = text if len(text) <= limit else text[:limit] + '...'
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def load_checkpoint_file(path: str, map_location=None, weights_only: bool = False):
    """``torch.load`` a local checkpoint; any failure is one :class:`CheckpointError` naming the
    file (no pickle traceback).

    ``weights_only=False`` (the default) is torch < 2.6's behaviour, for files the user names:
    mmengine's training checkpoints carry non-tensor metadata that ``weights_only=True`` refuses.
    """
    path = check_checkpoint_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - every failure of a load is reported the same way
        if weights_only and 'Weights only load failed' in str(error):
            raise  # a policy refusal, not a damaged file: callers decide what to do
        if isinstance(error, (ModuleNotFoundError, AttributeError)):
            raise CheckpointError(
                f'{path} could not be loaded: it pickles objects of code that is not available '
                f'here ({_short(error)})') from None
        raise CheckpointError(_describe(path, f'truncated or corrupt: {_short(error)}')) from None


# --------------------------------------------------------------------------------- writing
def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: str) -> str:
    directory, name = osp.split(path)
    return osp.join(directory, f'.{name}{_TMP_MARK}{os.getpid()}')


def _remove_stale_tmp(path: str) -> None:
    """Remove temporary files of earlier, killed writes of the same checkpoint."""
    directory, name = osp.split(path)
    prefix = f'.{name}{_TMP_MARK}'
    try:
        entries = os.listdir(directory or '.')
    except OSError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry != osp.basename(_tmp_name(path)):
            try:
                os.remove(osp.join(directory, entry))
            except OSError:
                pass


def temporary_path(path: str) -> str:
    """Where an atomic write of ``path`` puts its bytes before :func:`commit_file` renames them
    into place: a hidden file in the same directory (same filesystem, so the rename is atomic),
    named after this process so concurrent writers never share one."""
    return _tmp_name(osp.abspath(osp.expanduser(path)))


def commit_file(tmp: str, path: str) -> None:
    """Make the complete file ``tmp`` appear as ``path`` in one step: fsync it, ``os.replace``,
    fsync the directory, and remove temporary files that killed earlier writes left behind."""
    path = osp.abspath(osp.expanduser(path))
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(path))
    _remove_stale_tmp(path)


def discard(tmp: str) -> None:
    """Remove the temporary file of a write that failed (nothing if it is not there)."""
    try:
        os.remove(tmp)
    except OSError:
        pass


def _write_atomic(data, path: str) -> None:
    """Write ``data`` (bytes-like) to ``path``: temporary file in the same directory, then
    :func:`commit_file`."""
    path = osp.abspath(osp.expanduser(path))
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, 'wb') as f:
            f.write(memoryview(data))
        commit_file(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def save_checkpoint_atomic(checkpoint, path: str) -> None:
    """``torch.save(checkpoint, path)``, but the file appears under ``path`` only once it is
    complete and on disk."""
    buffer = io.BytesIO()  # not closed explicitly: a failed write's traceback may still hold
    torch.save(checkpoint, buffer)  # views of it, and closing then would mask the error
    _write_atomic(buffer.getbuffer(), path)


def write_text_atomic(text: str, path: str) -> None:
    """Replace the text file ``path`` atomically (a reader sees the old or the new text)."""
    _write_atomic(text.encode('utf-8'), path)


# --------------------------------------------------------------------------------- resuming
def _step_checkpoints(directory: str, kind: Optional[str] = None) -> List[str]:
    """``iter_N.pth`` / ``epoch_N.pth`` files of ``directory``, newest (highest N) first."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _STEP_CKPT.match(entry)
        if match and (kind is None or match.group(1) == kind):
            full = osp.join(directory, entry)
            try:
                mtime = os.path.getmtime(full)
            except OSError:
                continue
            found.append((int(match.group(2)), mtime, full))
    return [p for _, _, p in sorted(found, reverse=True)]


def _newer_complete(named: str) -> str:
    """``named`` or a complete checkpoint of the same run written after it.

    A run killed between writing ``iter_N.pth`` and updating ``last_checkpoint`` leaves the
    pointer one checkpoint behind. A checkpoint of the same kind with a higher number that was
    written later than ``named`` (modification time) belongs to the same run; one written
    earlier is left over from another run in the same work dir and is ignored.
    """
    match = _STEP_CKPT.match(osp.basename(named))
    if not match:
        return named
    try:
        named_mtime = os.path.getmtime(named)
    except OSError:
        return named
    for candidate in _step_checkpoints(osp.dirname(named) or '.', match.group(1)):
        number = int(_STEP_CKPT.match(osp.basename(candidate)).group(2))
        if number <= int(match.group(2)):
            break
        try:
            newer = os.path.getmtime(candidate) >= named_mtime
        except OSError:
            continue
        if newer and checkpoint_problem(candidate) is None:
            print_log(f'{candidate} is complete and newer than {named}, which last_checkpoint '
                      f'names (the run stopped before updating it); resuming from {candidate}',
                      logger='current', level=logging.WARNING)
            return candidate
    return named


def find_last_complete_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint auto-resume (``--resume`` without a value) should start from.

    The file ``work_dir/last_checkpoint`` names when that file is complete (or a complete
    checkpoint of the same run written after it, see :func:`_newer_complete`). Otherwise (pointer
    missing, empty, or naming a missing, truncated or corrupt file) the newest complete
    ``iter_*.pth`` / ``epoch_*.pth`` in the work dir (and in the pointer's directory), with a
    warning that says what was wrong. None when there is nothing to resume from.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.exists(pointer):
        try:
            with open(pointer) as f:
                named = f.read().strip() or None
        except OSError:
            named = None
    if named is not None:
        reason = checkpoint_problem(named)
        if reason is None:
            return _newer_complete(named)
        state = 'does not exist' if reason == 'no such file' else f'is {reason}'
        what = f'{pointer} names {named}, which {state}'
    elif osp.exists(pointer):
        what = f'{pointer} is empty'
    else:
        what = f'{pointer} does not exist'

    match = _STEP_CKPT.match(osp.basename(named)) if named else None
    kind = match.group(1) if match else None
    directories = [work_dir] + ([osp.dirname(named)] if named and osp.dirname(named) else [])
    candidates = []
    for directory in dict.fromkeys(osp.abspath(d) for d in directories):
        candidates += _step_checkpoints(directory, kind)
    if not candidates and kind is not None:
        for directory in dict.fromkeys(osp.abspath(d) for d in directories):
            candidates += _step_checkpoints(directory)
    candidates = sorted(set(candidates), reverse=True,
                        key=lambda p: int(_STEP_CKPT.match(osp.basename(p)).group(2)))
    skipped = []
    for candidate in candidates:
        reason = checkpoint_problem(candidate)
        if reason is None:
            print_log(f'{what}; resuming from the newest complete checkpoint {candidate}' +
                      (f' (skipped incomplete: {", ".join(skipped)})' if skipped else ''),
                      logger='current', level=logging.WARNING)
            return candidate
        skipped.append(f'{osp.basename(candidate)} ({reason})')
    if named is not None or skipped:
        print_log(f'{what}, and the work dir has no complete checkpoint to resume from' +
                  (f' (incomplete: {", ".join(skipped)})' if skipped else '') +
                  '; training starts from the beginning', logger='current',
                  level=logging.WARNING)
    else:
        print_log(f'{what}: no checkpoint to resume from; training starts from the beginning',
                  logger='current', level=logging.WARNING)
    return None
