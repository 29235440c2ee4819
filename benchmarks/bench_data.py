"""Benchmark: S3DIS text parsing and room -> block partitioning, against the obvious baselines in the same run.

(a) parsing an `x y z r g b` annotation file: `s3dis.read_points_txt` (np.loadtxt C parser + slow fallback) vs
    a Python line-by-line parse (baseline), `np.fromstring(sep=' ')` and `np.array(text.split())`;
(b) assigning points to the 1 m / 0.5 m block grid: `blocks.partition_blocks` (one argsort) vs ASIS's loop of one
    boolean mask over all points per grid cell (baseline); plus the full `room_to_blocks` with 4096-point sampling.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data.py [--lines 300000] [--points 1000000]
Writes benchmarks/results/bench_data.md.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mpnet_model.data.blocks import partition_blocks, room_to_blocks
from mpnet_model.data.s3dis import read_points_txt


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parse_python_lines(path: Path) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()])


def asis_block_members(xyz: np.ndarray, block_size: float, stride: float, min_points: int) -> list[np.ndarray]:
    shifted = xyz - xyz.min(axis=0)
    limit = shifted.max(axis=0)
    members = []
    for i in range(int(np.ceil((limit[0] - block_size) / stride)) + 1):
        for j in range(int(np.ceil((limit[1] - block_size) / stride)) + 1):
            x0, y0 = i * stride, j * stride
            cond = ((shifted[:, 0] <= x0 + block_size) & (shifted[:, 0] >= x0)
                    & (shifted[:, 1] <= y0 + block_size) & (shifted[:, 1] >= y0))
            if cond.sum() >= min_points:
                members.append(np.flatnonzero(cond))
    return members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lines', type=int, default=300_000)
    parser.add_argument('--points', type=int, default=1_000_000)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'chair_1.txt'
        xyz = rng.uniform(0, 20, size=(args.lines, 3))
        rgb = rng.integers(0, 256, size=(args.lines, 3))
        table = np.concatenate([xyz, rgb], axis=1)
        path.write_text(('%.3f %.3f %.3f %d %d %d\n' * args.lines) % tuple(table.ravel().tolist()))
        reference = read_points_txt(path)
        assert np.array_equal(reference, parse_python_lines(path))
        text = path.read_text()
        parse = {
            'python line-by-line (baseline)': lambda: parse_python_lines(path),
            'np.fromstring(sep=" ")': lambda: np.fromstring(text, sep=' '),
            'np.array(text.split(), float)': lambda: np.array(text.split(), dtype=np.float64),
            's3dis.read_points_txt': lambda: read_points_txt(path),
        }
        parse_times = {name: best_of(fn, args.repeats) for name, fn in parse.items()}
    base = parse_times['python line-by-line (baseline)']
    rows.append(f'## Parsing {args.lines} lines ({args.lines * 6} numbers)\n')
    rows.append('| method | seconds | speed-up vs baseline | M lines/s |\n|---|---|---|---|')
    for name, seconds in parse_times.items():
        rows.append(f'| {name} | {seconds:.3f} | {base / seconds:.1f}x | {args.lines / seconds / 1e6:.2f} |')

    room = rng.uniform([0, 0, 0], [10, 8, 3], size=(args.points, 3)).astype(np.float32)
    ours = partition_blocks(room, 1.0, 0.5, 100)
    baseline_members = asis_block_members(room.astype(np.float64), 1.0, 0.5, 100)
    assert len(baseline_members) == len(ours)
    assert all(np.array_equal(m, np.sort(ours.block_points(k))) for k, m in enumerate(baseline_members))
    block_times = {
        'ASIS per-block masks (baseline)': best_of(lambda: asis_block_members(room.astype(np.float64), 1.0, 0.5, 100),
                                                   args.repeats),
        'blocks.partition_blocks': best_of(lambda: partition_blocks(room, 1.0, 0.5, 100), args.repeats),
        'blocks.room_to_blocks (+ sampling, 9 channels)': best_of(
            lambda: room_to_blocks(room, None, rng=np.random.default_rng(0)), args.repeats),
    }
    base = block_times['ASIS per-block masks (baseline)']
    rows.append(f'\n## Blocking a 10 m x 8 m room of {args.points} points ({len(ours)} blocks of 1 m, stride 0.5 m)\n')
    rows.append('| method | seconds | speed-up vs baseline |\n|---|---|---|')
    for name, seconds in block_times.items():
        rows.append(f'| {name} | {seconds:.3f} | {base / seconds:.1f}x |')

    report = f'# bench_data\n\nBest of {args.repeats} runs, one process on a shared 2-core CPU.\n\n'
    report += '\n'.join(rows) + '\n'
    print(report)
    out = Path(__file__).resolve().parent / 'results' / 'bench_data.md'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)


if __name__ == '__main__':
    main()
