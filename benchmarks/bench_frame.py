"""Frame benchmark: today's frame path (the reference, `mpnet_model.infer.reference`) against the new default, side by
side in one run, on the 15 m crop of each shared Ouster OS-1-128 scan, shipped model, ONNX Runtime on the CPU.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_frame.py [--repeats 1] [--threads 2]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_frame.py --layouts        # latency + real-frame agreement per layout
    PYTHONPATH=. .venv/bin/python benchmarks/bench_frame.py --batch-sweep    # ONNX Runtime ms/block vs batch size

Default mode: per repeat and scan, the reference then the new default run on the same cloud (interleaved, so a
change in the machine's load hits both); prints the stage table (median ms per stage over all frames) and the
p50 ratio, and writes benchmarks/results/frame.md. The reference's answers (labels per point) are cached in
cache/frame_reference_<scan>.npz and reused by --layouts, which times every layout of the new path and reports
its label agreement with today's answers next to the noise floor (today's path with another sampling seed).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnet_model.io.atomic import atomic_write, atomic_write_text  # noqa: E402

DATA = Path(os.environ.get('MPNET_SHARED_DATA', '/work/shared/data'))
CACHE = ROOT / 'cache'
RESULTS = ROOT / 'benchmarks' / 'results'
STAGES = ('blocks', 'inference', 'meanshift', 'merging', 'projection', 'total')
RANGE_M = 15.0


def ouster_crops(radius: float = RANGE_M) -> list[tuple[np.ndarray, np.ndarray]]:
    """(xyz, intensity) of every scan of the shared Ouster bag, cropped to `radius` (15 m) around the sensor (the
    bag itself, or the frames .npz a GPU session carries: benchmarks/sample_frames.py)."""
    from benchmarks.sample_frames import ouster_scans
    from mpnet_ros.accumulate import range_mask

    crops = []
    for xyz, intensity in ouster_scans():
        keep = range_mask(xyz, 0.0, radius)
        crops.append((xyz[keep], intensity[keep]))
    return crops


def machine_note(threads: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    return (f'{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end (the machine is '
            f'shared with other jobs: absolute times are noisy, the ratios come from the same run); '
            f'{threads} threads; torch {torch.__version__}')


def make_segmenter(threads: int, **options):
    from mpnet_model.infer.scene import SceneSegmenter

    return SceneSegmenter.from_config('onnxruntime', '', backend_options={'intra_op_threads': threads}, **options)


def save_reference(scan: int, seed: int, result) -> None:
    CACHE.mkdir(exist_ok=True)
    with atomic_write(CACHE / f'frame_reference_{scan}_seed{seed}.npz', suffix='.tmp.npz') as stream:
        np.savez(stream, labels=result.labels, instances=result.instances)


def reference_answers(scan: int, segmenter, xyz, intensity, seed: int = 0) -> np.ndarray:
    """Per-point labels and instances of today's path for a scan (cached, they take minutes)."""
    from mpnet_model.infer.reference import segment_reference

    path = CACHE / f'frame_reference_{scan}_seed{seed}.npz'
    if path.is_file():
        data = np.load(path)
        if data['labels'].shape[0] == xyz.shape[0]:
            return data['labels'], data['instances']
    result = segment_reference(segmenter.replace(seed=seed), xyz, None, intensity)
    save_reference(scan, seed, result)
    return result.labels, result.instances


def stage_table(rows: dict[str, list[dict[str, float]]]) -> list[str]:
    lines = ['| path | ' + ' | '.join(STAGES) + ' | blocks/frame |', '|---' * (len(STAGES) + 2) + '|']
    for name, timings in rows.items():
        cells = [f'{np.median([t.get(stage, 0.0) for t in timings]):.0f}' for stage in STAGES]
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {np.median([t["num_blocks"] for t in timings]):.0f} |')
    return lines


def compare(args) -> str:
    from sklearn.metrics import adjusted_rand_score

    from mpnet_model.infer.reference import segment_reference

    crops = ouster_crops()
    new = make_segmenter(args.threads)
    new.segment(*crops[0][:1], None, crops[0][1])                         # warm-up (sessions, allocations)
    others = [(f'new, layout {layout}', new.replace(layout=layout)) for layout in args.also]
    rows = {'reference (today)': [], f'new default ({new.layout}{", sparse points" if new.sparse_points else ""})': [],
            **{name: [] for name, _ in others}}
    agreement = []
    for repeat in range(args.repeats):
        for scan, (xyz, intensity) in enumerate(crops):
            old = segment_reference(new, xyz, None, intensity)
            save_reference(scan, 0, old)
            result = new.segment(xyz, None, intensity)
            extra = [segmenter.segment(xyz, None, intensity) for _, segmenter in others]
            for name, res in zip(rows, (old, result, *extra)):
                rows[name].append({**res.timings, 'num_blocks': res.num_blocks})
            agreement.append(((result.labels == old.labels).mean(),
                              adjusted_rand_score(old.instances, result.instances)))
            print(f'repeat {repeat} scan {scan} ({len(xyz)} points): reference {old.timings["total"] / 1e3:.1f} s, '
                  f'new {result.timings["total"] / 1e3:.2f} s', flush=True)
    p50 = [np.median([t['total'] for t in timings]) for timings in rows.values()]
    lines = ['# Frame benchmark: today\'s frame path vs the new default (issue 12)', '',
             f'Machine: {machine_note(args.threads)}.',
             f'Frames: the {len(crops)} scans of the shared Ouster OS-1-128 bag, each cropped to {RANGE_M:.0f} m '
             f'around the sensor ({", ".join(str(len(c[0])) for c in crops)} points), {args.repeats} pass(es); '
             'shipped model (mpnet_synthetic.onnx), ONNX Runtime on the CPU. The reference and the new path run '
             'interleaved on the same clouds. Median ms per stage:', '', *stage_table(rows), '',
             f'**p50 per frame: reference {p50[0] / 1e3:.2f} s, new default {p50[1] / 1e3:.2f} s: '
             f'{p50[0] / p50[1]:.1f}x faster.**',
             *[f'p50 {name}: {value / 1e3:.2f} s, {p50[0] / value:.1f}x faster than the reference.'
               for name, value in zip(list(rows)[2:], p50[2:])], '',
             f'Answers of the new default against today\'s on these frames: label agreement '
             f'{np.mean([a[0] for a in agreement]) * 100:.1f} %, instance ARI {np.mean([a[1] for a in agreement]):.3f} '
             '(the noise floor, today\'s path with sampling seed 1 vs 0, is in docs/frame_layouts.md).']
    return '\n'.join(lines) + '\n'


def layouts(args) -> str:
    from sklearn.metrics import adjusted_rand_score

    from mpnet_model.infer.blocking import LAYOUTS

    crops = ouster_crops()
    base = make_segmenter(args.threads)
    base.segment(*crops[0][:1], None, crops[0][1])
    floor = []
    references = []
    for scan, (xyz, intensity) in enumerate(crops):
        labels, instances = reference_answers(scan, base, xyz, intensity, seed=0)
        other_labels, other_instances = reference_answers(scan, base, xyz, intensity, seed=1)
        references.append((labels, instances))
        floor.append(((labels == other_labels).mean(), adjusted_rand_score(instances, other_instances)))
    variants = [('grid, legacy draw (= today)', base.replace(layout='grid', sampler='legacy')),
                ('grid', base.replace(layout='grid', sparse_points=False)),
                ('adaptive', base.replace(layout='adaptive', sparse_points=False))]
    variants += [(f'{layout} + sparse points', base.replace(layout=layout, sparse_points=True)) for layout in LAYOUTS]
    variants += [(f'{layout} + border join {distance:g} m', base.replace(layout=layout, border_join=distance))
                 for distance in args.join for layout in ('adaptive', 'grid')]
    variants = [(name, segmenter) for name, segmenter in variants if re.search(args.only, name)]
    rows, quality = {}, {}
    for name, segmenter in variants:
        rows[name], quality[name] = [], []
        for _ in range(args.repeats):
            for scan, (xyz, intensity) in enumerate(crops):
                result = segmenter.segment(xyz, None, intensity)
                rows[name].append({**result.timings, 'num_blocks': result.num_blocks})
                labels, instances = references[scan]
                quality[name].append(((result.labels == labels).mean(),
                                      adjusted_rand_score(instances, result.instances)))
                print(f'{name} scan {scan}: {result.timings["total"] / 1e3:.2f} s, '
                      f'{result.num_blocks} blocks', flush=True)
    lines = ['# Block layouts on the real frames (latency, agreement with today\'s answers)', '',
             f'Machine: {machine_note(args.threads)}.', 'Frames: the 15 m crops of the 3 shared Ouster scans, '
             'shipped model, ONNX Runtime on the CPU. Agreement: with today\'s path (reference, seed 0) per point; '
             f'noise floor = today\'s path with seed 1: labels {np.mean([f[0] for f in floor]) * 100:.1f} %, '
             f'instance ARI {np.mean([f[1] for f in floor]):.3f}.', '',
             *stage_table(rows), '', '| layout | label agreement with today | instance ARI with today |',
             '|---|---|---|']
    for name, values in quality.items():
        lines.append(f'| {name} | {np.mean([v[0] for v in values]) * 100:.1f} % | '
                     f'{np.mean([v[1] for v in values]):.3f} |')
    return '\n'.join(lines) + '\n'


def accuracy(args) -> str:
    """Layouts on the synthetic hold-out with ground truth, at full density (= mpnet-eval) or thinned to lidar-like
    density (every block sparse: the density-adaptive parts at work)."""
    from dataclasses import replace

    from mpnet_model.eval.evaluate import class_min_points, evaluate_rooms
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.model.checkpoint import read_checkpoint
    from mpnet_model.train.config import load_config

    checkpoint = ROOT / 'mpnet_model' / 'assets' / 'mpnet_synthetic.pt'
    split = load_config(str(ROOT / 'config' / 'train_synthetic.yaml'), [f'data.root={args.synthetic}']).data.split()
    sizes = read_checkpoint(checkpoint)['extra'].get('class_mean_instance_points')
    minimum = class_min_points(sizes)
    rng = np.random.default_rng(0)
    rooms = []
    for room_dir in split.test:
        room = split.loader(room_dir)
        if args.keep < 1.0:
            keep = np.sort(rng.choice(len(room.xyz), int(len(room.xyz) * args.keep), replace=False))
            room = replace(room, xyz=room.xyz[keep], rgb=room.rgb[keep], sem=room.sem[keep], ins=room.ins[keep])
        rooms.append(room)
    base = SceneSegmenter.from_config('torch', checkpoint, class_min_points=None if minimum is None
                                      else minimum * args.keep)
    variants = [('today (grid, legacy draw)', dict(layout='grid', sampler='legacy')),
                ('grid', dict(layout='grid', sparse_points=False)), ('grid + sparse points', dict(layout='grid')),
                ('adaptive, full points', dict(layout='adaptive', sparse_points=False)),
                ('adaptive + sparse points', dict(layout='adaptive')), ('cover', dict(layout='cover')),
                ('staggered', dict(layout='staggered')), ('tile', dict(layout='tile'))]
    variants += [(f'{layout} + border join {distance:g} m', dict(layout=layout, border_join=distance))
                 for distance in args.join for layout in ('adaptive', 'grid')]
    variants = [(name, options) for name, options in variants if re.search(args.only, name)]
    lines = ['# Block layouts on the synthetic hold-out (ground truth)', '',
             f'Machine: {machine_note(args.threads)}.', f'Area 5 of `mpnet-synth --areas 5 --rooms-per-area 4 '
             f'--seed 0` ({len(rooms)} rooms), {"every point" if args.keep >= 1 else f"{args.keep:.0%} of the points"}'
             f' ({np.mean([len(r.xyz) for r in rooms]):.0f} per room), shipped model, torch backend, ASIS size filter '
             f'scaled by the density; sampling seed 0.', '',
             '| variant | mIoU | mPrec | mRec | oAcc | mCov | blocks/room | s/room |', '|---' * 8 + '|']
    for name, options in variants:
        segmenter = base.replace(**options)
        blocks: list[int] = []
        evaluation = evaluate_rooms(segmenter, rooms, progress=False,
                                    on_room=lambda room, result, counts=blocks: counts.append(result.num_blocks))
        m = evaluation.summary()
        lines.append(f'| {name} | {m["mIoU"]:.4f} | {m["mPrec"]:.4f} | {m["mRec"]:.4f} | {m["oAcc"]:.4f} | '
                     f'{m["mCov"]:.4f} | {np.mean(blocks):.0f} | {evaluation.seconds_per_room:.1f} |')
        print(lines[-1], flush=True)
    return '\n'.join(lines) + '\n'


def fps_costs(args) -> str:
    """FPS per block: numpy with and without the early exit, torch eager (the model's loop) and the batched torch
    FPS of `NestedFps` on the CPU, on the real blocks of the first scan's 15 m crop (sparse and dense ones)."""
    from mpnet_model.infer.blocking import frame_blocks
    from mpnet_model.infer.fps import NestedFps, nested_sample_indices

    segmenter = make_segmenter(args.threads)
    xyz, intensity = ouster_crops()[0]
    blocks = frame_blocks(torch.from_numpy(xyz), None, 'grid', num_points=segmenter.num_points)
    counts = blocks.partition.counts.numpy()
    rng = np.random.default_rng(0)
    sets = {'sparse blocks (< 64 points, resampled to 1024)': rng.choice(np.flatnonzero(counts < 64), 64, False),
            'dense blocks (>= 1024 points)': rng.choice(np.flatnonzero(counts >= 1024), 16, False)}
    npoints = segmenter.backend.metadata.sa_npoints
    lines = ['# Nested FPS per block (shipped model: 1024 points, levels 256/64/16/4), CPU', '',
             f'Machine: {machine_note(args.threads)}. Best of {args.rounds} runs per case.', '',
             '| blocks | numpy, no early exit (before) | numpy, early exit (CPU path) | torch (`NestedFps`, CPU) |',
             '|---|---|---|---|']
    for name, chosen in sets.items():
        points = blocks.points[torch.from_numpy(np.sort(chosen))][..., :3].contiguous()
        array = points.numpy()
        cases = [partial(nested_sample_indices, array, npoints, early_exit=False),
                 partial(nested_sample_indices, array, npoints), partial(NestedFps(npoints), points)]
        reference = [i.numpy() for i in NestedFps(npoints)(points)]
        assert all(np.array_equal(a, b) for a, b in zip(nested_sample_indices(array, npoints), reference))
        cells = []
        for case in cases:
            best = min(_timed(case) for _ in range(args.rounds))
            cells.append(f'{best / len(chosen) * 1e3:.2f} ms')
        lines.append(f'| {name} ({len(chosen)}) | ' + ' | '.join(cells) + ' |')
    lines += ['', 'All give the same indices (checked). On the CPU `NestedFps` is the model\'s own loop in torch '
              'eager; on CUDA it replays a captured CUDA graph (not measured here).']
    return '\n'.join(lines) + '\n'


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def batch_sweep(args) -> str:
    from mpnet_model.infer.blocking import frame_blocks

    segmenter = make_segmenter(args.threads)
    xyz, intensity = ouster_crops()[0]
    colours = torch.from_numpy(segmenter.colours(len(xyz), None, intensity))
    blocks = frame_blocks(torch.from_numpy(xyz), colours, 'grid', num_points=segmenter.num_points).points.numpy()
    blocks = blocks[np.random.default_rng(0).choice(len(blocks), 128, replace=False)]
    backend = segmenter.backend
    sizes = (1, 4, 8, 16, 32, 64, 128)
    times = {size: [] for size in sizes}
    for size in sizes:
        backend.run(blocks[:size])
    for _ in range(args.rounds):                                        # round robin: load changes hit every size
        for size in sizes:
            start = time.perf_counter()
            for first in range(0, 128, size):
                backend.run(blocks[first:first + size])                 # FPS (numpy) + graph, as run_frame does
            times[size].append((time.perf_counter() - start) / 128 * 1e3)
    best = min(sizes, key=lambda s: np.median(times[s]))
    lines = ['# ONNX Runtime: ms per block against the batch size (shipped model, real Ouster blocks, FPS included)',
             '',
             f'Machine: {machine_note(args.threads)}. 128 blocks of the first scan\'s 15 m crop, {args.rounds} '
             'rounds, sizes interleaved (round robin).', '', '| batch | median ms/block | min ms/block |',
             '|---|---|---|']
    lines += [f'| {s} | {np.median(times[s]):.2f} | {min(times[s]):.2f} |' for s in sizes]
    lines += ['', f'Best median: batch {best}.']
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=1, help='passes over the 3 scans')
    parser.add_argument('--threads', type=int, default=1,
                        help='ONNX Runtime and torch intra-op threads (1: the shared machine stalls with more)')
    parser.add_argument('--rounds', type=int, default=5, help='--batch-sweep rounds')
    parser.add_argument('--also', nargs='*', default=[], help='default mode: other layouts timed in the same run')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--layouts', action='store_true', help='latency and real-frame agreement of every layout')
    mode.add_argument('--batch-sweep', action='store_true', help='ONNX Runtime ms/block against the batch size')
    mode.add_argument('--accuracy', action='store_true', help='layouts on the synthetic hold-out (ground truth)')
    mode.add_argument('--fps', action='store_true', help='FPS per block: numpy with/without early exit, torch')
    parser.add_argument('--synthetic', default=str(ROOT / 'data' / 'synthetic'),
                        help='rooms written by mpnet-synth --areas 5 --rooms-per-area 4 --seed 0')
    parser.add_argument('--join', type=float, nargs='*', default=[],
                        help='--accuracy/--layouts: also adaptive and grid with these border_join distances [m]')
    parser.add_argument('--only', default='', help='--accuracy/--layouts: only the variants whose name matches')
    parser.add_argument('--keep', type=float, default=1.0, help='--accuracy: fraction of each room\'s points kept')
    args = parser.parse_args(argv)
    if not (DATA / 'ouster_os1_128').is_dir():
        print(f'bench_frame: shared data not found at {DATA}')
        return 1
    torch.set_num_threads(args.threads)
    if args.layouts:
        report, name = layouts(args), 'frame_layouts.md'
    elif args.accuracy:
        report, name = accuracy(args), f'frame_accuracy_{"full" if args.keep >= 1 else f"keep{args.keep:g}"}.md'
    elif args.fps:
        report, name = fps_costs(args), 'frame_fps.md'
    elif args.batch_sweep:
        report, name = batch_sweep(args), 'frame_batch.md'
    else:
        report, name = compare(args), 'frame.md'
    if args.join or args.only:  # a selection of variants: its own results file, the full tables stay
        name = name.replace('.md', '_join.md')
    print(report)
    atomic_write_text(RESULTS / name, report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
