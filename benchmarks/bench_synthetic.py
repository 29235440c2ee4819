"""Benchmark of the synthetic room generator at default density (5 areas x 4 rooms by default).

Prints and writes to benchmarks/results/synthetic.md: seconds per room (generation vs writing), points per
room, class fractions next to S3DIS's, and the writer's speed-up over np.savetxt measured in the same run.

    python benchmarks/bench_synthetic.py [--areas 5] [--rooms-per-area 4] [--out /tmp/synth_bench]
"""
from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.synthetic import DEFAULT_DENSITY, generate_room, room_rng, write_room
from mpnet_model.data.synthetic.io import _format_points

# Approximate point fractions of the real S3DIS (all 6 areas), for comparison only.
S3DIS_FRACTION = {'ceiling': 0.194, 'floor': 0.165, 'wall': 0.274, 'beam': 0.021, 'column': 0.025,
                  'window': 0.027, 'door': 0.055, 'table': 0.043, 'chair': 0.040, 'sofa': 0.005,
                  'bookcase': 0.085, 'board': 0.012, 'clutter': 0.056}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--areas', type=int, default=5)
    parser.add_argument('--rooms-per-area', type=int, default=4)
    parser.add_argument('--density', type=float, default=DEFAULT_DENSITY)
    parser.add_argument('--out', default='/tmp/synth_bench')
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    gen_times, write_times, points = [], [], []
    counts = np.zeros(len(S3DIS_CLASSES), np.int64)
    sample = None
    for area in range(1, args.areas + 1):
        for index in range(args.rooms_per_area):
            t0 = time.perf_counter()
            xyz, rgb, sem, ins, meta = generate_room(room_rng(0, area, index), density=args.density)
            t1 = time.perf_counter()
            write_room(out, area, f"{meta['room_type']}_{index + 1}", xyz, rgb, sem, ins, meta)
            t2 = time.perf_counter()
            gen_times.append(t1 - t0)
            write_times.append(t2 - t1)
            points.append(len(xyz))
            counts += np.bincount(sem, minlength=len(S3DIS_CLASSES))
            sample = sample or (xyz, rgb)
    # Baseline for the writer: np.savetxt of the same room, same format.
    xyz, rgb = sample
    t0 = time.perf_counter()
    _format_points(xyz, rgb)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.savetxt(io.StringIO(), np.concatenate([xyz, rgb], 1), fmt='%.3f %.3f %.3f %d %d %d')
    t_savetxt = time.perf_counter() - t0

    rooms = len(points)
    fraction = counts / counts.sum()
    lines = [
        '# Synthetic room generator benchmark',
        '',
        f'{rooms} rooms ({args.areas} areas x {args.rooms_per_area}), density {args.density:g} points/m^2, '
        f'machine: 2 shared cores.',
        '',
        '| measure | value |',
        '| --- | --- |',
        f'| total wall time | {sum(gen_times) + sum(write_times):.1f} s |',
        f'| generate per room (mean / max) | {np.mean(gen_times):.2f} s / {np.max(gen_times):.2f} s |',
        f'| write per room (mean) | {np.mean(write_times):.2f} s |',
        f'| points per room (mean / min / max) | {int(np.mean(points))} / {min(points)} / {max(points)} |',
        f'| text formatting of one room: ours vs np.savetxt | {t_ours:.2f} s vs {t_savetxt:.2f} s '
        f'(x{t_savetxt / max(t_ours, 1e-9):.1f}) |',
        '',
        '| class | synthetic | S3DIS (approx.) |',
        '| --- | --- | --- |',
    ]
    lines += [f'| {c} | {100 * f:.1f}% | {100 * S3DIS_FRACTION[c]:.1f}% |'
              for c, f in zip(S3DIS_CLASSES, fraction, strict=True)]
    text = '\n'.join(lines) + '\n'
    print(text)
    results = Path(__file__).resolve().parent / 'results'
    results.mkdir(exist_ok=True)
    (results / 'synthetic.md').write_text(text)


if __name__ == '__main__':
    main()
