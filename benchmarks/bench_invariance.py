"""Scene-invariant labels (issue 22): models side by side, one run, through the node's path with default parameters.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_invariance.py \
        --model before=runs/room_model.onnx --model after=mpnet_model/assets/mpnet_synthetic.onnx

The first model is the baseline row. Per model (`mpnet_model/eval/invariance.py` for the definitions):
* stray points: one return below the ground, above the sensor, far away, added to the 8 m crop of each shared
  Ouster scan and to held-out simulated lidar / RGB-D frames: share of the other points whose class changes;
* range crops: each Ouster scan at 8 / 15 / 30 m and uncropped: agreement of the points within 8 m with the 8 m
  crop, and the share of the ground within 8 m (scikit-learn RANSAC plane) called floor;
* consecutive scans: nearest-neighbour (10 cm) label agreement between the uncropped scans 0-1 and 1-2;
* tabletop: the share of the dominant plane of each Kinect tabletop frame called table;
* cost: p50 of the frame time of the 15 m crops (ONNX Runtime, 1 thread, interleaved runs of the models).
Writes benchmarks/results/invariance.md (and .json); --out changes the folder.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import sample_frames  # noqa: E402
from mpnet_model.eval import invariance as inv  # noqa: E402
from mpnet_model.io.atomic import atomic_write_text  # noqa: E402

SIM_CONFIGS = {'sim lidar': 'config/eval_sim_lidar.yaml', 'sim RGB-D': 'config/eval_sim_rgbd.yaml'}


def make_pipeline(model: str, threads: int = 1):
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import ScenePipeline

    backend = 'torch' if model.endswith('.pt') else 'onnxruntime'
    options = {'intra_op_threads': threads} if backend == 'onnxruntime' else {}
    segmenter = SceneSegmenter.from_config(backend, model, backend_options=options)
    return ScenePipeline(validate_params({}, check_files=False), segmenter, enforce_budget=False)


def labels_function(pipeline, frame_id: str):
    """labels_of(xyz, colour) for the invariance measurements: colour = intensity (N,) or {'rgb': (N,3)}."""
    def labels_of(xyz, colour):
        rgb = colour.get('rgb') if isinstance(colour, dict) else None
        intensity = None if isinstance(colour, dict) else colour
        return np.asarray(pipeline.segment_cloud(xyz, rgb, intensity, frame_id).labels)
    return labels_of


def kinect_frames():
    from mpnet_ros.bag_tool import read_bag_clouds

    return list(read_bag_clouds(sample_frames.shared_data() / 'kinect_tabletop_sequence',
                                '/camera/depth_registered/points'))


def sim_frames(config: str, count: int):
    from mpnet_model.data.config import load_data_config
    from mpnet_model.data.synthetic.frames import load_frame

    d = load_data_config(ROOT / config)
    d.root = str(ROOT / d.root)
    return [load_frame(p, d.lidar_colour) for p in d.split().test[:count]]


def measure(name: str, model: str, sims: dict, scans, tabletop) -> dict:
    pipeline = make_pipeline(model)
    classes = pipeline.class_names
    floor, table = classes.index('floor'), classes.index('table')
    lidar = labels_function(pipeline, 'os_lidar')
    out = {'model': model, 'encoding': pipeline.segmenter.input_encoding, 'ouster': [], 'sim': {}}
    full_labels = []
    for index, (xyz, intensity) in enumerate(scans):
        near = np.linalg.norm(xyz, axis=1) < 8.0
        xyz8, i8 = xyz[near], intensity[near]
        base = lidar(xyz8, i8)
        strays = {k: inv.stray_point_change(lidar, xyz8, i8, p, base) for k, p in inv.stray_points(xyz8).items()}
        rows = inv.range_crop_agreement(lidar, xyz, intensity, floor_class=floor, ground=inv.ground_mask(xyz))
        full_labels.append(lidar(xyz, intensity))
        out['ouster'].append({'scan': index, 'stray': strays, 'crops': rows})
        print(f'{name}: Ouster scan {index}: stray {strays}; crops ' + ', '.join(
            f"{r['crop']}: {r['agreement']:.3f}/{r.get('ground_floor', float('nan')):.3f}" for r in rows), flush=True)
    out['consecutive'] = [inv.nn_label_agreement(scans[k][0], full_labels[k], scans[k + 1][0], full_labels[k + 1])
                          for k in range(len(scans) - 1)]
    for kind, rooms in sims.items():
        changes = []
        for room in rooms:
            camera = labels_function(pipeline, 'sim')
            colour = {'rgb': room.rgb}
            base = camera(room.xyz, colour)
            changes.append({k: inv.stray_point_change(camera, room.xyz, colour, p, base)
                            for k, p in inv.stray_points(room.xyz).items()})
        out['sim'][kind] = {k: max(c[k] for c in changes) for k in changes[0]}
    camera = labels_function(pipeline, 'camera_rgb_optical_frame')
    out['tabletop'] = []
    for frame in tabletop:
        plane = inv.dominant_plane_mask(frame.xyz)
        labels = camera(frame.xyz, {'rgb': frame.rgb})
        out['tabletop'].append(float(np.mean(labels[plane] == table)))
    print(f"{name}: consecutive {out['consecutive']}, sim strays {out['sim']}, tabletop {out['tabletop']}",
          flush=True)
    return out


def timing(models: dict, repeats: int) -> dict:
    from mpnet_model.infer.scene import SceneSegmenter

    crops = sample_frames.ouster_scans()
    segmenters = {name: SceneSegmenter.from_config('torch' if path.endswith('.pt') else 'onnxruntime', path,
                                                   backend_options={} if path.endswith('.pt') else
                                                   {'intra_op_threads': 1}) for name, path in models.items()}
    times = {name: [] for name in models}
    for _ in range(repeats):
        for xyz, intensity in crops:
            keep = np.linalg.norm(xyz, axis=1) < 15.0
            for name, segmenter in segmenters.items():          # interleaved: load changes hit every model
                start = time.perf_counter()
                segmenter.segment(xyz[keep], None, intensity[keep])
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def markdown(results: dict, p50: dict) -> str:
    names = list(results)
    base = names[0]
    lines = ['# Scene-invariant labels (issue 22)', '',
             f'One run of `benchmarks/bench_invariance.py` on {platform.node()} ({platform.processor() or "CPU"}), '
             'through the node\'s path (`ScenePipeline`, default parameters: gravity alignment on, floor estimated).',
             '', '## Stray points: share of the other points whose class changes (max over frames)', '',
             '| model | encoding | Ouster below | Ouster above | Ouster far | sim lidar (b/a/f) | sim RGB-D (b/a/f) |',
             '|---|---|---|---|---|---|---|']
    for name, r in results.items():
        ouster = {k: max(s['stray'][k] for s in r['ouster']) for k in ('below', 'above', 'far')}
        sim = ['/'.join(f"{r['sim'][kind][k] * 100:.1f}" for k in ('below', 'above', 'far')) + ' %'
               for kind in SIM_CONFIGS]
        lines.append(f"| {name} | {r['encoding']} | {ouster['below']:.1%} | {ouster['above']:.1%} | "
                     f"{ouster['far']:.1%} | {sim[0]} | {sim[1]} |")
    lines += ['', '## Range crops: points within 8 m keeping their 8 m class / ground within 8 m called floor', '',
              '| model | scan | 8 m | 15 m | 30 m | uncropped |', '|---|---|---|---|---|---|']
    for name, r in results.items():
        for scan in r['ouster']:
            cells = [f"{row['agreement']:.1%} / {row.get('ground_floor', float('nan')):.1%}" for row in scan['crops']]
            lines.append(f"| {name} | {scan['scan']} | " + ' | '.join(cells) + ' |')
    lines += ['', '## Consecutive Ouster scans (uncropped): nearest-neighbour label agreement (10 cm)', '',
              '| model | scans 0-1 | scans 1-2 |', '|---|---|---|']
    for name, r in results.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{a:.1%} ({m:.0%} matched)' for a, m in r['consecutive']) + ' |')
    lines += ['', '## Kinect tabletop: dominant plane called table, per frame', '', '| model | frames |', '|---|---|']
    for name, r in results.items():
        lines.append(f'| {name} | ' + ', '.join(f'{v:.1%}' for v in r['tabletop']) + ' |')
    if p50:
        lines += ['', '## Cost: p50 frame time of the 15 m Ouster crops (ONNX Runtime, 1 thread, interleaved)', '',
                  '| model | p50 ms | vs baseline |', '|---|---|---|']
        for name in names:
            lines.append(f'| {name} | {p50[name]:.0f} | {p50[name] / p50[base]:.3f} |')
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', action='append', required=True, metavar='NAME=PATH')
    parser.add_argument('--sim-frames', type=int, default=4, help='held-out simulated frames per sensor kind')
    parser.add_argument('--repeats', type=int, default=3, help='timing passes over the 3 crops (0 = no timing)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    if sample_frames.missing():
        raise SystemExit(sample_frames.missing())
    models = dict(m.split('=', 1) for m in args.model)
    scans = sample_frames.ouster_scans()
    tabletop = kinect_frames()
    sims = {kind: sim_frames(config, args.sim_frames) for kind, config in SIM_CONFIGS.items()}
    results = {name: measure(name, path, sims, scans, tabletop) for name, path in models.items()}
    p50 = timing(models, args.repeats) if args.repeats else {}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, p50)
    atomic_write_text(args.out / 'invariance.md', text)
    atomic_write_text(args.out / 'invariance.json', json.dumps({'results': results, 'p50_ms': p50}, indent=1))
    print(text)


if __name__ == '__main__':
    main()
