"""Test-only fault injection: run a tool with every checkpoint write paused half way.

    python _pause_checkpoint_writes.py SECONDS tools/train.py ARGS...

mmengine writes a checkpoint's bytes with ``LocalBackend.put``; here that writes the first half,
flushes it to disk, sleeps ``SECONDS`` and writes the rest, so a test can SIGKILL the process
*during* a write and check what the work dir holds afterwards.
"""
import os
import runpy
import sys
import time

from mmengine.fileio.backends.local_backend import LocalBackend

_real_put = LocalBackend.put


def _paused_put(self, obj, filepath):
    if not str(filepath).rsplit('/', 1)[-1].lstrip('.').split('.tmp-')[0].endswith('.pth'):
        return _real_put(self, obj, filepath)
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    with open(filepath, 'wb') as f:
        half = len(obj) // 2
        f.write(obj[:half])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(PAUSE)
        f.write(obj[half:])


if __name__ == '__main__':
    PAUSE = float(sys.argv[1])
    LocalBackend.put = _paused_put
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name='__main__')
