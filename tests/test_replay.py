"""Rate-true replay: the Ouster bag at its recorded rate (10 Hz), looped, from a publisher process (`mpnet-replay`)
to the node in another process over DDS: frames in / out and drops in /diagnostics, latency p50 / p95, RSS over the
run. A short run with a tiny model and a crop box; `benchmarks/bench_replay.py` is the long run with the shipped
model (figures in benchmarks/results/replay.md and the README)."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('psutil')
from ros_helpers import OUSTER_BAG, tiny_checkpoint  # noqa: E402
from ros_process import REPO, domain_id  # noqa: E402

sys.path.insert(0, str(REPO / 'benchmarks'))
from bench_replay import replay_run  # noqa: E402

pytestmark = pytest.mark.ros
CROP_BOX = '[-4.0, -10.0, -3.0, 4.0, -8.0, 5.0]'   # ~12k points on a building front: ~1 s a frame here


def test_rate_true_replay_reports_frames_drops_latency_and_memory(tmp_path):
    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    f = replay_run(['-p', f'model_path:={checkpoint}', '-p', 'backend:=torch', '-p', f'crop_box:={CROP_BOX}',
                    '-p', 'processing_budget_ms:=60000.0', '-p', 'diagnostics_period:=0.25'], duration=6.0,
                   domain=domain_id(), log_dir=str(tmp_path / 'log'))
    print({k: v for k, v in f.items() if k not in ('latency_ms', 'node_output')})
    assert 9.0 <= f['input_hz'] <= 10.5 and f['frames_sent'] >= 50          # the recorded 10 Hz, looped
    assert f['node_frames_received'] >= 0.5 * f['frames_sent'], f           # best effort, keep-last 1
    assert f['node_frames_processed'] >= 3 and f['node_frames_dropped'] > 0, f
    accounted = sum(f[k] for k in ('node_frames_processed', 'node_frames_dropped', 'node_parse_errors',
                                   'node_segment_errors'))
    assert 0 <= f['node_frames_received'] - accounted <= 2, f     # every frame in is out, dropped or in flight
    assert f['labelled_received'] >= f['node_frames_processed'] - 1, f
    assert 0 < f['latency_p50_ms'] <= f['latency_p95_ms'] < 30_000, f
    assert f['rss_max_mb'] - f['rss_start_mb'] < 500, f
    assert f['node_exit'] == 0, f['node_output']
