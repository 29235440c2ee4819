"""Post-processing benchmark: torch mean shift vs scikit-learn, vectorised BlockMerging vs the per-point loop.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_postprocess.py [--quick]``. Baselines are measured in the
same run; figures are printed and written to ``benchmarks/results/postprocess.md``. Both sides run on one CPU
thread (scikit-learn's MeanShift is single-threaded with n_jobs=None), so the ratio compares algorithms.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MeanShift
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from mpnet_model.infer.meanshift import mean_shift
from mpnet_model.infer.merging import BlockMerger
from mpnet_model.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results' / 'postprocess.md'

# (clusters, std, centre box half-width): separated, many, very many, overlapping blobs in 5-D.
MEAN_SHIFT_CASES = [(5, 0.1, 3.0), (15, 0.15, 3.0), (30, 0.2, 3.0), (20, 0.3, 1.5), (10, 0.4, 3.0)]


def _load_loop_reference():
    """The per-point loop reference lives with its tests (tests/test_merging.py), imported from there."""
    spec = importlib.util.spec_from_file_location('test_merging', ROOT / 'tests' / 'test_merging.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_block_merging


def _best_time(function, repeats: int, *args) -> tuple[float, object]:
    best, result = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_mean_shift(cases, num_points: int, repeats: int) -> list[dict]:
    rows = []
    for num_clusters, std, box in tqdm(cases, desc='mean shift'):
        points, _ = make_blobs(num_points, 5, centers=num_clusters, cluster_std=std, center_box=(-box, box),
                               random_state=num_clusters)
        points = points.astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            sk_time, fitted = _best_time(MeanShift(bandwidth=0.6, bin_seeding=True).fit, 1, points)
        ours_time, labels = _best_time(mean_shift, repeats, points, 0.6)
        rows.append(dict(case=f'{num_clusters} clusters, std {std}, box ±{box}', sklearn_s=sk_time,
                         ours_s=ours_time, ratio=sk_time / ours_time,
                         ari=adjusted_rand_score(fitted.labels_, labels),
                         clusters=f'{len(fitted.cluster_centers_)} / {labels.max() + 1}'))
    return rows


def make_room(num_blocks: int, points_per_block: int, rng: np.random.Generator):
    """A room cloud with box instances cut into 1 m blocks at stride 0.5 m that sample the same room points
    (as room_to_blocks does), so overlapping blocks share voxels. Local ids: per-block permutation + 3 % noise."""
    side = int(np.ceil(np.sqrt(num_blocks))) * 0.5 + 0.5
    room_xyz = rng.uniform([0, 0, 0], [side, side, 3.0], size=(int(side * side * 20000), 3))
    num_boxes = 60
    lo = rng.uniform([0, 0, 0], [side - 0.3, side - 0.3, 2.5], size=(num_boxes, 3))
    hi = lo + rng.uniform(0.2, 0.8, size=(num_boxes, 3))
    inside = np.zeros(room_xyz.shape[0], dtype=np.int64) - 1
    for b in range(num_boxes):  # setup only, not timed
        inside[np.all((room_xyz >= lo[b]) & (room_xyz <= hi[b]), 1)] = b
    box_class = rng.integers(0, 13, num_boxes)
    per_row = int(np.ceil(np.sqrt(num_blocks)))
    blocks = []
    for k in range(num_blocks):
        x0, y0 = 0.5 * (k % per_row), 0.5 * (k // per_row)
        in_block = np.flatnonzero((room_xyz[:, 0] >= x0) & (room_xyz[:, 0] < x0 + 1)
                                  & (room_xyz[:, 1] >= y0) & (room_xyz[:, 1] < y0 + 1))
        chosen = rng.choice(in_block, points_per_block, replace=in_block.size < points_per_block)
        box = inside[chosen]
        local = np.where(box >= 0, rng.permutation(num_boxes)[box], rng.integers(0, 5) + num_boxes)
        noise = rng.random(points_per_block) < 0.03
        local[noise] = rng.integers(-1, num_boxes, int(noise.sum()))
        semantic = np.where(box >= 0, box_class[box], 0)
        blocks.append((room_xyz[chosen], local, semantic))
    return room_xyz, blocks


def bench_merging(num_blocks: int, points_per_block: int, gap: float, min_points: int) -> dict:
    room_xyz, blocks = make_room(num_blocks, points_per_block, np.random.default_rng(0))
    room_min, room_max = room_xyz.min(0), room_xyz.max(0)
    reference = _load_loop_reference()

    def vectorised():
        merger = BlockMerger(room_min, room_max, gap)
        for block in blocks:
            merger.add_block(*block)
        return merger.finalize(min_points).instances

    loop_time, expected = _best_time(lambda: reference(blocks, room_min, gap, min_points=min_points), 1)
    ours_time, result = _best_time(vectorised, 3)
    return dict(blocks=num_blocks, points=num_blocks * points_per_block, gap=gap, loop_s=loop_time,
                ours_s=ours_time, ratio=loop_time / ours_time, equal=bool(np.array_equal(result, expected)),
                instances=int(result.max()) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer mean-shift cases (skips the slow sklearn ones)')
    parser.add_argument('--points', type=int, default=4096, help='points per mean-shift problem')
    parser.add_argument('--blocks', type=int, default=50, help='blocks in the merging room')
    args = parser.parse_args()
    torch.set_num_threads(1)

    cases = MEAN_SHIFT_CASES[:3] if args.quick else MEAN_SHIFT_CASES
    ms_rows = bench_mean_shift(cases, args.points, repeats=3)
    merge = bench_merging(args.blocks, 4096, gap=0.005, min_points=50)

    lines = ['# Post-processing benchmark', '',
             f'{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, '
             f'{time.strftime("%Y-%m-%d %H:%M")}. Baselines measured in the same run (best of 1 for baselines, '
             'best of 3 for ours; the machine is shared, so absolute times are noisy).', '',
             f'## Mean shift, {args.points} x 5, bandwidth 0.6 vs sklearn MeanShift(bin_seeding=True)', '',
             '| case | sklearn s | ours s | speed-up | ARI | clusters sklearn / ours |', '|---|---|---|---|---|---|']
    for row in ms_rows:
        lines.append(f"| {row['case']} | {row['sklearn_s']:.3f} | {row['ours_s']:.4f} | {row['ratio']:.1f}x | "
                     f"{row['ari']:.4f} | {row['clusters']} |")
    total_sk = sum(r['sklearn_s'] for r in ms_rows)
    total_ours = sum(r['ours_s'] for r in ms_rows)
    lines += ['', f'All cases: {total_sk:.2f} s vs {total_ours:.3f} s = **{total_sk / total_ours:.1f}x**, '
              f'min ARI {min(r["ari"] for r in ms_rows):.4f}.', '',
              f"## BlockMerging, {merge['blocks']} blocks x 4096 points, gap {merge['gap']}", '',
              '| per-point loop s | vectorised s | speed-up | identical ids | instances |', '|---|---|---|---|---|',
              f"| {merge['loop_s']:.3f} | {merge['ours_s']:.4f} | **{merge['ratio']:.1f}x** | {merge['equal']} | "
              f"{merge['instances']} |", '']
    text = '\n'.join(lines)
    print(text)
    atomic_write_text(RESULTS, text)
    print(f'written {RESULTS}')


if __name__ == '__main__':
    main()
