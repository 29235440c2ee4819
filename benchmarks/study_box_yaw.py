"""Study (issue 23): the oriented box's yaw on the *ground-truth* instances of the simulated lidar and RGB-D frames
(all areas), the min-area rectangle of `oriented_boxes` against a Manhattan prior: the scene's axes from the wall
points' min-area rectangle (`footprint_yaw` on all wall points at once); an instance takes the scene's axes when its
rectangle there is at most (1 + tau) x its minimum area (a truly rotated object keeps its own), the longer side
along them as the x axis. Prints the share within 10 deg (modulo 180: yaw; modulo 90: box axes) of the elongated
objects (table, sofa, bookcase, board with a true footprint aspect >= 1.5). No network runs.

    PYTHONPATH=. python benchmarks/study_box_yaw.py 0.1 0.2 0.3
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from mpnet_model.data.config import load_data_config
from mpnet_model.data.synthetic.frames import frame_true_boxes
from mpnet_model.infer.instances import footprint_yaw, oriented_boxes, yaw_error_deg

CONFIGS = {'lidar': 'config/eval_sim_lidar.yaml', 'rgbd': 'config/eval_sim_rgbd.yaml'}
ELONGATED = ('table', 'sofa', 'bookcase', 'board')


def _sides(xy: np.ndarray, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return float(np.ptp(xy[:, 0] * c + xy[:, 1] * s)), float(np.ptp(-xy[:, 0] * s + xy[:, 1] * c))


def main(taus: list[float]) -> None:
    for kind, config in CONFIGS.items():
        split = load_data_config(config).split()
        errors: dict[str, list[float]] = {'rectangle': [], **{f'manhattan tau={t:g}': [] for t in taus}}
        for path in split.train + split.val + split.test:
            cloud, truth = split.loader(path), frame_true_boxes(path)
            wall = cloud.sem == cloud.class_names.index('wall')
            scene = None if wall.sum() <= 50 else float(footprint_yaw(
                torch.from_numpy(cloud.xyz[wall].astype(np.float64)), torch.zeros(int(wall.sum()), dtype=torch.long),
                1)[0])
            for instance in np.unique(cloud.ins[cloud.ins >= 0]):
                members = cloud.ins == instance
                box = truth.get(int(instance))
                name = cloud.class_names[np.bincount(cloud.sem[members]).argmax()]
                if name not in ELONGATED or box is None or box['yaw'] is None or members.sum() < 50:
                    continue
                length, width = sorted(box['size'][:2], reverse=True)
                if length < 1.5 * width:
                    continue
                xyz = cloud.xyz[members].astype(np.float64)
                yaw = float(oriented_boxes(torch.from_numpy(xyz), torch.zeros(len(xyz), dtype=torch.long), 1)[2][0])
                errors['rectangle'].append(float(yaw_error_deg(yaw, box['yaw'])))
                xy = xyz[:, :2] - xyz[:, :2].mean(0)
                area = math.prod(_sides(xy, yaw))
                for tau in taus:
                    chosen = yaw
                    if scene is not None:
                        along, across = _sides(xy, scene)
                        if along * across <= (1 + tau) * area + 1e-9:
                            chosen = scene if along >= across else scene + math.pi / 2
                    errors[f'manhattan tau={tau:g}'].append(float(yaw_error_deg(chosen, box['yaw'])))
        for name, values in errors.items():
            values = np.asarray(values)
            print(f'{kind} | {name} | {len(values)} | {100 * np.mean(values <= 10):.0f} % | '
                  f'{100 * np.mean(np.minimum(values, 90 - values) <= 10):.0f} %')


if __name__ == '__main__':
    main([float(t) for t in sys.argv[1:]] or [0.1, 0.2, 0.3])
