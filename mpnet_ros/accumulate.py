"""Accumulation window and point filters (ROS-free, vectorised numpy).

Frames enter the window already in the fixed frame (the node looks the transform up with tf2; without tf2 or
with an empty fixed_frame the sensor is assumed static and clouds stay in their own frame). The window keeps
the newest `max_frames` frames and, when `max_age_s` > 0, only frames within that age of the newest one.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One filtered cloud in the fixed frame."""
    stamp_ns: int
    frame_id: str
    xyz: np.ndarray                # (N, 3) float32
    rgb: np.ndarray | None         # (N, 3) float32 in [0, 1]
    intensity: np.ndarray | None   # (N,) float32
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)   # the sensor's position in frame_id


@dataclass(frozen=True)
class Window:
    """The concatenated window, stamped with its newest frame."""
    stamp_ns: int
    frame_id: str
    xyz: np.ndarray                # (N, 3) float32
    rgb: np.ndarray | None         # (N, 3)
    intensity: np.ndarray | None   # (N,)
    num_frames: int
    sequence: int                  # how many frames had been added when this snapshot was taken
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)   # the newest frame's sensor position


class CloudWindow:
    """Thread-safe window of the newest frames: `add` from the subscriber, `snapshot` from the worker."""

    def __init__(self, max_frames: int = 1, max_age_s: float = 0.0):
        if max_frames < 1:
            raise ValueError(f'max_frames={max_frames}: must be >= 1')
        self._frames: deque[Frame] = deque(maxlen=max_frames)
        self._max_age_ns = int(max_age_s * 1e9)
        self._lock = threading.Lock()
        self._sequence = 0

    def add(self, frame: Frame) -> None:
        with self._lock:
            # A clock jump back (bag restarted) would leave newer-stamped frames forever: start over.
            if self._frames and frame.stamp_ns < self._frames[-1].stamp_ns:
                self._frames.clear()
            self._frames.append(frame)
            if self._max_age_ns > 0:
                while self._frames[0].stamp_ns < frame.stamp_ns - self._max_age_ns:
                    self._frames.popleft()
            self._sequence += 1

    @property
    def sequence(self) -> int:
        return self._sequence

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    def snapshot(self) -> Window | None:
        with self._lock:
            frames = list(self._frames)
            sequence = self._sequence
        if not frames:
            return None
        rgb = intensity = None
        if all(f.rgb is not None for f in frames):
            rgb = np.concatenate([f.rgb for f in frames])
        elif all(f.intensity is not None for f in frames):
            intensity = np.concatenate([f.intensity for f in frames])
        return Window(stamp_ns=frames[-1].stamp_ns, frame_id=frames[-1].frame_id,
                      xyz=np.concatenate([f.xyz for f in frames]), rgb=rgb, intensity=intensity,
                      num_frames=len(frames), sequence=sequence, origin=frames[-1].origin)


# --- geometry -----------------------------------------------------------------------------------------------------

def transform_matrix(translation: tuple[float, float, float], quaternion_xyzw: tuple[float, float, float, float]
                     ) -> np.ndarray:
    """(4, 4) homogeneous transform from a translation and a unit quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64) / np.linalg.norm(quaternion_xyzw)
    matrix = np.eye(4)
    matrix[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, 3] = translation
    return matrix


def apply_transform(xyz: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a (4, 4) transform, float32."""
    return (xyz.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


def range_mask(xyz: np.ndarray, min_range: float, max_range: float) -> np.ndarray:
    """(N,) bool: distance from the sensor origin within [min_range, max_range] (max_range 0 = no limit)."""
    squared = np.einsum('ij,ij->i', xyz, xyz)
    keep = squared >= min_range * min_range
    if max_range > 0:
        keep &= squared <= max_range * max_range
    return keep


def crop_box_mask(xyz: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """(N,) bool: inside the axis-aligned [xmin, ymin, zmin, xmax, ymax, zmax] box (inclusive)."""
    low, high = np.asarray(box[:3], dtype=np.float32), np.asarray(box[3:], dtype=np.float32)
    return ((xyz >= low) & (xyz <= high)).all(axis=1)


def voxel_downsample(xyz: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One representative point per occupied voxel.

    Returns (keep (M,) int64 indices of the representatives (the first point of each voxel), inverse (N,) int64
    index into `keep` for every input point) so results on the representatives can be copied to all points.
    """
    cells = np.floor(xyz / voxel_size).astype(np.int64)  # (N, 3)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    linear = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, keep, inverse = np.unique(linear, return_index=True, return_inverse=True)
    return keep.astype(np.int64), inverse.reshape(-1).astype(np.int64)
