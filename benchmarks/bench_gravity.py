"""Gravity alignment without tf, measured on simulated frames from sensors pitched and rolled up to 30 degrees.

Frames: virtual OS-1-128 lidar and Kinect drives through generated rooms, the sensor mounted with a random pitch
and roll in [-30, 30] deg (plus the robot's own pose noise). The truth is the sensor's pose, so the up-axis
error of `estimate_up` is exact. Accuracy: the shipped model on the same clouds segmented
  - off:   the tilted cloud as it is (what the node did before, with no tf),
  - auto:  gravity-aligned first (`gravity_align: auto`),
  - truth: rotated with the true gravity (the upper bound a perfect tf gives).
Lidar clouds are in the lidar frame; camera clouds in the camera body frame (x forward, z up before the tilt), and
once more in the optical frame with the -y prior the node uses for `*_optical_frame` clouds.

    python benchmarks/bench_gravity.py [--frames 24] [--segment 6] [--out benchmarks/results/gravity.md]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def simulate(count: int, sensor: str, seed: int):
    """(sensor-frame xyz, colours, sem, true up in the sensor frame) for `count` tilted frames."""
    from mpnet_model.data.synthetic.floors import room_scene
    from mpnet_model.data.synthetic.frames import frame_colours
    from mpnet_model.data.synthetic.lidar import lidar_preset, simulate_lidar
    from mpnet_model.data.synthetic.raycast import RayCaster
    from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL, camera_preset, simulate_camera
    from mpnet_model.data.synthetic.trajectory import SensorRig, plan_path, resample

    rng = np.random.default_rng([seed, 31])
    out = []
    while len(out) < count:
        scene = room_scene(rng, room_type=str(rng.choice(['office', 'conferenceRoom', 'lobby'])))
        caster = RayCaster(scene.mesh)
        xy, heading = resample(plan_path(scene.mesh, rng, goals=2), 1.0)
        for i in rng.choice(len(xy), size=min(2, len(xy)), replace=False):
            pitch, roll = np.radians(rng.uniform(-30, 30, 2))
            lidar = sensor == 'lidar'
            rig = SensorRig(height=float(rng.uniform(0.4, 1.2)), pitch=float(pitch), roll=float(roll),
                            body_from_sensor=np.eye(3) if lidar else BODY_FROM_OPTICAL)
            pose = rig.world_from_sensor(xy[i], heading[i], rig.noise(rng))
            if lidar:
                frame = simulate_lidar(caster, lidar_preset('os1-128'), rig.moving(pose), rng)
                arrays = {'xyz': frame.xyz[frame.valid], 'intensity': frame.intensity[frame.valid]}
            else:
                frame = simulate_camera(caster, camera_preset('kinect'), pose, scene.stains, rng)
                arrays = {'xyz': frame.xyz[frame.valid], 'rgb': frame.rgb,
                          'pixel': np.flatnonzero(frame.valid.reshape(-1))}
            up = pose[:3, :3].T @ np.array([0.0, 0.0, 1.0])                     # world up in the sensor frame
            out.append((arrays['xyz'], frame_colours(arrays, {}), frame.sem[frame.valid].astype(np.int64), up))
    return out[:count]


def angle_deg(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def main() -> None:
    from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL
    from mpnet_model.eval.metrics import SemanticEvaluator
    from mpnet_model.infer.gravity import estimate_up, rotation_to_z, segment_gravity_aligned
    from mpnet_model.infer.scene import SceneSegmenter

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=24, help='frames per sensor for the up-axis error')
    parser.add_argument('--segment', type=int, default=6, help='of them, frames per sensor also segmented')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    lines = ['| sensor (frame) | frames | up error median [deg] | p95 | max | < 2 deg | plane found | ms/estimate |',
             '|---|---|---|---|---|---|---|---|']
    acc_lines = ['| sensor | frames | mIoU off | mIoU auto | mIoU true gravity | oAcc off | oAcc auto | oAcc true |',
                 '|---|---|---|---|---|---|---|---|']
    for sensor in ('lidar', 'camera'):
        frames = simulate(args.frames, sensor, args.seed)
        variants = [('lidar frame', np.eye(3), (0, 0, 1))] if sensor == 'lidar' else \
            [('body frame', BODY_FROM_OPTICAL, (0, 0, 1)), ('optical frame, -y prior', np.eye(3), (0, -1, 0))]
        for name, to_frame, prior in variants:
            errors, found, times = [], [], []
            for xyz, _, _, up in frames:
                start = time.perf_counter()
                est = estimate_up(xyz @ to_frame.T, prior)
                times.append((time.perf_counter() - start) * 1e3)
                errors.append(angle_deg(est.up, to_frame @ up))
                found.append(est.found)
            e = np.array(errors)
            lines.append(f'| {sensor} ({name}) | {len(e)} | {np.median(e):.2f} | {np.percentile(e, 95):.2f} | '
                         f'{e.max():.2f} | {np.mean(e < 2) * 100:.0f} % | {np.mean(found) * 100:.0f} % | '
                         f'{np.median(times):.0f} |')
        to_frame = np.eye(3) if sensor == 'lidar' else BODY_FROM_OPTICAL
        evals = {k: SemanticEvaluator(len(segmenter.class_names)) for k in ('off', 'auto', 'true')}
        for xyz, rgb, sem, up in frames[:args.segment]:
            cloud = (xyz @ to_frame.T).astype(np.float32)
            true_up = to_frame @ up
            runs = {'off': segmenter.segment(cloud, rgb),
                    'auto': segment_gravity_aligned(segmenter, cloud, rgb)[0],
                    'true': segmenter.segment((cloud @ rotation_to_z(true_up).T).astype(np.float32), rgb)}
            for key, result in runs.items():
                evals[key].add(np.where(result.labels < 0, 0, result.labels), sem)
        r = {k: v.compute() for k, v in evals.items()}
        acc_lines.append(f"| {sensor} | {min(args.segment, len(frames))} | {r['off']['mIoU']:.3f} | "
                         f"{r['auto']['mIoU']:.3f} | {r['true']['mIoU']:.3f} | {r['off']['oAcc']:.3f} | "
                         f"{r['auto']['oAcc']:.3f} | {r['true']['oAcc']:.3f} |")
    text = '\n'.join(lines) + '\n\n' + '\n'.join(acc_lines) + '\n'
    print(text)
    if args.out:
        from mpnet_model.io.atomic import atomic_write_text

        header = ('# Gravity alignment without tf (simulated frames, pitch and roll up to 30 deg)\n\n'
                  f'`python benchmarks/bench_gravity.py --frames {args.frames} --segment {args.segment}`; model: '
                  'the shipped one (onnxruntime). Up error: angle between the estimated and the true up axis. '
                  'The machine was shared with other jobs (ms are indicative).\n\n')
        atomic_write_text(Path(args.out), header + text)


if __name__ == '__main__':
    main()
