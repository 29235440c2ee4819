"""Benchmark on simulated sensor frames (`mpnet-synth --sensor ...`): single frames and accumulated windows,
through the same `SceneSegmenter` path as the robot, per class, per instance and per range band.

A window of k frames is the robot's accumulated cloud (the node's `window_frames` with tf): frames
last-k+1 .. last of a sequence in the level frame of the newest one; windows do not overlap, so every frame
is scored once per window size. Range bands count the points by their distance from the (newest) sensor.
Lidar frames get their colour channels as the runtime makes them (`lidar_colour`), camera frames their rgb.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mpnet_model.data.room import Room
from mpnet_model.eval.metrics import InstanceEvaluator, SemanticEvaluator

RANGE_BANDS = (0.0, 2.0, 5.0, 10.0, float('inf'))


def band_names(bands=RANGE_BANDS) -> list[str]:
    return [f'{a:g}-{b:g} m' if np.isfinite(b) else f'>= {a:g} m' for a, b in zip(bands[:-1], bands[1:])]


def sensor_kind(frame_paths: list[Path]) -> str:
    """The size filter's sensor kind of simulated frames ('lidar' or 'rgbd'), from their sequence.json; ValueError
    when the frames mix kinds."""
    from mpnet_model.data.synthetic.frames import read_sequence

    kinds = {read_sequence(seq)['sensor']['kind'] for seq in sorted({Path(p).parent for p in frame_paths})}
    if len(kinds) != 1 or not kinds <= {'lidar', 'rgbd'}:
        raise ValueError(f'frames of sensor kinds {sorted(kinds)}: tune and evaluate one kind (lidar or rgbd) at a '
                         'time')
    return kinds.pop()


def frame_items(frame_paths: list[Path], window: int, lidar_colour: str = 'intensity') -> list[Callable[[], Room]]:
    """Loaders of the evaluated clouds: every frame (window 1) or non-overlapping windows of `window` frames."""
    from mpnet_model.data.synthetic.frames import load_frame, load_window

    if window <= 1:
        return [lambda p=p: load_frame(p, lidar_colour) for p in frame_paths]
    by_sequence: dict[Path, list[int]] = {}
    for p in frame_paths:
        by_sequence.setdefault(p.parent, []).append(int(p.stem.split('_')[-1]))
    items = []
    for seq, ids in sorted(by_sequence.items()):
        ids = sorted(ids)
        for last in ids[window - 1::window]:
            items.append(lambda s=seq, k=last: load_window(s, k, window, lidar_colour))
    return items


def evaluate_clouds(segment: Callable[[Room], np.ndarray], items, num_classes: int, bands=RANGE_BANDS,
                    progress: bool = True, desc: str = 'frames') -> dict:
    """Score `segment(room) -> (labels, instances)` on every cloud of `items`; returns the summary dict."""
    semantic, instance = SemanticEvaluator(num_classes), InstanceEvaluator(num_classes)
    per_band = [SemanticEvaluator(num_classes) for _ in bands[:-1]]
    points, count = 0, 0
    for load in tqdm(items, desc=desc, unit='cloud', disable=not progress):
        room = load()
        labels, instances = segment(room)
        labels = np.where(labels < 0, 0, labels)
        semantic.add(labels, room.sem)
        instance.add(labels, instances, room.sem, room.ins, room_id=room.name)
        distance = np.linalg.norm(room.xyz, axis=1)
        band = np.digitize(distance, bands[1:-1])
        for b, evaluator in enumerate(per_band):
            mask = band == b
            if mask.any():
                evaluator.add(labels[mask], room.sem[mask])
        points += room.num_points
        count += 1
    if not count:
        raise ValueError('no frames to evaluate')
    sem, ins = semantic.compute(), instance.compute()
    bands_out = {}
    for name, evaluator in zip(band_names(bands), per_band):
        if evaluator.confusion.sum():
            b = evaluator.compute()
            bands_out[name] = {'oAcc': float(b['oAcc']), 'mIoU': float(b['mIoU']),
                               'points': int(evaluator.confusion.sum())}
    return {'clouds': count, 'points_per_cloud': points / count,
            'oAcc': float(sem['oAcc']), 'mAcc': float(sem['mAcc']), 'mIoU': float(sem['mIoU']),
            'iou': [float(v) for v in sem['iou']], 'mPrec': float(ins['mPrec']), 'mRec': float(ins['mRec']),
            'mCov': float(ins['mCov']), 'mWCov': float(ins['mWCov']), 'mFrag': float(ins['mFrag']),
            'mSplit': float(ins['mSplit']), 'range_bands': bands_out}


def segment_with(segmenter, gravity_align: str = 'off') -> Callable[[Room], tuple[np.ndarray, np.ndarray]]:
    """The robot's path for a cloud: SceneSegmenter (optionally gravity-aligned first, see infer/gravity.py)."""
    from mpnet_model.infer.gravity import segment_gravity_aligned

    def run(room: Room):
        if gravity_align == 'auto':
            result, _ = segment_gravity_aligned(segmenter, room.xyz, room.rgb, origin=room.origin)
        else:
            result = segmenter.segment(room.xyz, room.rgb, origin=room.origin)
        return np.asarray(result.labels), np.asarray(result.instances)
    return run


def summary_markdown(results: dict[str, dict], class_names) -> str:
    """Rows = runs (e.g. 'lidar, window 1'), columns = mIoU / oAcc / mPrec / mRec and over-segmentation (mFrag:
    predicted fragments per gt instance, mSplit: share of gt instances split), then per class and range band."""
    lines = ['| run | clouds | points/cloud | mIoU | oAcc | mAcc | mPrec | mRec | mFrag | mSplit |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for name, r in results.items():
        frag, split = r.get('mFrag', float('nan')), r.get('mSplit', float('nan'))
        lines.append(f"| {name} | {r['clouds']} | {r['points_per_cloud']:,.0f} | {r['mIoU']:.3f} | {r['oAcc']:.3f} | "
                     f"{r['mAcc']:.3f} | {r['mPrec']:.3f} | {r['mRec']:.3f} | {frag:.2f} | {split:.2f} |")
    lines += ['', '| run | ' + ' | '.join(class_names) + ' |', '|---|' + '---|' * len(class_names)]
    for name, r in results.items():
        lines.append(f'| {name} | ' + ' | '.join('-' if np.isnan(v) else f'{v:.2f}' for v in r['iou']) + ' |')
    bands = band_names()
    lines += ['', '| run | ' + ' | '.join(f'mIoU {b}' for b in bands) + ' |', '|---|' + '---|' * len(bands)]
    for name, r in results.items():
        cells = [f"{r['range_bands'][b]['mIoU']:.3f} ({r['range_bands'][b]['oAcc']:.2f})"
                 if b in r['range_bands'] else '-' for b in bands]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_results(results: dict[str, dict], class_names, out_dir: str | Path, title: str) -> Path:
    from mpnet_model.io.atomic import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / 'summary.json', json.dumps(results, indent=1))
    atomic_write_text(out_dir / 'report.md', f'# {title}\n\nmIoU per range band in brackets: oAcc.\n\n'
                      + summary_markdown(results, class_names))
    return out_dir
