"""Robot trajectories through a scene and sensor poses with the tilt a real robot has.

`plan_path` drives a disc robot (radius 0.3 m) between random free spots: occupancy from every part that stands in
the robot's height band (walls, furniture; not the floor and ceiling), obstacles grown by the radius, shortest
paths on the 10 cm grid (scipy's Dijkstra). `SensorRig` mounts a sensor on the robot: height, nominal pitch (a
camera looks down), and per-frame pose noise as on a real platform: chassis pitch and roll ~N(0, 1 deg) clipped to
3 deg (floor unevenness, acceleration, suspension), height jitter ~N(0, 1 cm).

The frames keep two transforms: `world_from_sensor` (true pose, noise included) and `level_from_sensor`, the
rotation a robot's tf would know (mounting only, no noise): training and the benchmark see clouds in this
"level" frame, i.e. what the node gets with a fixed frame from tf; the residual tilt is the pose noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpnet_model.data.synthetic.layout import CLASS_INDEX
from mpnet_model.data.synthetic.raycast import SceneMesh

GRID = 0.1
ROBOT_RADIUS = 0.3


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def occupancy(mesh: SceneMesh, band: tuple[float, float] = (0.05, 1.6)) -> tuple[np.ndarray, np.ndarray]:
    """(free (nx, ny) bool grid, origin (2,)): cells a robot centre may occupy."""
    from scipy.ndimage import binary_dilation

    tri_xyz = mesh.vertices[mesh.triangles]                                      # (T,3,3)
    structural = np.isin(mesh.semantic, [CLASS_INDEX['floor'], CLASS_INDEX['ceiling']])
    floor_tris = tri_xyz[mesh.semantic == CLASS_INDEX['floor']]
    lo, hi = floor_tris.reshape(-1, 3).min(0)[:2], floor_tris.reshape(-1, 3).max(0)[:2]
    shape = np.ceil((hi - lo) / GRID).astype(int) + 1
    blocked = np.zeros(shape, bool)
    # occupied: triangles in the height band (box faces; a box's side faces cover its footprint's outline and its
    # top/bottom faces its area), rasterised by their bounding rectangles
    zlo, zhi = tri_xyz[:, :, 2].min(1), tri_xyz[:, :, 2].max(1)
    solid = ~structural & (zhi > band[0]) & (zlo < band[1])
    t_lo = np.floor((tri_xyz[solid, :, :2].min(1) - lo) / GRID).astype(int)
    t_hi = np.floor((tri_xyz[solid, :, :2].max(1) - lo) / GRID).astype(int)
    for (x0, y0), (x1, y1) in zip(t_lo, t_hi):
        blocked[max(x0, 0):x1 + 1, max(y0, 0):y1 + 1] = True
    radius = int(np.ceil(ROBOT_RADIUS / GRID))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    grown = binary_dilation(blocked, structure=(xx ** 2 + yy ** 2) <= radius ** 2)
    return ~grown, lo


def plan_path(mesh: SceneMesh, rng: np.random.Generator, goals: int = 4,
              anchors: list[np.ndarray] | None = None) -> np.ndarray:
    """(n, 2) waypoints (10 cm apart) of a collision-free drive through `goals` random free spots (or through the
    given `anchors`, e.g. room centres of a floor, snapped to the nearest free cell) in their order."""
    from scipy.ndimage import label
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    free, lo = occupancy(mesh)
    labels, count = label(free)
    if count == 0:
        raise ValueError('the scene has no free floor for a robot')
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    free = labels == largest
    cells = np.argwhere(free)                                                   # (F,2)
    index = -np.ones(free.shape, np.int64)
    index[free] = np.arange(len(cells))
    rows, cols, weights = [], [], []
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        nb = cells + (dx, dy)
        ok = (nb[:, 0] < free.shape[0]) & (nb[:, 1] >= 0) & (nb[:, 1] < free.shape[1])
        ok[ok] &= free[nb[ok, 0], nb[ok, 1]]
        rows.append(np.flatnonzero(ok))
        cols.append(index[nb[ok, 0], nb[ok, 1]])
        weights.append(np.full(ok.sum(), np.hypot(dx, dy)))
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(len(cells), len(cells))).tocsr()
    centres = lo + cells * GRID
    if anchors:
        stops = [int(np.argmin(np.linalg.norm(centres - a[:2], axis=1))) for a in anchors]
    else:
        stops = list(rng.choice(len(cells), size=goals + 1, replace=len(cells) < goals + 1))
    path = [stops[0]]
    for a, b in zip(stops[:-1], stops[1:]):
        _, pred = dijkstra(graph, indices=a, return_predecessors=True)
        leg, node = [], b
        while node != a and node >= 0:
            leg.append(node)
            node = pred[node]
        path.extend(reversed(leg))
    return centres[np.asarray(path)]


def resample(path: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (k,2) every `step` metres along a polyline and the heading (k,) there."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    if s[-1] < 1e-6:
        return path[:1].copy(), np.zeros(1)
    at = np.arange(0.0, s[-1] + 1e-9, step)
    xy = np.stack([np.interp(at, s, path[:, 0]), np.interp(at, s, path[:, 1])], axis=1)
    ahead = np.stack([np.interp(np.minimum(at + 0.5, s[-1]), s, path[:, 0]),
                      np.interp(np.minimum(at + 0.5, s[-1]), s, path[:, 1])], axis=1)
    behind = np.stack([np.interp(np.maximum(at - 0.5, 0), s, path[:, 0]),
                       np.interp(np.maximum(at - 0.5, 0), s, path[:, 1])], axis=1)
    heading = np.arctan2(*(ahead - behind)[:, ::-1].T)
    return xy, heading


@dataclass(frozen=True)
class SensorRig:
    """A sensor on the robot: mounting height [m], nominal pitch [rad] (negative = looking down), the mounting
    rotation from the sensor's own frame to the robot body (identity for a lidar, BODY_FROM_OPTICAL for a camera),
    and the pose noise."""
    height: float
    pitch: float = 0.0
    roll: float = 0.0
    body_from_sensor: np.ndarray = field(default_factory=lambda: np.eye(3))
    tilt_sigma: float = np.radians(1.0)
    tilt_clip: float = np.radians(3.0)
    height_sigma: float = 0.01
    speed: float = 1.0                     # m/s, for the motion during a lidar sweep

    def level_from_sensor(self) -> np.ndarray:
        """(3,3) the rotation tf would give: mounting pitch / roll, no noise."""
        return rot_y(-self.pitch) @ rot_x(self.roll) @ self.body_from_sensor

    def noise(self, rng: np.random.Generator) -> tuple[float, float, float]:
        pitch, roll = np.clip(rng.normal(0.0, self.tilt_sigma, 2), -self.tilt_clip, self.tilt_clip)
        return float(pitch), float(roll), float(rng.normal(0.0, self.height_sigma))

    def world_from_sensor(self, xy: np.ndarray, heading: float, noise: tuple[float, float, float]) -> np.ndarray:
        """(4,4) true pose: robot at (x, y) with `heading`, chassis tilted by the noise, sensor on its mount."""
        pitch, roll, dz = noise
        pose = np.eye(4)
        pose[:3, :3] = rot_z(heading) @ rot_y(pitch) @ rot_x(roll) @ self.level_from_sensor()
        pose[:3, 3] = [xy[0], xy[1], self.height + dz]
        return pose

    def moving(self, pose: np.ndarray):
        """pose_at(t) for a sensor driving forward (its body x) at `speed` from `pose` at t = 0."""
        forward = pose[:3, :3] @ np.linalg.inv(self.level_from_sensor())[:, 0]
        forward[2] = 0.0

        def pose_at(t: np.ndarray) -> np.ndarray:
            t = np.atleast_1d(np.asarray(t, float))
            out = np.repeat(pose[None], len(t), axis=0)
            out[:, :3, 3] += t[:, None] * self.speed * forward
            return out
        return pose_at
