"""Point-cloud file I/O for the runtime, tests and benchmarks: PCD files (pypcd4) and PointCloud2 bags (rosbags).

ROS-free on purpose: `rosbags` deserialises PointCloud2 messages without a ROS install. The ROS node parses live
messages with `mpnet_ros.cloud_io`; the bag reader here only needs the plain field layout (name, offset, datatype)
that every PointCloud2 carries, so it reads the Ouster (padded, point_step 48) and Kinect (packed rgb) layouts alike.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """PCL packed colour (float32 bit pattern or uint32, 0x00RRGGBB / 0xAARRGGBB) (N,) -> (N,3) float32 in [0,1]."""
    packed = np.ascontiguousarray(packed)
    if packed.dtype.itemsize != 4:
        raise PointCloudError(f'packed rgb must be a 4-byte field, got dtype {packed.dtype}')
    bits = packed.view(np.uint32)
    channels = np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1)  # (N,3)
    return channels.astype(np.float32) / 255.0


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


# sensor_msgs/PointField datatype codes -> numpy dtypes.
_POINTFIELD_DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32,
                      7: np.float32, 8: np.float64}


def pointcloud2_to_structured(msg) -> np.ndarray:
    """A PointCloud2-shaped message (fields, point_step, data, is_bigendian) -> structured array (H*W,).

    Only the declared fields are viewed (padding skipped via explicit offsets), so any driver layout works.
    """
    fields = [f for f in msg.fields if f.datatype in _POINTFIELD_DTYPES and f.count == 1]
    if not fields:
        raise PointCloudError('PointCloud2 message has no scalar fields')
    byte_order = '>' if msg.is_bigendian else '<'
    dtype = np.dtype({'names': [f.name for f in fields],
                      'formats': [np.dtype(_POINTFIELD_DTYPES[f.datatype]).newbyteorder(byte_order) for f in fields],
                      'offsets': [f.offset for f in fields], 'itemsize': msg.point_step})
    data = np.asarray(msg.data, dtype=np.uint8)
    num_points = msg.width * msg.height
    if data.size < num_points * msg.point_step:
        raise PointCloudError(f'PointCloud2 data has {data.size} bytes, expected {num_points * msg.point_step}')
    if msg.row_step != msg.width * msg.point_step:  # rows padded: drop the padding row by row
        data = data.reshape(msg.height, msg.row_step)[:, :msg.width * msg.point_step]
    return np.ascontiguousarray(data).reshape(-1)[:num_points * msg.point_step].view(dtype)


def read_bag_clouds(bag_dir: str | os.PathLike, topic: str | None = None, limit: int | None = None
                    ) -> Iterator[CloudFrame]:
    """Yield the PointCloud2 frames of a rosbag2 directory (mcap or sqlite3) as CloudFrames of valid points.

    topic: the PointCloud2 topic; None picks the only one. limit: stop after this many frames.
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag_dir = os.fspath(bag_dir)
    if not os.path.isdir(bag_dir):
        raise PointCloudError(f'{bag_dir}: not a rosbag2 directory')
    with AnyReader([Path(bag_dir)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        clouds = [c for c in reader.connections if c.msgtype == 'sensor_msgs/msg/PointCloud2']
        if topic is not None:
            clouds = [c for c in clouds if c.topic == topic]
        if not clouds or (topic is None and len({c.topic for c in clouds}) > 1):
            found = sorted({c.topic for c in reader.connections})
            raise PointCloudError(f'{bag_dir}: topic={topic!r} does not pick one PointCloud2 topic; topics: {found}')
        for count, (connection, _, raw) in enumerate(reader.messages(connections=clouds)):
            if limit is not None and count >= limit:
                return
            msg = reader.deserialize(raw, connection.msgtype)
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            yield _parse_message(msg, f'{bag_dir}:{connection.topic}', stamp_ns)


def _parse_message(msg, source: str, stamp_ns: int) -> CloudFrame:
    """PointCloud2 -> CloudFrame with the ROS adapter's parser when installed (one parser for node and tools),
    else the minimal structured-dtype reader above (keeps mpnet_model usable without mpnet_ros)."""
    try:
        from mpnet_ros.cloud_io import parse_cloud
    except ImportError:
        return _frame_from_structured(pointcloud2_to_structured(msg), source, stamp_ns, msg.header.frame_id)
    parsed = parse_cloud(msg)
    return CloudFrame(parsed.xyz, parsed.rgb, parsed.intensity, stamp_ns, msg.header.frame_id)


def crop_radius(frame: CloudFrame, radius: float) -> CloudFrame:
    """Keep points within `radius` metres (horizontal distance) of the sensor origin."""
    return frame.select(np.hypot(frame.xyz[:, 0], frame.xyz[:, 1]) <= radius)


def optical_to_z_up(xyz: np.ndarray) -> np.ndarray:
    """Camera optical frame (x right, y down, z forward; Kinect PCDs) -> z-up (x forward, y left, z up), the
    frame the 1 m x 1 m x-y blocks assume. (N,3) -> (N,3) float32."""
    xyz = np.asarray(xyz, dtype=np.float32)
    return np.stack([xyz[:, 2], -xyz[:, 0], -xyz[:, 1]], axis=1)
