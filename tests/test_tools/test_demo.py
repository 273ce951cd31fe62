"""The README's main job, run as the README gives it: both demos must learn past their
thresholds (segmentation mIoU >= 40, chance ~3; pose COCO AP >= 0.2, chance 0)."""
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_main_job_trains_and_beats_chance(tmp_path):
    env = dict(os.environ, MMATTN_DEMO_DATA=str(tmp_path / 'data'))
    run = subprocess.run(['bash', str(ROOT / 'tools/run_demo.sh'), 'all'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=2400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    assert '== [seg] mIoU' in out and '== [pose] coco/AP' in out and 'FAIL' not in out
    seg = json.loads((ROOT / 'work_dirs/demo_seg/test/metrics.json').read_text())
    pose = json.loads((ROOT / 'work_dirs/demo_pose/test/metrics.json').read_text())
    assert seg['mIoU'] >= 40
    assert pose['coco/AP'] >= 0.2
