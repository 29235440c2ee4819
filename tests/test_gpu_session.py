"""The one-command GPU session (benchmarks/gpu_session.sh) and its prepare step: the step list parses, every step
the script runs is listed, and the carry folder reproduces the shared frames within the device tool's size limit."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from runtime_fixtures import needs_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_session.sh'


def test_step_list_parses_and_names_every_step_the_script_runs():
    listed = subprocess.run(['bash', str(SCRIPT), '--list'], capture_output=True, text=True, check=True).stdout
    steps = {line.split()[0]: int(line.split()[1].rstrip('s')) for line in listed.splitlines()}
    assert list(steps) == ['env', 'tests', 'frame', 'syncs', 'half', 'postprocess', 'tensorrt', 'replay']
    text = SCRIPT.read_text()
    used = set(re.findall(r'(?:run_step|skip_step) "?(\w+)', text)) - {'NAME'}
    assert used <= set(steps), f'steps run but not listed: {used - set(steps)}'
    # the GPU steps fit one device command (<= 10 min) with room for the start and the transfers
    assert sum(limit for name, limit in steps.items() if name != 'tensorrt') <= 9 * 60
    assert re.search(r'BUDGET=\$\{GPU_SESSION_BUDGET:-(\d+)\}', text).group(1) == '520'


def test_unknown_option_is_refused():
    result = subprocess.run(['bash', str(SCRIPT), '--bogus'], capture_output=True, text=True)
    assert result.returncode == 2 and 'usage' in result.stderr


@needs_data
def test_prepare_writes_frames_that_match_the_shared_data_under_the_carry_limit(tmp_path):
    out = tmp_path / 'carry'
    subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu_session_prepare.py'), '--out', str(out),
                    '--no-frame-blocks'], check=True, capture_output=True, cwd=ROOT)
    npz = out / 'frames.npz'
    assert npz.stat().st_size < 64 * 2**20
    with np.load(npz) as data:
        assert {'ouster_os1_128_0_xyz', 'ouster_os1_128_2_intensity', 'pcl_office1_xyz', 'pcl_office1_rgb'} <= set(
            data.files)
    # read back through sample_frames as the device does: no shared data, only the .npz
    code = ('from benchmarks import sample_frames as s; import numpy as np; x, i = s.ouster_crop(0, 15.0); '
            'o, c = s.office_scan(); print(len(x), len(o), s.missing() == "")')
    env = {**os.environ, 'MPNET_SHARED_DATA': str(tmp_path / 'absent'), 'MPNET_FRAMES_NPZ': str(npz),
           'PYTHONPATH': str(ROOT)}
    printed = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, check=True,
                             cwd=ROOT).stdout.split()
    from runtime_fixtures import office_cloud, ouster_cloud
    assert printed == [str(len(ouster_cloud()[0])), str(len(office_cloud()[0])), 'True']
