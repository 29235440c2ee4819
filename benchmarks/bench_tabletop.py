"""Manipulation views (`mpnet-synth --scenes tabletop`): generation time per frame against the RGB-D drives (the
baseline, measured in the same run on the same cameras), and what the views look like: camera height above the
table top, pitch, the table's share of the valid points, the objects in view.

    python benchmarks/bench_tabletop.py [--areas 5] [--sequences-per-area 2] [--frames 3] \
        [--out benchmarks/results/tabletop.md] [--picture docs/images/tabletop_views.png] \
        [--frames-picture docs/images/tabletop_frames.png]

Both sets are written by `frames.generate_frames` (scene building, view planning or path planning, ray casting,
noise, compressed writing), one after the other in one process, one thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mpnet_model.data.synthetic import frames, tabletop
from mpnet_model.data.synthetic.layout import CLASS_INDEX


def view_stats(root: Path) -> dict[str, np.ndarray]:
    """Per frame: height above the table top, pitch, roll, valid share, table share of the valid points, share and
    count of the table's objects in view."""
    rows = []
    for seq_dir in sorted(root.glob('Area_*/*_tabletop_*')):
        meta = frames.read_sequence(seq_dir)
        table = meta['scene']['rooms'][0]['table']
        pixels = meta['sensor']['width'] * meta['sensor']['height']
        for entry in meta['frames']:
            h, pitch, roll = tabletop.view_geometry(np.asarray(entry['world_from_sensor']), table['top_z'])
            with np.load(seq_dir / entry['file']) as data:
                sem, ins = data['sem'], data['ins']
            on_objects = np.isin(ins, table['objects'])
            rows.append((h, pitch, roll, len(sem) / pixels, np.mean(sem == CLASS_INDEX['table']), on_objects.mean(),
                         len(np.unique(ins[on_objects]))))
    names = ('height', 'pitch', 'roll', 'valid', 'table', 'objects', 'objects_in_view')
    return {n: np.array([r[i] for r in rows], float) for i, n in enumerate(names)}


def picture(stats: dict[str, np.ndarray], path: Path) -> None:
    from mpnet_model.viz.render import new_figure, save_figure

    fig = new_figure(10.0, 3.2, dpi=110)
    ax = fig.add_subplot(1, 3, 1)
    ax.scatter(stats['pitch'], stats['height'], s=8)
    ax.set_xlabel('pitch below the horizon [deg]')
    ax.set_ylabel('height above the table top [m]')
    ax.set_xlim(*tabletop.PITCH_RANGE)
    ax.set_ylim(*tabletop.HEIGHT_RANGE)
    ax = fig.add_subplot(1, 3, 2)
    ax.hist(stats['table'], bins=np.linspace(0, 1, 21))
    ax.set_xlabel('table share of the valid points')
    ax.set_ylabel('frames')
    ax = fig.add_subplot(1, 3, 3)
    ax.hist(stats['objects_in_view'], bins=np.arange(0, stats['objects_in_view'].max() + 2) - 0.5)
    ax.set_xlabel('objects of the table in view')
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--areas', type=int, default=5)
    parser.add_argument('--sequences-per-area', type=int, default=2)
    parser.add_argument('--frames', type=int, default=3)
    parser.add_argument('--out', default='benchmarks/results/tabletop.md')
    parser.add_argument('--picture', default='', help='PNG of the views: height vs pitch, table share, objects')
    parser.add_argument('--frames-picture', default='', help='PNG of the first Kinect sequence')
    args = parser.parse_args()
    sensors = ('kinect', 'realsense')
    areas = {a: args.sequences_per_area for a in range(1, args.areas + 1)}
    with tempfile.TemporaryDirectory() as tmp:
        timing = {}
        for name, scenes, these in (('drives (room, floor)', frames.SCENE_KINDS, {1: 1, 2: 1}),
                                    ('tabletop', ('tabletop',), areas)):
            root = Path(tmp) / name.split()[0]
            start = time.perf_counter()
            summary = frames.generate_frames(root, these, sensors, scenes, args.frames, seed=0, progress=True)
            count = sum(s['frames'] for s in summary['sequences'])
            timing[name] = ((time.perf_counter() - start) / count, count)
        stats = view_stats(Path(tmp) / 'tabletop')
        if args.frames_picture:
            from mpnet_model.data.synthetic.preview import camera_preview

            camera_preview(Path(tmp) / 'tabletop' / 'Area_1' / 'kinect_tabletop_1_1', args.frames_picture,
                           max_frames=3, dpi=80, palette_colours=256)
    base = timing['drives (room, floor)'][0]
    lines = [f'# Manipulation views (`--scenes tabletop`), {platform.node()} ({os.cpu_count()} cores), load '
             f'{os.getloadavg()[0]:.1f} at the end', '',
             f'`python benchmarks/bench_tabletop.py --areas {args.areas} --sequences-per-area '
             f'{args.sequences_per_area} --frames {args.frames}` (Kinect and RealSense)', '',
             '| set | frames | s / frame | vs drives |', '|---|---|---|---|']
    for name, (per_frame, count) in timing.items():
        lines.append(f'| {name} | {count} | {per_frame:.2f} | {per_frame / base:.2f} |')
    q = {k: np.percentile(v, [0, 50, 100]) for k, v in stats.items()}
    lines += ['', f'{len(stats["table"])} tabletop frames: min / median / max', '',
              '| measure | min | median | max |', '|---|---|---|---|']
    for key, label, fmt in (('height', 'height above the table top [m]', '.2f'), ('pitch', 'pitch [deg]', '.1f'),
                            ('roll', 'roll [deg]', '.1f'), ('valid', 'valid pixels', '.2f'),
                            ('table', 'table share of the valid points', '.2f'),
                            ('objects', 'objects share of the valid points', '.3f'),
                            ('objects_in_view', 'objects of the table in view', '.0f')):
        lines.append(f'| {label} | ' + ' | '.join(format(x, fmt) for x in q[key]) + ' |')
    lines.append(f'\nmean table share {stats["table"].mean():.3f}, mean table + objects share '
                 f'{(stats["table"] + stats["objects"]).mean():.3f}')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.picture:
        picture(stats, Path(args.picture))


if __name__ == '__main__':
    main()
