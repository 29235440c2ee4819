"""Post-processing benchmark: torch mean shift vs scikit-learn, vectorised BlockMerging vs the per-point loop, and
on real frames the batched frame path (``mean_shift_blocks``, ``block_merging``) vs the per-block references.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_postprocess.py [--quick] [--device cuda]``. Baselines are
measured in the same run; figures are printed and written to ``benchmarks/results/postprocess.md`` (CPU) or
``postprocess_<device>.md``. On the CPU both sides run on one thread (scikit-learn's MeanShift is
single-threaded with n_jobs=None), so the ratios compare algorithms; CPU (process) time is reported next to
wall time because the machine may be shared. Real frames: the shipped model's outputs on every block of the
shared Ouster frames (15 m crop) and the office scan, made and cached by ``benchmarks/frame_blocks.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MeanShift
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

from mpnet_model.infer.meanshift import mean_shift, mean_shift_blocks, mean_shift_blocks_reference
from mpnet_model.infer.merging import BlockMerger, block_merging, block_merging_reference
from mpnet_model.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.frame_blocks import FRAMES, frame_blocks  # noqa: E402

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


def _timed(repeats: int, device: torch.device, function, *args) -> tuple[float, float, object]:
    """Best (wall s, CPU process s) of ``repeats`` calls of function(*args), and the last result; CUDA work is
    synchronised."""
    best_wall, best_cpu, result = float('inf'), float('inf'), None
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def _sklearn_closer(embeddings: np.ndarray, batched: np.ndarray, reference: np.ndarray) -> bool:
    """Where the two disagree: is the batched labelling at least as close to sklearn (float64) as the reference?"""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        expected = MeanShift(bandwidth=0.6, bin_seeding=True).fit(embeddings.astype(np.float64)).labels_
    return adjusted_rand_score(expected, batched) >= adjusted_rand_score(expected, reference)


def bench_real_frames(frames, repeats: int, device: torch.device, backend: str) -> list[dict]:
    """Per frame: mean shift and merging, reference (per block, numpy on the CPU: today's frame path) vs batched
    (on ``device``), and their agreement."""
    rows = []
    for name in frames:
        frame = frame_blocks(name, backend=backend, device='cuda' if device.type == 'cuda' else 'cpu')
        embeddings = frame.embeddings
        distinct = float(np.mean([np.unique(row).size for row in frame.indices]))
        cpu = torch.device('cpu')
        ref_wall, ref_cpu, reference = _timed(1, cpu, mean_shift_blocks_reference, embeddings)
        on_device = torch.from_numpy(embeddings).to(device)
        mean_shift_blocks(on_device[:8])  # warm-up (CUDA context, kernels)
        new_wall, new_cpu, labels = _timed(repeats, device, mean_shift_blocks, on_device)
        labels = labels.cpu().numpy()
        aris = np.array([adjusted_rand_score(a, b) for a, b in zip(reference, labels)])
        low = np.flatnonzero(aris < 0.99)
        closer = sum(_sklearn_closer(embeddings[k], labels[k], reference[k]) for k in low)
        merge_args = (frame.xyz, frame.indices, labels, frame.semantic)
        mref_wall, mref_cpu, merged_reference = _timed(1, cpu, block_merging_reference, *merge_args)
        merge_tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in merge_args]
        block_merging(*merge_tensors)  # warm-up
        mnew_wall, mnew_cpu, merged = _timed(repeats, device, block_merging, *merge_tensors)
        rows.append(dict(frame=name, blocks=len(embeddings), distinct=distinct, points=frame.xyz.shape[0],
                         ms_ref=(ref_wall, ref_cpu), ms_new=(new_wall, new_cpu), ari_min=aris.min(),
                         ari_mean=aris.mean(), identical=float(np.mean([(a == b).all() for a, b in
                                                                        zip(reference, labels)])),
                         low=int(low.size), low_closer=int(closer), merge_ref=(mref_wall, mref_cpu),
                         merge_new=(mnew_wall, mnew_cpu),
                         merge_equal=bool(np.array_equal(merged.cpu().numpy(), merged_reference)),
                         instances=int(merged_reference.max()) + 1))
    return rows


def real_frame_lines(rows: list[dict], device: torch.device) -> list[str]:
    on = 'CPU, 1 thread' if device.type == 'cpu' else f'{torch.cuda.get_device_name(device)}'
    lines = [f'## Real frames: batched frame path ({on}) vs per-block references (numpy, CPU)', '',
             'Shipped model outputs on every block (1 m, stride 0.5 m, 1024 points) of the first three scans of the '
             'shared Ouster OS-1-128 bag cropped to 15 m and of the PCL office scan. Reference = today\'s frame '
             'path (`mean_shift_blocks_reference`, `block_merging_reference`); times are best wall / CPU seconds, '
             'ratio = reference / batched' + (' (CPU time; wall time in brackets)' if device.type == 'cpu' else
                                               ' (wall time)') + '.', '',
             '| frame | blocks | distinct points / block | mean shift ref s | batched s | speed-up | '
             'ARI min / mean | identical blocks | merging ref s | batched s | speed-up | identical ids |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    key = 1 if device.type == 'cpu' else 0
    for row in rows:
        ms_ratio = row['ms_ref'][key] / row['ms_new'][key]
        merge_ratio = row['merge_ref'][key] / row['merge_new'][key]
        ms_wall = row['ms_ref'][0] / row['ms_new'][0]
        merge_wall = row['merge_ref'][0] / row['merge_new'][0]
        extra_ms = f' ({ms_wall:.1f}x)' if device.type == 'cpu' else ''
        extra_merge = f' ({merge_wall:.1f}x)' if device.type == 'cpu' else ''
        lines.append(f"| {row['frame']} | {row['blocks']} | {row['distinct']:.0f} | {row['ms_ref'][0]:.2f} / "
                     f"{row['ms_ref'][1]:.2f} | {row['ms_new'][0]:.3f} / {row['ms_new'][1]:.3f} | "
                     f"**{ms_ratio:.1f}x**{extra_ms} | {row['ari_min']:.4f} / {row['ari_mean']:.5f} | "
                     f"{row['identical']:.4f} | {row['merge_ref'][0]:.2f} / {row['merge_ref'][1]:.2f} | "
                     f"{row['merge_new'][0]:.3f} / {row['merge_new'][1]:.3f} | **{merge_ratio:.1f}x**{extra_merge} | "
                     f"{row['merge_equal']} ({row['instances']} instances) |")
    low = sum(r['low'] for r in rows)
    closer = sum(r['low_closer'] for r in rows)
    lines += ['', f'Blocks with ARI < 0.99 against the reference: {low} of {sum(r["blocks"] for r in rows)}; in '
              f'{closer} of them the batched labels are at least as close to scikit-learn in float64 as the '
              'reference\'s (the difference is float32 rounding at a window boundary, not the batching).', '']
    lidar = [r for r in rows if r['frame'].startswith('ouster')]
    if lidar and device.type == 'cpu':
        merge = np.mean([r['merge_new'][1] for r in lidar])
        mean_shift = np.mean([r['ms_new'][1] for r in lidar])
        lines += [f'Per Ouster frame (CPU time): batched mean shift {mean_shift:.2f} s, merging {merge:.2f} s = '
                  f'{100 * merge / 3.5:.0f} % of the 3.5 s CPU frame target of issue 12 (target <= 10 %). A 15 m '
                  'crop gives ~1940 blocks (the "903" of runtime.md is the blocking stage in ms); most are sparse '
                  'columns resampled to 1024 points, ~125 distinct points each, which both batched stages count '
                  'once with their multiplicity. GPU figures: not measured on this machine; '
                  '`benchmarks/gpu_postprocess.sh` is the prepared check.', '']
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer mean-shift cases (skips the slow sklearn ones)')
    parser.add_argument('--points', type=int, default=4096, help='points per mean-shift problem')
    parser.add_argument('--blocks', type=int, default=50, help='blocks in the merging room')
    parser.add_argument('--frames', default=','.join(FRAMES), help='real frames (comma separated; empty: none)')
    parser.add_argument('--device', default='cpu', help='device of the batched frame path (cpu or cuda)')
    parser.add_argument('--backend', default='onnxruntime', help='backend making the frames\' model outputs')
    parser.add_argument('--repeats', type=int, default=3, help='repeats of the batched path (best is kept)')
    parser.add_argument('--real-only', action='store_true', help='only the real-frame section')
    parser.add_argument('--out', type=Path, help='results markdown (default: benchmarks/results/postprocess.md, '
                        'postprocess_cuda.md on CUDA)')
    parser.add_argument('--machine-note', default='The machine was shared with other jobs',
                        help='what the results say about the machine (the GPU session names its lent machine)')
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    frames = [name for name in args.frames.split(',') if name]
    load_before = os.getloadavg()[0]
    real_rows = bench_real_frames(frames, args.repeats, device, args.backend)
    lines = real_frame_lines(real_rows, device)
    if not args.real_only:
        lines += synthetic_lines(args)
    load = f'{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end'
    lines = ['# Post-processing benchmark', '',
             f'{platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, '
             f'1 thread, {time.strftime("%Y-%m-%d %H:%M")}. Baselines measured in the same run. {args.machine_note} '
             f'(1-minute load average {load}): wall times are noisy, CPU times less so.',
             ''] + lines
    text = '\n'.join(lines)
    print(text)
    results = args.out or (RESULTS if device.type == 'cpu' else RESULTS.with_name(f'postprocess_{device.type}.md'))
    atomic_write_text(results, text)
    print(f'written {results}')


def synthetic_lines(args) -> list[str]:
    cases = MEAN_SHIFT_CASES[:3] if args.quick else MEAN_SHIFT_CASES
    ms_rows = bench_mean_shift(cases, args.points, repeats=3)
    merge = bench_merging(args.blocks, 4096, gap=0.005, min_points=50)
    lines = [f'## Mean shift, {args.points} x 5, bandwidth 0.6 vs sklearn MeanShift(bin_seeding=True)', '',
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
    return lines


if __name__ == '__main__':
    main()
