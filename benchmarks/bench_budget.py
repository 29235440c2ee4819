"""The frame budget under odd input (issue 26): the robust cost model against the one before it, and how far over
the budget a cropped frame answers. Shipped model, onnxruntime, CPU.

1. One odd cloud: 4 good frames (20,000 points over 6 x 6 x 2 m, 121 blocks), one valid cloud of 500,000 points at
   a single coordinate, 8 good frames, with processing_budget_ms 1000, through the node's ScenePipeline. Baseline
   in the same run: the cost model before issue 26 (one moving average of ms per block, smoothing 0.3, primed by
   timing a 4-block cloud; every block counted as one, no per-point or per-frame part, no preparation time in the
   budget), on today's frame path otherwise. Reported: good frames cropped after the odd one, their kept points.
2. Cropped frames answered (ROS-free, the pipeline's total time per frame): the Ouster scans (107,000 points), a
   2,000,000-point cloud over 60 x 60 x 3 m and the scans again, at budgets 1000 and 3000 ms: total / budget.
3. The same over real DDS from publish to the labelled cloud, with the node in its own process (what a robot sees:
   transport and parsing of the message included): answer - budget is the margin the README states.

    python benchmarks/bench_budget.py [--skip-dds]

Writes benchmarks/results/budget.md.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpnet_model.io.atomic import atomic_write_text  # noqa: E402

SHARED = Path(os.environ.get('MPNET_SHARED', REPO.parent / 'shared'))
OUSTER_BAG = SHARED / 'data' / 'ouster_os1_128'
RESULTS = REPO / 'benchmarks' / 'results' / 'budget.md'
BUDGET_MS = 1000.0


def good_frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform((-3, -3, 0), (3, 3, 2), (20_000, 3)).astype(np.float32)


def degenerate_frame() -> np.ndarray:
    return np.tile(np.float32([[1.0, 2.0, 0.5]]), (500_000, 1))


def big_frame(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform((-30, -30, 0), (30, 30, 3), (2_000_000, 3)).astype(np.float32)


def parsed(xyz: np.ndarray, stamp: int):
    from mpnet_ros.cloud_io import ParsedCloud

    return ParsedCloud(xyz=xyz, rgb=None, intensity=None, source_index=np.arange(len(xyz)), frame_id='sensor',
                       stamp_ns=stamp, num_input_points=len(xyz))


# --- the baseline: the cost model before issue 26 (benchmark-only stand-ins, named as such) ----------------------

class MovingAverageCost:
    """The pre-issue-26 BlockCost: ms per block = an exponential moving average (0.3) of segment ms / blocks."""

    def __init__(self, ms_per_block: float, smoothing: float = 0.3):
        self._ms_per_block, self.smoothing, self.samples = ms_per_block, smoothing, 1

    ms_per_block = property(lambda self: self._ms_per_block)
    ms_per_point = fixed_ms = point_weight = 0.0

    def predict_ms(self, load: float) -> float:
        return self._ms_per_block * load

    def update(self, load: float, elapsed_ms: float) -> None:
        self._ms_per_block += self.smoothing * (elapsed_ms / load - self._ms_per_block)
        self.samples += 1

    def cap(self, budget_ms: float) -> int:
        return max(1, int(budget_ms // self._ms_per_block))


class BlocksCountOne:
    """The segmenter as the budget saw it before: no point buckets, the grid layout, so the plan counts every block
    of the grid as one (segmenting is the real segmenter's, with its own layout)."""

    def __init__(self, segmenter):
        self._segmenter = segmenter

    point_buckets = ()
    layout = 'grid'

    def __getattr__(self, name):
        return getattr(self._segmenter, name)


class NoPreparation:
    """No preparation time predicted (before issue 26 the budget covered the segmenter only)."""

    value = None

    def add(self, value: float) -> None:
        pass

    def __len__(self) -> int:
        return 0


def baseline_pipeline(params, segmenter):
    from mpnet_model.infer.budget import calibration_cloud, estimate_blocks
    from mpnet_ros.pipeline import ScenePipeline

    segmenter.segment(calibration_cloud(segmenter.num_points, side=0.9, seed=1))
    xyz = calibration_cloud(segmenter.num_points, side=1.5)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        segmenter.segment(xyz)
        timings.append((time.perf_counter() - start) * 1e3)
    blocks = estimate_blocks(xyz, segmenter.block_size, segmenter.stride, segmenter.min_block_points)
    pipeline = ScenePipeline(params, BlocksCountOne(segmenter))
    pipeline.cost = MovingAverageCost(min(timings) / blocks)
    pipeline.prepare_rate = NoPreparation()
    return pipeline


def new_pipeline(params, segmenter):
    from mpnet_ros.pipeline import ScenePipeline

    pipeline = ScenePipeline(params, segmenter)
    pipeline.calibrate()
    return pipeline


def run(pipeline, frames: list[tuple[str, np.ndarray]], label: str) -> list[dict]:
    rows = []
    for stamp, (name, xyz) in enumerate(tqdm(frames, desc=label, leave=False), start=1):
        pipeline.add(parsed(xyz, stamp))
        try:
            result = pipeline.process(pipeline.window.snapshot())
        except Exception as error:  # noqa: BLE001 - a refusal is a result here
            rows.append({'name': name, 'points': len(xyz), 'kept': 0, 'total_ms': float('nan'),
                         'segment_ms': float('nan'), 'prepare_ms': float('nan'),
                         'ms_per_block': pipeline.cost.ms_per_block, 'note': f'{type(error).__name__}: {error}'})
            continue
        rows.append({'name': name, 'points': len(xyz), 'kept': len(result.xyz), 'total_ms': result.timings['total_ms'],
                     'segment_ms': result.timings['segment_ms'], 'prepare_ms': result.timings['prepare_ms'],
                     'ms_per_block': pipeline.cost.ms_per_block})
        pipeline.trim()
    return rows


def odd_cloud_part(segmenter_for) -> list[str]:
    from mpnet_ros.params import validate_params

    params = validate_params({'processing_budget_ms': BUDGET_MS})
    frames = ([(f'good {k}', good_frame(k)) for k in range(4)] + [('500k at one point', degenerate_frame())]
              + [(f'good {k}', good_frame(k)) for k in range(4, 12)])
    results = {'before (moving average)': run(baseline_pipeline(params, segmenter_for()), frames, 'baseline'),
               'issue 26 (robust)': run(new_pipeline(params, segmenter_for()), frames, 'robust')}
    lines = [f'## 1. One odd cloud among good frames (budget {BUDGET_MS:.0f} ms)', '',
             '| cost model | good frames after the odd one cropped | points kept before -> after it (mean) | '
             'odd cloud ms | ms/block before -> after it | good frames over budget |', '|---|---|---|---|---|---|']
    for label, rows in results.items():
        after = rows[5:]
        cropped = sum(row['kept'] < row['points'] for row in after)
        kept = np.mean([row['kept'] / row['points'] for row in after])
        kept_before = np.mean([row['kept'] / row['points'] for row in rows[:4]])
        over = sum(row['total_ms'] > BUDGET_MS for row in rows if row['name'].startswith('good'))
        odd = f"{rows[4]['total_ms']:.0f}" if rows[4]['kept'] else 'refused'
        lines.append(f"| {label} | {cropped} of {len(after)} | {kept_before:.0%} -> {kept:.0%} | {odd} | "
                     f"{rows[3]['ms_per_block']:.1f} -> {rows[4]['ms_per_block']:.1f} | {over} |")
    lines += ['', 'Per frame (points kept / total ms):', '', '| frame | ' + ' | '.join(results) + ' |',
              '|---|' + '---|' * len(results)]
    for index, (name, xyz) in enumerate(frames):
        cells = [f"{rows[index]['kept']:,} / {rows[index]['total_ms']:.0f}" for rows in results.values()]
        lines.append(f'| {name} ({len(xyz):,}) | ' + ' | '.join(cells) + ' |')
    notes = [f'- {label}, {rows[index]["name"]}: {rows[index]["note"]}' for label, rows in results.items()
             for index in range(len(rows)) if 'note' in rows[index]]
    return lines + ([''] + notes if notes else [])


def ouster_frames() -> list[np.ndarray]:
    from rosbags.highlevel import AnyReader

    from mpnet_ros.cloud_io import parse_cloud

    with AnyReader([OUSTER_BAG]) as reader:
        return [parse_cloud(reader.deserialize(raw, conn.msgtype)).xyz for conn, _, raw in reader.messages()]


def crop_part(segmenter_for) -> list[str]:
    from mpnet_ros.params import validate_params

    lines = ['## 2. Cropped frames, the pipeline alone (total time per frame vs the budget)', '',
             '| frame | budget ms | points kept | prepare ms | segment ms | total ms | total / budget |',
             '|---|---|---|---|---|---|---|']
    scans = ouster_frames()
    for budget in (1000.0, 3000.0):
        pipeline = new_pipeline(validate_params({'processing_budget_ms': budget}), segmenter_for())
        # Pass 1 right after the start-up calibration; pass 2 once the level follows the frames (a running node).
        frames = ([(f'Ouster scan {k}, pass 1', scan) for k, scan in enumerate(scans)]
                  + [(f'2M points, 60 x 60 m ({k})', big_frame(k)) for k in range(2)]
                  + [(f'Ouster scan {k}, pass 2', scan) for k, scan in enumerate(scans)])
        for row in run(pipeline, frames, f'crop {budget:.0f}'):
            lines.append(f"| {row['name']} ({row['points']:,}) | {budget:.0f} | {row['kept']:,} | "
                         f"{row['prepare_ms']:.0f} | {row['segment_ms']:.0f} | {row['total_ms']:.0f} | "
                         f"{row['total_ms'] / budget:.2f} |")
    return lines


# --- over DDS ----------------------------------------------------------------------------------------------------

def dds_part(budget_ms: float, repeats: int) -> list[str]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Float64

    sys.path.insert(0, str(REPO / 'tests'))
    from ros_helpers import to_rclpy, xyz_cloud

    domain = random.randint(101, 200)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               FASTRTPS_DEFAULT_PROFILES_FILE=str(REPO / 'config' / 'fastdds_large_data.xml'), PYTHONUNBUFFERED='1')
    os.environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = env['FASTRTPS_DEFAULT_PROFILES_FILE']
    node = subprocess.Popen([sys.executable, '-m', 'mpnet_ros.segment_node', '--ros-args', '-r',
                             '~/input:=/bench_budget/points', '-p', f'processing_budget_ms:={budget_ms}'],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(node.stdout), daemon=True).start()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    client = rclpy.create_node('bench_budget_client', context=context)
    got, times, lock = [], [], threading.Lock()

    def keep(target):
        def callback(msg):
            with lock:
                target.append((time.monotonic(), msg))
        return callback
    client.create_subscription(PointCloud2, '/mpnet_segment/labeled_cloud', keep(got), 2)
    client.create_subscription(Float64, '/mpnet_segment/debug/processing_time_ms', keep(times), 10)
    publisher = client.create_publisher(PointCloud2, '/bench_budget/points', 1)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    rows = []
    try:
        deadline = time.monotonic() + 180
        while not any('segmenting ' in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.2)
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        scans = ouster_frames()
        clouds = [(f'Ouster scan {k % 3}', scans[k % 3]) for k in range(repeats)] + [
            (f'2M points, 60 x 60 m ({k})', big_frame(k)) for k in range(repeats)]
        for stamp, (name, xyz) in enumerate(tqdm(clouds, desc='dds', leave=False), start=1):
            msg = to_rclpy(xyz_cloud(xyz, frame_id='sensor', stamp_ns=stamp * 1_000_000_000))
            with lock:
                got.clear()
                times.clear()
            sent = time.monotonic()
            publisher.publish(msg)
            answer = None
            while time.monotonic() - sent < 60:
                with lock:
                    mine = [(t, m) for t, m in got if m.header.stamp.sec == stamp]
                if mine:
                    answer = mine[0]
                    break
                time.sleep(0.01)
            time.sleep(0.3)
            with lock:
                node_ms = times[0][1].data if times else float('nan')
            if answer is None:
                rows.append((name, len(xyz), 0, float('nan'), node_ms))
            else:
                rows.append((name, len(xyz), answer[1].width, (answer[0] - sent) * 1e3, node_ms))
            time.sleep(0.5)
    finally:
        executor.shutdown()
        client.destroy_node()
        rclpy.try_shutdown(context=context)
        node.send_signal(2)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    lines = [f'## 3. Over DDS, node in its own process, publish -> labelled cloud (budget {budget_ms:.0f} ms)', '',
             '| frame | points kept | node processing ms | publish -> answer ms | answer - budget ms |',
             '|---|---|---|---|---|']
    for name, points, kept, answer_ms, node_ms in rows:
        lines.append(f'| {name} ({points:,}) | {kept:,} | {node_ms:.0f} | {answer_ms:.0f} | '
                     f'{answer_ms - budget_ms:+.0f} |')
    answered = [row[3] for row in rows if np.isfinite(row[3])]
    lines += ['', f'{len(answered)} of {len(rows)} answered; worst answer {max(answered):.0f} ms = budget '
                  f'{budget_ms:.0f} ms {max(answered) - budget_ms:+.0f} ms' if answered else 'none answered']
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--skip-dds', action='store_true', help='only the in-process parts 1 and 2')
    parser.add_argument('--repeats', type=int, default=3, help='frames of each kind over DDS')
    args = parser.parse_args(argv)
    if not OUSTER_BAG.exists():
        print(f'bench_budget: shared data not found at {OUSTER_BAG}')
        return 1
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import make_segmenter

    def segmenter_for():
        return make_segmenter(validate_params({}))

    load = os.getloadavg()
    lines = ['# bench_budget: the frame budget under odd input (issue 26)', '',
             f'Shipped model, onnxruntime, CPU ({os.cpu_count()} cores, shared: load average {load[0]:.1f} at the '
             f'start); `python benchmarks/bench_budget.py`.', '']
    lines += odd_cloud_part(segmenter_for) + ['']
    lines += crop_part(segmenter_for) + ['']
    if not args.skip_dds:
        lines += dds_part(BUDGET_MS, args.repeats) + ['']
    text = '\n'.join(lines)
    print(text)
    atomic_write_text(RESULTS, text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
