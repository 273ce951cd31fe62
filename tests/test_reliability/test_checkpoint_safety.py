"""With ``ResumableRunner`` (what the shipped configs select) checkpoints are written atomically
and auto-resume picks the last complete checkpoint; a damaged checkpoint is one clear error
naming the file - from mmengine's own API (where mmattn's local loader is registered), the
Runner, tools/train.py (--resume CKPT, load_from), tools/test.py and the PSA converter.

Faults injected: a save that fails half way (unpicklable object, or an error after half the bytes
are written), a crash between writing a checkpoint and the pointer, a half-written checkpoint
under its final name with ``last_checkpoint`` naming it (what mmengine 0.10.7 leaves when killed
in ``torch.save``), a missing / empty pointer, a pointer behind the newest checkpoint, truncated,
bit-flipped, empty and non-checkpoint files.
"""
import os
import pathlib
import runpy
import subprocess
import sys

import pytest
import torch

import mmattn  # noqa: F401,I001
import mmengine.runner.runner as mmengine_runner
from _toy_runner import StartIter, ToyModel, toy_runner
from mmengine.runner import load_checkpoint
from mmattn.compat import needs_local_loader_fix
from mmattn.utils.checkpoint import (CheckpointError, checkpoint_problem,
                                     find_last_complete_checkpoint, save_checkpoint_atomic,
                                     write_text_atomic)

save_checkpoint = save_checkpoint_atomic  # the atomic writer the runner and tests use
# mmengine's own loaders raise CheckpointError only where mmattn registers its local loader
needs_loader_fix = pytest.mark.skipif(
    not needs_local_loader_fix(), reason="mmengine's own local loader is in use with this torch "
    'and mmengine (torch < 2.6): its errors are its own')

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEG_CONFIG = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'


# ----------------------------------------------------------------------------- a toy Runner
def _runner(work_dir, max_iters, **kwargs):
    return toy_runner(work_dir, max_iters, dropout=0.3, **kwargs)


def _truncate(path, fraction=0.5):
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[:int(len(data) * fraction)])


def _flip_middle(path):
    data = bytearray(pathlib.Path(path).read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    pathlib.Path(path).write_bytes(bytes(data))


@pytest.fixture
def good_ckpt(tmp_path):
    path = tmp_path / 'good.pth'
    save_checkpoint(dict(state_dict=ToyModel().state_dict(), meta=dict(iter=1)), str(path))
    return path


# ----------------------------------------------------------------------------- atomic writes
def test_a_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path, good_ckpt):
    before = good_ckpt.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(dict(state_dict={}, bad=lambda: 0), str(good_ckpt))  # unpicklable
    assert good_ckpt.read_bytes() == before
    new = tmp_path / 'new.pth'
    with pytest.raises(Exception):
        save_checkpoint(dict(bad=lambda: 0), str(new))
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['good.pth']  # no temporary file


def test_an_error_half_way_through_the_write_leaves_no_file(tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):  # the first fsync is of the written temporary file
        calls.append(fd)
        raise OSError('disk full (injected)')

    monkeypatch.setattr(os, 'fsync', failing_fsync)
    path = tmp_path / 'iter_1.pth'
    with pytest.raises(OSError, match='injected'):
        save_checkpoint(dict(state_dict=ToyModel().state_dict()), str(path))
    monkeypatch.setattr(os, 'fsync', real_fsync)
    assert calls and not path.exists() and not list(tmp_path.iterdir())


def test_pointer_is_replaced_atomically(tmp_path, monkeypatch):
    pointer = tmp_path / 'last_checkpoint'
    write_text_atomic('/old/iter_1.pth', str(pointer))
    monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('killed')))
    with pytest.raises(OSError):
        write_text_atomic('/new/iter_2.pth', str(pointer))
    assert pointer.read_text() == '/old/iter_1.pth'
    assert [p.name for p in tmp_path.iterdir()] == ['last_checkpoint']


def _crash_on_third_write(monkeypatch, writer_module):
    """Make the third checkpoint write fail half way: half of its bytes reach the file, then
    the process is 'killed'."""
    real = writer_module.save_checkpoint
    count = []

    def crash_on_third(checkpoint, path, *args, **kwargs):
        count.append(path)
        if len(count) == 3:
            real(checkpoint, path, *args, **kwargs)
            data = pathlib.Path(path).read_bytes()
            pathlib.Path(path).write_bytes(data[:len(data) // 2])
            raise KeyboardInterrupt('killed while writing iter_3 (injected)')
        real(checkpoint, path, *args, **kwargs)

    monkeypatch.setattr(writer_module, 'save_checkpoint', crash_on_third)


def test_crash_while_writing_keeps_the_last_checkpoint_and_its_pointer(tmp_path, monkeypatch):
    """mmengine 0.10.7's CheckpointHook deletes the checkpoint beyond max_keep_ckpts before
    writing the new one and writes in place: with max_keep_ckpts=1 a crash in that write leaves
    no complete checkpoint. ResumableRunner keeps iter_2 and the pointer to it."""
    _crash_on_third_write(monkeypatch, mmengine_runner)
    runner = _runner(tmp_path, max_iters=5, max_keep_ckpts=1)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']
    assert not list(tmp_path.glob('.*.tmp-*'))  # the half-written temporary file is removed
    assert checkpoint_problem(str(tmp_path / 'iter_2.pth')) is None
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')


def test_mmengines_own_runner_loses_every_checkpoint_in_the_same_crash(tmp_path, monkeypatch):
    """The same fault with mmengine's Runner: what the opt-in runner is for (and proof that
    the fault injection above really hits the write)."""
    from mmengine.runner import Runner
    _crash_on_third_write(monkeypatch, mmengine_runner)
    runner = _runner(tmp_path, max_iters=5, max_keep_ckpts=1, runner_cls=Runner)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    assert [checkpoint_problem(str(p)) is None for p in tmp_path.glob('*.pth')] == [False]


# ----------------------------------------------------------------------------- auto-resume
def _work_dir_with(tmp_path, steps=(1, 2, 3)):
    for i, step in enumerate(steps):
        path = tmp_path / f'iter_{step}.pth'
        save_checkpoint(dict(meta=dict(iter=step), state_dict=dict(w=torch.zeros(20000))),
                        str(path))
        os.utime(path, (1000 + i, 1000 + i))
    return tmp_path


@pytest.fixture
def logged(monkeypatch):
    messages = []
    import mmattn.utils.checkpoint as ckpt_mod
    monkeypatch.setattr(ckpt_mod, 'print_log', lambda msg, **kw: messages.append(msg))
    return messages


def test_resume_pointer_to_half_written_file_falls_back(tmp_path, logged):
    work = _work_dir_with(tmp_path)
    _truncate(work / 'iter_3.pth')  # left under the final name by an interrupted torch.save
    (work / 'last_checkpoint').write_text(str(work / 'iter_3.pth'))
    assert find_last_complete_checkpoint(str(work)) == str(work / 'iter_2.pth')
    assert 'iter_3.pth' in logged[-1] and 'truncated or corrupt' in logged[-1]


@pytest.mark.parametrize('pointer', [None, '', 'missing'])
def test_resume_without_a_usable_pointer_takes_the_newest_complete(tmp_path, logged, pointer):
    work = _work_dir_with(tmp_path)
    _flip_middle(work / 'iter_3.pth')  # bit rot: CRC mismatch
    if pointer is not None:
        (work / 'last_checkpoint').write_text(
            str(work / 'iter_9.pth') if pointer == 'missing' else pointer)
    assert find_last_complete_checkpoint(str(work)) == str(work / 'iter_2.pth')
    assert 'iter_3.pth (truncated or corrupt: CRC mismatch' in logged[-1]


def test_resume_pointer_behind_a_newer_complete_checkpoint(tmp_path, logged):
    work = _work_dir_with(tmp_path, steps=(9, 1, 2, 3))  # iter_9: older, from another run
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))  # killed before update
    assert find_last_complete_checkpoint(str(work)) == str(work / 'iter_3.pth')


def test_resume_with_nothing_complete_starts_over(tmp_path, logged):
    work = _work_dir_with(tmp_path, steps=(1, ))
    _truncate(work / 'iter_1.pth')
    (work / 'last_checkpoint').write_text(str(work / 'iter_1.pth'))
    assert find_last_complete_checkpoint(str(work)) is None
    assert 'no complete checkpoint' in logged[-1]


def test_runner_resumes_past_a_half_written_checkpoint_to_identical_weights(tmp_path):
    straight = _runner(tmp_path / 'straight', max_iters=6)
    straight.train()
    first = _runner(tmp_path / 'run', max_iters=4)
    first.train()
    _truncate(tmp_path / 'run' / 'iter_4.pth')  # as if killed inside torch.save of iter_4
    start = StartIter()
    resumed = _runner(tmp_path / 'run', max_iters=6, resume=True, custom_hooks=[start])
    resumed.train()
    # resumed from iter_3, past the truncated iter_4 (a fresh start, 0, would also end with
    # the same weights: training is deterministic)
    assert start.iter == 3
    assert resumed.iter == 6
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- clear errors
DAMAGE = {'truncated': _truncate, 'bit_flipped': _flip_middle,
          'empty': lambda p: pathlib.Path(p).write_bytes(b''),
          'not_a_checkpoint': lambda p: pathlib.Path(p).write_text('hello')}


@needs_loader_fix
@pytest.mark.parametrize('damage', list(DAMAGE))
def test_mmengine_loaders_raise_one_clear_error(good_ckpt, damage):
    DAMAGE[damage](good_ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ToyModel(), str(good_ckpt))
    message = str(info.value)
    assert str(good_ckpt) in message
    assert ('not a readable checkpoint' in message or 'not a PyTorch checkpoint' in message)
    error = info.value  # no chained pickle / zip traceback
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@needs_loader_fix
@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume_ckpt'])
def test_runner_load_from_and_resume_of_a_truncated_file(tmp_path, good_ckpt, resume):
    _truncate(good_ckpt)
    runner = _runner(tmp_path / 'w', max_iters=1, load_from=str(good_ckpt), resume=resume)
    with pytest.raises(CheckpointError, match=f'{good_ckpt} is not a readable checkpoint'):
        runner.train()


def _main(script, argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [str(script)] + [str(a) for a in argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name='__main__')
    return str(info.value.code)


def test_tools_test_py_with_a_truncated_checkpoint(tmp_path, good_ckpt, monkeypatch):
    _truncate(good_ckpt)
    message = _main(ROOT / 'tools/test.py', [SEG_CONFIG, good_ckpt, '--work-dir', tmp_path],
                    monkeypatch)
    assert message.startswith(f'CheckpointError: {good_ckpt} is not a readable checkpoint '
                              f'(truncated or corrupt: ')
    assert '\n' not in message


def test_tools_train_py_load_from_a_truncated_checkpoint(tmp_path, good_ckpt, monkeypatch):
    _truncate(good_ckpt)
    message = _main(ROOT / 'tools/train.py', [SEG_CONFIG, '--work-dir', tmp_path,
                                              '--cfg-options', f'load_from={good_ckpt}'],
                    monkeypatch)
    assert message.startswith(f'CheckpointError: {good_ckpt} is not a readable checkpoint')


@pytest.mark.slow
def test_tools_train_py_resume_a_truncated_checkpoint_cli(tmp_path, good_ckpt):
    """The real command line: one line on stderr, exit status 1, no traceback."""
    _truncate(good_ckpt)
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(SEG_CONFIG), '--work-dir',
         str(tmp_path / 'w'), '--resume', str(good_ckpt)], cwd=ROOT, capture_output=True,
        text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'CheckpointError: {good_ckpt} is not a readable checkpoint (truncated or corrupt: ')


def test_converter_with_a_truncated_checkpoint(tmp_path, good_ckpt, capsys):
    converter = runpy.run_path(str(ROOT / 'tools/convert/official_psa_to_mmattn.py'))
    _truncate(good_ckpt)
    assert converter['main']([str(good_ckpt), str(tmp_path / 'out.pth')]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {good_ckpt} is not a readable checkpoint (truncated')
    assert '\n' not in err
