"""Rate-true replay: the shared Ouster bag played at its recorded rate (10 Hz), looped, by `mpnet-replay` (a
separate publisher process) to the segment node (another process) over Fast DDS. Records frames in / out and
drops (the node's /diagnostics), end-to-end latency p50 / p95 (input stamp to receipt of the labelled cloud) and
the node's RSS over the run; writes benchmarks/results/replay.md.

    python benchmarks/bench_replay.py [--duration 60] [--budgets 1000 3000]

Each configuration runs the node with the shipped default model (onnxruntime, CPU) and the default parameters
except processing_budget_ms; the ratio out/in is against the input rate measured in the same run.
`replay_run` is also the harness of tests/test_replay.py (short, with a tiny model).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUSTER_BAG = Path(os.environ.get('MPNET_SHARED', REPO.parent / 'shared')) / 'data' / 'ouster_os1_128'
RESULTS = REPO / 'benchmarks' / 'results' / 'replay.md'


def replay_run(ros_params: list[str], duration: float, domain: int | None = None, log_dir: str | None = None,
               start_timeout: float = 180.0) -> dict:
    """Start the node with `ros_params` (`-p name:=value` items), replay the Ouster bag looped for `duration` s at
    the recorded rate with `--measure`, sample the node's RSS; returns the figures (+ rss_* in MB, node_output)."""
    import psutil

    domain = domain if domain is not None else int(os.environ.get('ROS_DOMAIN_ID') or random.randint(1, 100))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONUNBUFFERED='1', FASTRTPS_DEFAULT_PROFILES_FILE=str(REPO / 'config' / 'fastdds_large_data.xml'))
    if log_dir:
        env['ROS_LOG_DIR'] = log_dir
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)
    node = subprocess.Popen([sys.executable, '-m', 'mpnet_ros.segment_node', '--ros-args',
                             '-r', '~/input:=/ouster/points', *ros_params], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def drain():
        for line in node.stdout:
            lines.append(line)
            if 'segmenting' in line:
                ready.set()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample():
        process = psutil.Process(node.pid)
        while not stop.is_set():
            try:
                rss.append((time.monotonic(), process.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.25)
    try:
        deadline = time.monotonic() + start_timeout
        while not ready.is_set() and node.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not ready.is_set():
            raise RuntimeError('the node did not start:\n' + ''.join(lines))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / 'replay.json'
            player = subprocess.run([sys.executable, '-m', 'mpnet_ros.replay', str(OUSTER_BAG), '--topic',
                                     '/ouster/points', '--loop', '--duration', str(duration), '--restamp',
                                     '--measure', '/mpnet_segment', '--json', str(out)], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=duration + 180)
            if player.returncode != 0:
                raise RuntimeError(f'mpnet-replay failed:\n{player.stdout}\n{player.stderr}')
            figures = json.loads(out.read_text())
        stop.set()
        sampler.join(timeout=5)
    finally:
        stop.set()
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        reader.join(timeout=5)
    during = [value for t, value in rss if t >= started]
    figures.update(rss_start_mb=round(during[0] / 1e6), rss_max_mb=round(max(during) / 1e6),
                   rss_end_mb=round(during[-1] / 1e6), node_exit=node.returncode, node_output=''.join(lines))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0)
    parser.add_argument('--budgets', type=float, nargs='+', default=[1000.0, 3000.0])
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='another node parameter for every run, e.g. device:=cuda (repeatable)')
    parser.add_argument('--results', type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    extra = [item for value in args.param for item in ('-p', value)]
    rows = []
    for budget in args.budgets:
        print(f'== processing_budget_ms {budget:g}: {args.duration:g} s of replay', flush=True)
        f = replay_run(['-p', f'processing_budget_ms:={budget}', *extra], args.duration)
        f.pop('latency_ms', None)
        output = f.pop('node_output')
        cropped = [line for line in output.splitlines() if 'cropped a frame' in line][:1]
        print(json.dumps(f, indent=1), *cropped, sep='\n', flush=True)
        rows.append((budget, f))
    lines = ['# Rate-true replay (`python benchmarks/bench_replay.py`)', '',
             f'The shared Ouster OS-1-128 bag (3 scans, ~107k valid points each) played by `mpnet-replay` at its '
             f'recorded 10 Hz, looped for {args.duration:g} s, restamped at send, to the segment node in another '
             'process over Fast DDS (shared-memory profile `config/fastdds_large_data.xml`); the shipped default '
             'model (onnxruntime on the CPU unless the extra parameters say otherwise), default parameters except '
             '`processing_budget_ms`. Frames over the block cap are cropped to the nearest range that fits. '
             f'Extra parameters: {" ".join(args.param) or "none"}. Measured {time.strftime("%Y-%m-%d")} on '
             f'{os.cpu_count()} CPU cores' + (' (a 2-core machine shared with other jobs)' if os.cpu_count() <= 2
                                              else '') + '.',
             '', '| budget ms | ms/block | cap (blocks) | sent (Hz) | node received | processed | dropped | cropped | '
             'out / in | latency p50 ms | p95 ms | RSS start / max / end MB |', '|' + '---|' * 12]
    for budget, f in rows:
        ratio = f['node_frames_processed'] / f['frames_sent'] if f['frames_sent'] else 0.0
        lines.append(f"| {budget:g} | {f['node_ms_per_block']} | {f['node_block_cap']} | {f['frames_sent']} "
                     f"({f['input_hz']}) | {f['node_frames_received']} | {f['node_frames_processed']} | "
                     f"{f['node_frames_dropped']} | {f['node_frames_cropped']} | {ratio:.3f} | "
                     f"{f['latency_p50_ms']} | {f['latency_p95_ms']} | {f['rss_start_mb']} / {f['rss_max_mb']} / "
                     f"{f['rss_end_mb']} |")
    lines += ['', 'Dropped frames are superseded by newer ones while the worker is busy (latest-only, no backlog); '
              'latency is from the frame\'s stamp at send to receipt of its labelled cloud, so it includes the wait '
              'for the worker, cropping and segmentation, and the transport both ways.', '']
    from mpnet_model.io.atomic import atomic_write_text

    atomic_write_text(args.results, '\n'.join(lines))
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
