"""Writing synthetic rooms in the S3DIS raw on-disk layout (what `mpnet_model.data.s3dis.load_room` reads)::

    <root>/Area_<a>/<room>/<room>.txt                  all points, "x y z r g b"
    <root>/Area_<a>/<room>/Annotations/<class>_<k>.txt  one instance, "%.3f %.3f %.3f %d %d %d"
    <root>/Area_<a>/<room>/synthetic_meta.json          sidecar: room type, bounds, instances, rare cases

The room file is the concatenation of the annotation files in instance-id order, as in S3DIS.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.synthetic.layout import CLASS_INDEX
from mpnet_model.data.synthetic.sampling import DEFAULT_DENSITY, DEFAULT_NOISE, DEFAULT_RARE_PROB, generate_room
from mpnet_model.io.atomic import atomic_write, atomic_write_text

META_FILENAME = 'synthetic_meta.json'


def _format_points(xyz: np.ndarray, rgb: np.ndarray) -> str:
    """S3DIS text lines '%.3f %.3f %.3f %d %d %d' (one big %-format: ~10x faster than np.savetxt)."""
    if len(xyz) == 0:
        return ''
    table = np.concatenate([np.asarray(xyz, np.float64), np.asarray(rgb, np.float64)], axis=1)
    return ('%.3f %.3f %.3f %d %d %d\n' * len(table)) % tuple(table.ravel().tolist())


def write_room(root: str | os.PathLike, area: int, room_name: str, xyz: np.ndarray, rgb: np.ndarray,
               sem: np.ndarray, ins: np.ndarray, meta: dict) -> Path:
    """Write one room in the S3DIS raw layout (see module docstring); returns the room folder.

    Annotation files are named from `meta['instances']` (id -> name); stale `*.txt` annotations left from an
    earlier run in the same folder are removed so the folder always describes exactly this room.
    """
    n = len(xyz)
    if not (len(rgb) == len(sem) == len(ins) == n):
        raise ValueError(f'room {room_name}: xyz/rgb/sem/ins lengths differ: {n}, {len(rgb)}, {len(sem)}, {len(ins)}')
    names = {i['id']: i['name'] for i in meta['instances']}
    if n and (ins.min() < 0 or int(ins.max()) not in names or len(names) != int(ins.max()) + 1):
        raise ValueError(f'room {room_name}: instance ids must be 0..K-1 and all listed in meta["instances"]')
    room_dir = Path(root) / f'Area_{int(area)}' / room_name
    ann_dir = room_dir / 'Annotations'
    ann_dir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(ins, kind='stable')
    xyz, rgb, sem, ins = xyz[order], rgb[order], sem[order], ins[order]
    bounds = np.searchsorted(ins, np.arange(len(names) + 1))
    chunks = []
    for k in range(len(names)):
        a, b = bounds[k], bounds[k + 1]
        if S3DIS_CLASSES[int(sem[a])] != meta['instances'][k]['class']:
            raise ValueError(f'room {room_name}: instance {k} semantic label disagrees with meta')
        text = _format_points(xyz[a:b], rgb[a:b])
        atomic_write_text(ann_dir / f'{names[k]}.txt', text)
        chunks.append(text)
    wanted = {f'{v}.txt' for v in names.values()}
    for stale in ann_dir.glob('*.txt'):
        if stale.name not in wanted:
            stale.unlink()
    atomic_write_text(room_dir / f'{room_name}.txt', ''.join(chunks))
    atomic_write_text(room_dir / META_FILENAME, json.dumps({'area': int(area), 'room': room_name, **meta}, indent=1))
    return room_dir


def room_rng(seed: int, area: int, index: int) -> np.random.Generator:
    """Independent stream per (seed, area, room index): a room does not change when others are added."""
    return np.random.default_rng([int(seed), int(area), int(index)])


def generate_dataset(root: str | os.PathLike, areas: dict[int, int] | None = None, seed: int = 0,
                     density: float = DEFAULT_DENSITY, noise: float = DEFAULT_NOISE,
                     rare_prob: float = DEFAULT_RARE_PROB, progress: bool = True, preview: bool = False) -> dict:
    """Generate `areas[a]` rooms in each Area_<a> under `root`; returns (and writes to
    `<root>/synthetic_dataset.json`) a summary with per-room names, point counts, rare cases and timing."""
    from tqdm import tqdm

    areas = {1: 2} if areas is None else dict(areas)
    for area, count in areas.items():
        if int(area) < 1 or int(count) < 0:
            raise ValueError(f'areas must map area number >= 1 to a room count >= 0, got {area}: {count}')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary = {'seed': int(seed), 'density': float(density), 'noise': float(noise), 'rare_prob': float(rare_prob),
               'classes': list(S3DIS_CLASSES), 'rooms': []}
    class_points = np.zeros(len(S3DIS_CLASSES), np.int64)
    bar = tqdm(total=sum(areas.values()), desc='synthetic rooms', unit='room', disable=not progress)
    start = time.perf_counter()
    for area in sorted(areas):
        type_counts: dict[str, int] = {}
        for index in range(int(areas[area])):
            xyz, rgb, sem, ins, meta = generate_room(room_rng(seed, area, index), density=density, noise=noise,
                                                     rare_prob=rare_prob)
            type_counts[meta['room_type']] = type_counts.get(meta['room_type'], 0) + 1
            name = f"{meta['room_type']}_{type_counts[meta['room_type']]}"
            room_dir = write_room(root, area, name, xyz, rgb, sem, ins, meta)
            if preview:
                render_preview(xyz, sem, room_dir / 'preview.png', title=f'Area_{area}/{name}', ins=ins, meta=meta)
            class_points += np.bincount(sem, minlength=len(S3DIS_CLASSES))
            summary['rooms'].append({'area': int(area), 'room': name, 'points': int(len(xyz)),
                                     'instances': len(meta['instances']), 'rare_instances': meta['rare_instances']})
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    total = max(int(class_points.sum()), 1)
    summary['seconds'] = round(elapsed, 2)
    summary['seconds_per_room'] = round(elapsed / max(len(summary['rooms']), 1), 3)
    summary['class_fraction'] = {c: round(int(n) / total, 4) for c, n in zip(S3DIS_CLASSES, class_points, strict=True)}
    atomic_write_text(root / 'synthetic_dataset.json', json.dumps(summary, indent=1))
    return summary


def render_preview(xyz: np.ndarray, sem: np.ndarray, path: str | os.PathLike, title: str = '',
                   ins: np.ndarray | None = None, meta: dict | None = None) -> Path:
    """Top view PNG coloured by class (ceiling and beams hidden so the furniture shows); rare instances
    are circled in red when `ins` and `meta` are given."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mpnet_model.data.classes import palette

    colours = np.array(palette(len(S3DIS_CLASSES))) / 255.0
    hidden = np.isin(sem, [CLASS_INDEX['ceiling'], CLASS_INDEX['beam']])
    order = np.argsort(xyz[:, 2][~hidden])
    pts, lab = xyz[~hidden][order], sem[~hidden][order]
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.scatter(pts[:, 0], pts[:, 1], c=colours[lab], s=1.0, linewidths=0)
    if ins is not None and meta is not None:
        for info in meta['instances']:
            if info['rare']:
                p = xyz[ins == info['id']]
                ax.add_patch(plt.Circle(p[:, :2].mean(0), 0.6, fill=False, color='red', lw=1.5))
    handles = [plt.Line2D([], [], marker='o', ls='', color=colours[i], label=c) for i, c in enumerate(S3DIS_CLASSES)]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_aspect('equal')
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_write(path, suffix='.tmp.png') as stream:
            fig.savefig(stream, format='png')
    finally:
        plt.close(fig)
    return path


