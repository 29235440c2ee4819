"""Semantic map mode vs today's per-frame path (issue 24), one run on the CPU, with ground truth.

Drives: `mpnet-synth` lidar (OS-1-128) and RGB-D (Kinect) drives through a floor (corridor and rooms) at 1 m/s and
10 Hz (frames 0.1 m apart), true poses from the simulation (`world_from_sensor`, the injected `KnownPoses` of the
node). Each frame goes into the fixed (world) frame and is
  * segmented whole by `SceneSegmenter.segment` (today's per-frame path with a fixed frame), and
  * integrated into a `SemanticMapper` (mapping mode: only the dirty blocks are segmented, labels from the map),
both with the same segmenter (the model given, ONNX Runtime on the CPU). Measured:
  * accuracy: mIoU per point over all frames (per-frame labels vs labels looked up from the map), and the map's
    voxels at the end of the drive vs voxel ground truth (majority class of the points that fell in each voxel);
  * cost: mean per-frame time and blocks run per frame, mapping vs per-frame (the ratio);
  * stability: label flips per voxel per 10 frames: for every voxel seen in consecutive frames, the label it gets
    (majority of its points' labels in that frame; mapping: its map label) is compared with the label it got the
    previous time it was seen; flips / comparisons x 10;
  * memory: RSS over a 5-minute looped drive (the lidar drive played forward and back, 3000 frames at 10 Hz) with
    a bounded map (--loop-radius, --loop-max-voxels), sampled every 100 frames;
  * static sensor: the shared Ouster bag (3 real scans) replayed in a loop into one map (the sensor's own frame):
    blocks run per frame after the first pass, as a fraction of the map's blocks.

    python benchmarks/bench_mapping.py [--model PATH] [--frames 80] [--loop-frames 3000] [--quick]
    python benchmarks/bench_mapping.py --loop-frames 0          # drives and static sensor only
    python benchmarks/bench_mapping.py --only-loop              # the looped drive only (can run beside the above)

Writes benchmarks/results/mapping.md (drives, static sensor), benchmarks/results/mapping_loop.md (looped drive)
and docs/images/mapping_map.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / 'benchmarks' / 'results' / 'mapping.md'
LOOP_RESULTS = REPO / 'benchmarks' / 'results' / 'mapping_loop.md'
PICTURE = REPO / 'docs' / 'images' / 'mapping_map.png'
DATA = REPO / 'out' / 'bench_mapping'
SHARED = Path(os.environ.get('MPNET_SHARED', REPO.parent / 'shared'))
OUSTER_BAG = SHARED / 'data' / 'ouster_os1_128'
DRIVES = {'lidar': 'os1-128', 'rgbd': 'kinect'}
MAX_RANGE = 15.0           # [m] both paths see the same points (the README's 15 m crop)
SEED = 24


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def drive(kind: str, frames: int) -> Path:
    """The sequence folder of a drive (generated once, cached under out/bench_mapping)."""
    from mpnet_model.data.synthetic.frames import generate_frames

    root = DATA / kind
    found = sorted(root.glob('Area_*/*/sequence.json'))
    if found and json.loads(found[0].read_text())['frames'].__len__() >= frames:
        return found[0].parent
    generate_frames(root, {5: 1}, sensors=(DRIVES[kind],), scenes=('floor',), frames=frames, spacing=0.1,
                    seed=SEED)
    return sorted(root.glob('Area_*/*/sequence.json'))[0].parent


def load_drive(seq_dir: Path, frames: int) -> list[dict]:
    """Frames in the world frame: xyz, colour channels, ground truth, sensor origin."""
    from mpnet_model.data.synthetic.frames import frame_colours, read_sequence

    meta = read_sequence(seq_dir)
    out = []
    for entry in meta['frames'][:frames]:
        with np.load(seq_dir / entry['file']) as data:
            arrays = {k: data[k] for k in data.files}
        pose = np.asarray(entry['world_from_sensor'])
        keep = np.linalg.norm(arrays['xyz'], axis=1) <= MAX_RANGE
        xyz = (arrays['xyz'][keep].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
        colours = frame_colours(arrays, meta)[keep]
        out.append({'xyz': xyz, 'colours': colours.astype(np.float32), 'sem': arrays['sem'][keep].astype(np.int64),
                    'origin': pose[:3, 3]})
    return out


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """mIoU with unknown predictions (-1) counted as wrong (they add to the ground-truth class only)."""
    keep = gt >= 0
    pred, gt = pred[keep], gt[keep]
    known = pred >= 0
    tp = np.bincount(gt[known & (pred == gt)], minlength=num_classes).astype(np.float64)
    gt_count = np.bincount(gt, minlength=num_classes)
    pred_count = np.bincount(pred[known], minlength=num_classes)
    union = gt_count + pred_count - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def voxel_keys(xyz: np.ndarray, size: float) -> np.ndarray:
    from mpnet_model.mapping.table import pack_voxels

    return pack_voxels(np.floor(xyz.astype(np.float64) / size).astype(np.int64))


def frame_voxel_labels(keys: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(unique voxel keys, majority label of each voxel's points (-1 unknown counts as a label))."""
    unique, inverse = np.unique(keys, return_inverse=True)
    votes = np.zeros((len(unique), num_classes + 1), np.int64)
    np.add.at(votes, (inverse.reshape(-1), np.where(labels >= 0, labels, num_classes)), 1)
    winner = votes.argmax(1)
    return unique, np.where(winner == num_classes, -1, winner)


def flips_per_10(records: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
    """Label flips per voxel per 10 frames (see the module docstring) and the number of comparisons."""
    keys = np.concatenate([k for k, _ in records])
    labels = np.concatenate([lab for _, lab in records])
    frame = np.concatenate([np.full(len(k), i) for i, (k, _) in enumerate(records)])
    order = np.lexsort((frame, keys))
    keys, labels = keys[order], labels[order]
    same_voxel = keys[1:] == keys[:-1]
    comparisons = int(same_voxel.sum())
    flips = int((same_voxel & (labels[1:] != labels[:-1])).sum())
    return 10.0 * flips / max(comparisons, 1), comparisons


def run_drive(kind: str, frames: list[dict], segmenter, map_config, progress: bool) -> dict:
    from mpnet_model.mapping import SemanticMapper

    num_classes = len(segmenter.class_names)
    size = map_config.voxel_size
    gt_all, single_all, mapped_all = [], [], []
    single_voxels, mapped_voxels = [], []
    single_ms, mapped_ms, single_blocks, mapped_blocks = [], [], [], []
    gt_votes = {}
    mapper = SemanticMapper(segmenter, map_config)
    for frame in tqdm(frames, desc=f'{kind} drive', unit='frame', disable=not progress):
        start = time.perf_counter()
        result = segmenter.segment(frame['xyz'], frame['colours'])
        single_ms.append((time.perf_counter() - start) * 1e3)
        single_blocks.append(result.num_blocks)
        start = time.perf_counter()
        update = mapper.update(frame['xyz'], frame['colours'], frame['origin'])
        mapped_ms.append((time.perf_counter() - start) * 1e3)
        mapped_blocks.append(update.blocks_run)
        gt_all.append(frame['sem'])
        single_all.append(result.labels.astype(np.int64))
        mapped_all.append(update.labels.astype(np.int64))
        keys = voxel_keys(frame['xyz'], size)
        single_voxels.append(frame_voxel_labels(keys, result.labels, num_classes))
        mapped_voxels.append(frame_voxel_labels(keys, update.labels, num_classes))
        for key, label in zip(*frame_voxel_labels(keys, frame['sem'], num_classes)):
            gt_votes.setdefault(int(key), np.zeros(num_classes, np.int64))[label] += 1
    gt, single, mapped = (np.concatenate(v) for v in (gt_all, single_all, mapped_all))
    # the map's voxels at the end vs voxel ground truth (majority over the frames' per-voxel majorities)
    centroids, labels, _, _ = mapper.labelled_voxels()
    map_keys = voxel_keys(centroids, size)
    voxel_gt = np.array([gt_votes[int(k)].argmax() if int(k) in gt_votes else -1 for k in map_keys])
    # the same voxels labelled by the last frame that saw them (the per-frame path's "map")
    last_single = {}
    for keys, lab in single_voxels:
        last_single.update(zip(keys.tolist(), lab.tolist()))
    voxel_single = np.array([last_single.get(int(k), -1) for k in map_keys])
    flips_single, comparisons = flips_per_10(single_voxels)
    flips_mapped, _ = flips_per_10(mapped_voxels)
    after_first = slice(1, None)
    return {
        'kind': kind, 'frames': len(frames), 'points': int(np.mean([len(f['xyz']) for f in frames])),
        'miou_single': miou(single, gt, num_classes), 'miou_mapped': miou(mapped, gt, num_classes),
        'miou_map_voxels': miou(labels.astype(np.int64), voxel_gt, num_classes),
        'miou_single_voxels': miou(voxel_single, voxel_gt, num_classes), 'map_voxels': len(labels),
        'ms_single': float(np.mean(single_ms)), 'ms_mapped': float(np.mean(mapped_ms)),
        'ms_mapped_after_first': float(np.mean(mapped_ms[after_first])),
        'blocks_single': float(np.mean(single_blocks)), 'blocks_mapped': float(np.mean(mapped_blocks)),
        'blocks_mapped_max': int(np.max(mapped_blocks)), 'first_blocks': int(mapped_blocks[0]),
        'flips_single': flips_single, 'flips_mapped': flips_mapped, 'comparisons': comparisons,
        'mapper': mapper, 'mapped_blocks': mapped_blocks, 'single_blocks': single_blocks,
        'voxel_gt': voxel_gt, 'centroids': centroids, 'labels': labels,
    }


def loop_drive(frames: list[dict], segmenter, map_config, total: int, progress: bool) -> dict:
    """The drive forward and back, `total` frames, into one bounded map; RSS every 100 frames."""
    from mpnet_model.mapping import SemanticMapper

    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    mapper = SemanticMapper(segmenter, map_config)
    samples, blocks, voxels = [], [], []
    start = time.perf_counter()
    for i in tqdm(range(total), desc='looped drive', unit='frame', disable=not progress):
        frame = frames[order[i % len(order)]]
        update = mapper.update(frame['xyz'], frame['colours'], frame['origin'])
        blocks.append(update.blocks_run)
        voxels.append(update.voxels)
        if i % 100 == 0 or i == total - 1:
            samples.append((i, rss_mb(), len(mapper), mapper.nbytes() / 2**20))
    return {'frames': total, 'seconds': time.perf_counter() - start, 'samples': samples,
            'max_voxels': int(max(voxels)), 'blocks': float(np.mean(blocks)), 'cycle': len(order),
            'bytes_per_voxel': mapper.voxels.bytes_per_voxel()}


def static_ouster(segmenter, map_config, passes: int, progress: bool) -> dict:
    from mpnet_model.mapping import SemanticMapper
    from mpnet_ros.bag_tool import read_bag_clouds

    clouds = list(read_bag_clouds(OUSTER_BAG, '/ouster/points'))
    frames = []
    for cloud in clouds:
        keep = np.linalg.norm(cloud.xyz, axis=1) <= MAX_RANGE
        colours = segmenter.colours(len(cloud.xyz), None, cloud.intensity)[keep]
        frames.append((cloud.xyz[keep], colours))
    full_blocks = [segmenter.segment(xyz, colours).num_blocks for xyz, colours in frames]
    mapper = SemanticMapper(segmenter, map_config)
    rows = []
    for i in tqdm(range(passes * len(frames)), desc='static Ouster loop', unit='frame', disable=not progress):
        xyz, colours = frames[i % len(frames)]
        update = mapper.update(xyz, colours, np.zeros(3))
        rows.append((update.blocks_run, mapper.schedule.num_blocks(), update.timings['total']))
    after = rows[len(frames):]
    return {'frames': len(rows), 'points': int(np.mean([len(f[0]) for f in frames])),
            'full_blocks': float(np.mean(full_blocks)), 'first_pass': [r[0] for r in rows[:len(frames)]],
            'map_blocks': int(rows[-1][1]),
            'after_mean': float(np.mean([r[0] / r[1] for r in after])),
            'after_max': float(np.max([r[0] / r[1] for r in after])),
            'after_blocks_mean': float(np.mean([r[0] for r in after])),
            'after_vs_full_max': float(np.max([r[0] for r in after]) / np.mean(full_blocks)),
            'after_ms': float(np.mean([r[2] for r in after])), 'rows': rows}


def picture(drives: list[dict], class_names, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mpnet_model.data.classes import class_colour_table
    from mpnet_model.io.atomic import atomic_write

    table = class_colour_table(len(class_names)) / 255.0
    fig, axes = plt.subplots(len(drives), 2, figsize=(12, 5.2 * len(drives)), squeeze=False)
    for row, d in zip(axes, drives):
        xyz = d['centroids']
        keep = xyz[:, 2] < np.percentile(xyz[:, 2], 85)               # ceilings off, as the demo's pictures
        for ax, labels, title in ((row[0], d['labels'], 'map (fused labels)'),
                                  (row[1], d['voxel_gt'], 'ground truth')):
            colour = table[np.where(labels[keep] >= 0, labels[keep], len(class_names))]
            ax.scatter(xyz[keep, 0], xyz[keep, 1], c=colour, s=0.3, linewidths=0)
            ax.set_aspect('equal')
            ax.set_title(f'{d["kind"]} drive, {d["frames"]} frames: {title}, {len(xyz):,} voxels', fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [plt.Line2D([], [], marker='s', ls='', color=table[c], label=n) for c, n in enumerate(class_names)]
    fig.legend(handles=handles, loc='lower center', ncol=len(class_names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_write(path, suffix='.tmp.png') as stream:
        fig.savefig(stream, format='png', dpi=110)
    plt.close(fig)


def machine(args, seconds) -> str:
    return (f'One run on {platform.machine()} / {os.cpu_count()} CPU cores shared with other jobs (niced), '
            f'ONNX Runtime, model `{args.model or "shipped default"}`; {seconds / 60:.0f} min in all.')


def loop_lines(loop: dict, loop_config) -> list[str]:
    lines = []
    first, last = loop['samples'][0], loop['samples'][-1]
    half = [s[1] for s in loop['samples'] if s[0] >= loop['frames'] // 2]
    early = [s[1] for s in loop['samples'] if 0 < s[0] < loop['frames'] // 2]
    bound = loop_config.max_voxels * loop['bytes_per_voxel'] / 2**20
    lines += [f'**Memory, looped drive**: the lidar drive forward and back ({loop["cycle"]} frames a cycle), '
              f'{loop["frames"]} frames ({loop["frames"] / 600:.1f} min at 10 Hz) in {loop["seconds"]:.0f} s, '
              f'map radius {loop_config.radius:g} m and at most {loop_config.max_voxels:,} voxels '
              f'({loop["bytes_per_voxel"]} bytes each: the map arrays are bounded by {bound:.0f} MiB; '
              f'reached {loop["max_voxels"]:,} voxels), {loop["blocks"]:.1f} blocks per frame. RSS (MiB) at '
              f'frame 0 {first[1]:.0f}, max over the first half {max(early or [first[1]]):.0f}, max over the '
              f'second half {max(half):.0f}, last {last[1]:.0f}; map arrays at the end {last[3]:.1f} MiB.', '',
              '| frame | RSS MiB | voxels | map arrays MiB |', '|---|---|---|---|']
    lines += [f'| {i} | {r:.0f} | {v:,} | {m:.1f} |' for i, r, v, m in loop['samples'][::3]]
    lines.append('')
    return lines


def report(args, drives, loop, static, config, loop_config, seconds) -> str:
    if not drives:
        return '\n'.join(['# Semantic map mode: memory over a looped drive (`python benchmarks/bench_mapping.py '
                          '--only-loop`)', '', machine(args, seconds), '', *loop_lines(loop, loop_config)])
    lines = ['# Semantic map mode vs per-frame segmentation (`python benchmarks/bench_mapping.py`)', '',
             f'One run on {platform.machine()} / {os.cpu_count()} CPU cores shared with other jobs (niced), '
             f'ONNX Runtime, model `{args.model or "shipped default"}`; {seconds / 60:.0f} min in all. Drives: '
             f'`mpnet-synth` floors (corridor + rooms, seed {SEED}), frames 0.1 m apart (1 m/s at 10 Hz), true poses, '
             f'points within {MAX_RANGE:g} m. Map: voxel {config.voxel_size} m, radius {config.radius:g} m, '
             f'max {config.max_voxels:,} voxels, dirty fraction {config.dirty_fraction}, min changed '
             f'{config.min_changed}; layout `{drives[0]["layout"]}`.', '',
             '| drive | frames | points/frame | mIoU per-frame | mIoU map labels (same points) | mIoU map voxels '
             '(per-frame, last frame per voxel) | ms/frame per-frame | ms/frame mapping | ratio | blocks/frame '
             'per-frame | blocks/frame mapping (first frame, max) | flips /voxel /10 frames per-frame → mapping '
             '(ratio) |', '|' + '---|' * 12]
    for d in drives:
        lines.append(
            f'| {d["kind"]} | {d["frames"]} | {d["points"]:,} | {d["miou_single"]:.3f} | {d["miou_mapped"]:.3f} '
            f'({100 * (d["miou_mapped"] - d["miou_single"]):+.1f}) | {d["miou_map_voxels"]:.3f} '
            f'({100 * (d["miou_map_voxels"] - d["miou_single"]):+.1f} vs per-frame; per-frame voxels '
            f'{d["miou_single_voxels"]:.3f}) | {d["ms_single"]:.0f} | {d["ms_mapped"]:.0f} | '
            f'**{d["ms_mapped"] / d["ms_single"]:.2f}** | {d["blocks_single"]:.0f} | {d["blocks_mapped"]:.1f} '
            f'({d["first_blocks"]}, {d["blocks_mapped_max"]}) | {d["flips_single"]:.3f} → {d["flips_mapped"]:.3f} '
            f'(**{d["flips_mapped"] / max(d["flips_single"], 1e-9):.2f}**) |')
    lines += ['', 'Targets: map mIoU ≥ per-frame + 3 points on both sensors; mapping time ≤ 1/3 of per-frame; flips '
              '≤ 1/5 of per-frame.', '']
    if static:
        lines += [f'**Static sensor, the shared Ouster bag in a loop** ({static["frames"]} frames = '
                  f'{static["frames"] // 3} passes over its 3 scans, {static["points"]:,} points each within '
                  f'{MAX_RANGE:g} m, the sensor frame as the map frame): first pass {static["first_pass"]} blocks '
                  f'run (a per-frame segmentation runs {static["full_blocks"]:.0f}); after it, blocks run per frame / '
                  f'blocks of the map ({static["map_blocks"]}): mean **{100 * static["after_mean"]:.1f} %**, max '
                  f'**{100 * static["after_max"]:.1f} %** ({static["after_blocks_mean"]:.1f} blocks, '
                  f'{static["after_ms"]:.0f} ms per frame; the most blocks of one frame are '
                  f'{100 * static["after_vs_full_max"]:.1f} % of a per-frame segmentation\'s). Target ≤ 10 %.', '']
    if loop:
        lines += loop_lines(loop, loop_config)
    else:
        lines += ['Memory over a 5-minute looped drive: `benchmarks/results/mapping_loop.md` (`--only-loop`).', '']
    lines += ['Metric definitions: see the module docstring of `benchmarks/bench_mapping.py` and docs/mapping.md.', '']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped one)')
    parser.add_argument('--frames', type=int, default=80, help='frames per drive (0.1 m apart)')
    parser.add_argument('--loop-frames', type=int, default=3000, help='frames of the looped drive (0 = skip)')
    parser.add_argument('--loop-radius', type=float, default=8.0)
    parser.add_argument('--loop-max-voxels', type=int, default=200_000)
    parser.add_argument('--passes', type=int, default=10, help='passes over the Ouster bag (0 = skip)')
    parser.add_argument('--quick', action='store_true', help='20 frames, 300 loop frames, 4 passes (a smoke run)')
    parser.add_argument('--only-loop', action='store_true', help='the looped drive only')
    parser.add_argument('--no-write', action='store_true', help='print only')
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.loop_frames, args.passes = 20, 300, 4
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.mapping import MapConfig

    started = time.perf_counter()
    segmenter = SceneSegmenter.from_config('onnxruntime', args.model)
    config = MapConfig()
    loop_config = MapConfig(radius=args.loop_radius, max_voxels=args.loop_max_voxels)
    drives, lidar_frames = [], None
    for kind in () if args.only_loop else DRIVES:
        frames = load_drive(drive(kind, args.frames), args.frames)
        if kind == 'lidar':
            lidar_frames = frames
        result = run_drive(kind, frames, segmenter, config, progress=True)
        result['layout'] = segmenter.layout
        drives.append(result)
        print(f'{kind}: mIoU {result["miou_single"]:.3f} -> map labels {result["miou_mapped"]:.3f}, map voxels '
              f'{result["miou_map_voxels"]:.3f}; ms/frame {result["ms_single"]:.0f} -> {result["ms_mapped"]:.0f} '
              f'(ratio {result["ms_mapped"] / result["ms_single"]:.2f}); blocks/frame {result["blocks_single"]:.0f} '
              f'-> {result["blocks_mapped"]:.1f}; flips/voxel/10 frames {result["flips_single"]:.3f} -> '
              f'{result["flips_mapped"]:.3f} (ratio {result["flips_mapped"] / max(result["flips_single"], 1e-9):.2f})',
              flush=True)
    if lidar_frames is None:
        lidar_frames = load_drive(drive('lidar', args.frames), args.frames)
    static = static_ouster(segmenter, config, args.passes, True) \
        if args.passes and OUSTER_BAG.is_dir() and not args.only_loop else None
    if static:
        print(f'static Ouster: first pass {static["first_pass"]} blocks, after: mean '
              f'{100 * static["after_mean"]:.1f} % / max {100 * static["after_max"]:.1f} % of {static["map_blocks"]} '
              'map blocks per frame', flush=True)
    loop = loop_drive(lidar_frames, segmenter, loop_config, args.loop_frames, True) if args.loop_frames else None
    if loop:
        print('looped drive RSS MiB:', [round(s[1]) for s in loop['samples']], flush=True)
    text = report(args, drives, loop, static, config, loop_config, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        from mpnet_model.io.atomic import atomic_write_text

        if drives:
            atomic_write_text(RESULTS, text)
            picture(drives, segmenter.class_names, PICTURE)
            print(f'wrote {RESULTS} and {PICTURE}')
        else:
            atomic_write_text(LOOP_RESULTS, text)
            print(f'wrote {LOOP_RESULTS}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
