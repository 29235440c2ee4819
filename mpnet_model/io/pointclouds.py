"""Point-cloud files for the runtime, tests, benchmarks and the demo: PCD (pypcd4), packed colours, frames.

PointCloud2 messages (live or from bags) are parsed in one place, `mpnet_ros.cloud_io`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class PointCloudError(ValueError):
    """A point-cloud file or message cannot be read; the message names the file/topic and the problem."""


@dataclass
class CloudFrame:
    """One cloud with invalid points removed. xyz (N,3) float32; rgb (N,3) float32 in [0,1] or None;
    intensity (N,) float32 or None; stamp_ns from the message header (0 for files)."""

    xyz: np.ndarray
    rgb: np.ndarray | None = None
    intensity: np.ndarray | None = None
    stamp_ns: int = 0
    frame_id: str = ''

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def select(self, mask: np.ndarray) -> CloudFrame:
        """A new frame holding only the points where `mask` (N,) is true."""
        return CloudFrame(self.xyz[mask], None if self.rgb is None else self.rgb[mask],
                          None if self.intensity is None else self.intensity[mask], self.stamp_ns, self.frame_id)


def pack_rgb(rgb_u8: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) float32 whose bits are 0x00RRGGBB (the PCL / RViz convention)."""
    rgb_u8 = rgb_u8.astype(np.uint32)
    return ((rgb_u8[:, 0] << 16) | (rgb_u8[:, 1] << 8) | rgb_u8[:, 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) packed 0x00RRGGBB (float32 bits or integer; PCL / ROS convention) -> (N, 3) float32 in [0, 1]."""
    if packed.dtype.kind == 'f':
        # Reinterpret the float's bytes (in their own byte order) as an integer: no float conversion, so colours
        # whose bit pattern is a NaN survive.
        packed = packed.view(np.dtype(np.uint32).newbyteorder(packed.dtype.byteorder))
    bits = packed.astype(np.uint32)
    shifts = np.array([16, 8, 0], dtype=np.uint32)
    return ((bits[:, None] >> shifts) & 0xFF).astype(np.float32) / 255.0


def _valid_mask(xyz: np.ndarray) -> np.ndarray:
    """Finite and not the (0,0,0) that lidar drivers (ouster-ros) publish for missing returns. (N,) bool."""
    return np.isfinite(xyz).all(axis=1) & np.any(xyz != 0.0, axis=1)


def _frame_from_structured(points: np.ndarray, source: str, stamp_ns: int = 0, frame_id: str = '') -> CloudFrame:
    """Structured array with x,y,z and optionally rgb/rgba/intensity fields -> CloudFrame of the valid points."""
    names = points.dtype.names or ()
    missing = [name for name in ('x', 'y', 'z') if name not in names]
    if missing:
        raise PointCloudError(f'{source}: point fields {list(names)} lack {missing}')
    xyz = np.stack([points['x'], points['y'], points['z']], axis=-1).astype(np.float32)
    colour_field = next((name for name in ('rgb', 'rgba') if name in names), None)
    rgb = unpack_rgb(points[colour_field]) if colour_field else None
    intensity = points['intensity'].astype(np.float32) if 'intensity' in names else None
    frame = CloudFrame(xyz, rgb, intensity, stamp_ns, frame_id)
    return frame.select(_valid_mask(xyz))


def load_pcd(path: str | os.PathLike) -> CloudFrame:
    """Read a PCD file (any encoding pypcd4 supports) and drop NaN / zero points."""
    from pypcd4 import PointCloud

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PointCloudError(f'{path}: no such PCD file')
    try:
        cloud = PointCloud.from_path(path)
    except Exception as exc:  # pypcd4 raises assorted errors for malformed headers/data
        raise PointCloudError(f'{path}: not a readable PCD file ({exc})') from exc
    return _frame_from_structured(cloud.pc_data, path)


def optical_to_z_up(xyz: np.ndarray) -> np.ndarray:
    """Camera optical frame (x right, y down, z forward; Kinect PCDs) -> z-up (x forward, y left, z up), the
    frame the 1 m x 1 m x-y blocks assume. (N,3) -> (N,3) float32."""
    xyz = np.asarray(xyz, dtype=np.float32)
    return np.stack([xyz[:, 2], -xyz[:, 0], -xyz[:, 1]], axis=1)
