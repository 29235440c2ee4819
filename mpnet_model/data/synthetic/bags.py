"""Simulated sequences as rosbag2 files whose PointCloud2 messages follow the real drivers' layouts, so the same
frames go through `mpnet-bag` and the node (written with `rosbags`, no ROS installation needed).

- lidar: ouster-ros "original" layout, organised rows x columns, destaggered, `point_step` 48 with padding:
  x y z float32 at 0/4/8, intensity float32 at 16, t uint32 at 20 (ns since the frame's first column),
  reflectivity uint16 at 24, ring uint16 at 26, ambient uint16 at 28, range uint32 (mm) at 32; no return = 0, 0, 0
  with range 0; topic /ouster/points, frame os_lidar (as the shared OS-1-128 bag).
- kinect: openni depth_registered layout, 480 x 640, x y z rgb float32 (`point_step` 16, rgb packed 0x00RRGGBB in a
  float), NaN where there is no depth, is_dense false; topic /camera/depth_registered/points, frame
  camera_rgb_optical_frame (as the shared Kinect bag).
- realsense: realsense2_camera ordered cloud (`pointcloud.ordered_pc`), the same x y z rgb layout at 640 x 480;
  topic /camera/camera/depth/color/points, frame camera_color_optical_frame.
Each frame's true pose is also written on /tf (map -> sensor frame) at the same stamp; log time = header stamp.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mpnet_model.data.synthetic.frames import read_sequence

FLOAT32, UINT16, UINT32 = 7, 4, 6
DRIVERS = {
    'lidar': ('/ouster/points', 'os_lidar'),
    'kinect': ('/camera/depth_registered/points', 'camera_rgb_optical_frame'),
    'realsense': ('/camera/camera/depth/color/points', 'camera_color_optical_frame'),
}
OUSTER_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'intensity', 't', 'reflectivity', 'ring', 'ambient', 'range'],
                         'formats': ['<f4', '<f4', '<f4', '<f4', '<u4', '<u2', '<u2', '<u2', '<u4'],
                         'offsets': [0, 4, 8, 16, 20, 24, 26, 28, 32], 'itemsize': 48})
XYZRGB_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'rgb'], 'formats': ['<f4'] * 4, 'offsets': [0, 4, 8, 12],
                         'itemsize': 16})
_DATATYPE = {'<f4': FLOAT32, '<u4': UINT32, '<u2': UINT16}


def organised_lidar(arrays, sensor: dict) -> np.ndarray:
    """(H, W) ouster-ros records of a stored lidar frame (zeros where there was no return)."""
    rows, cols = sensor['rows'], sensor['columns']
    shift = np.asarray(sensor['pixel_shift_by_row'])
    cloud = np.zeros(rows * cols, OUSTER_DTYPE)
    pixel = np.asarray(arrays['pixel'])
    xyz = np.asarray(arrays['xyz'])
    for k, name in enumerate('xyz'):
        cloud[name][pixel] = xyz[:, k]
    for name, key in (('intensity', 'intensity'), ('reflectivity', 'reflectivity'), ('ambient', 'ambient'),
                      ('range', 'range_mm')):
        cloud[name][pixel] = arrays[key]
    measurement = (np.arange(cols)[None, :] - shift[:, None]) % cols
    cloud['t'] = np.rint(measurement * 1e9 / (cols * sensor['rate_hz'])).astype(np.uint32).reshape(-1)
    cloud['ring'] = np.repeat(np.arange(rows, dtype=np.uint16), cols)
    return cloud.reshape(rows, cols)


def organised_xyzrgb(arrays, sensor: dict) -> np.ndarray:
    """(H, W) x y z rgb records of a stored camera frame (NaN xyz in the holes, colour everywhere)."""
    from mpnet_model.io.pointclouds import pack_rgb

    h, w = sensor['height'], sensor['width']
    cloud = np.zeros(h * w, XYZRGB_DTYPE)
    for name in 'xyz':
        cloud[name] = np.nan
    pixel = np.asarray(arrays['pixel'])
    for k, name in enumerate('xyz'):
        cloud[name][pixel] = np.asarray(arrays['xyz'])[:, k]
    cloud['rgb'] = pack_rgb(np.asarray(arrays['rgb']).reshape(-1, 3))
    return cloud.reshape(h, w)


def _cloud_msg(typestore, records: np.ndarray, frame_id: str, stamp_ns: int):
    PointCloud2 = typestore.types['sensor_msgs/msg/PointCloud2']
    PointField = typestore.types['sensor_msgs/msg/PointField']
    dtype = records.dtype
    fields = [PointField(name=n, offset=dtype.fields[n][1], datatype=_DATATYPE[dtype.fields[n][0].str], count=1)
              for n in dtype.names]
    height, width = records.shape
    return PointCloud2(header=_header(typestore, frame_id, stamp_ns), height=height, width=width, fields=fields,
                       is_bigendian=False, point_step=dtype.itemsize, row_step=dtype.itemsize * width,
                       data=np.frombuffer(records.tobytes(), np.uint8), is_dense=False)


def _header(typestore, frame_id: str, stamp_ns: int):
    Header = typestore.types['std_msgs/msg/Header']
    Time = typestore.types['builtin_interfaces/msg/Time']
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _tf_msg(typestore, pose: np.ndarray, child: str, stamp_ns: int):
    from scipy.spatial.transform import Rotation

    t = typestore.types
    x, y, z, w = Rotation.from_matrix(pose[:3, :3]).as_quat()
    transform = t['geometry_msgs/msg/TransformStamped'](
        header=_header(typestore, 'map', stamp_ns), child_frame_id=child,
        transform=t['geometry_msgs/msg/Transform'](
            translation=t['geometry_msgs/msg/Vector3'](x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])),
            rotation=t['geometry_msgs/msg/Quaternion'](x=float(x), y=float(y), z=float(z), w=float(w))))
    return t['tf2_msgs/msg/TFMessage'](transforms=[transform])


def write_sequence_bag(seq_dir: str | os.PathLike, out: str | os.PathLike, storage: str = 'mcap') -> Path:
    """Write the stored sequence at `seq_dir` as a rosbag2 folder `out` (must not exist); atomic (temp + rename)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    seq_dir, out = Path(seq_dir), Path(out)
    if out.exists():
        raise FileExistsError(f'{out} already exists')
    meta = read_sequence(seq_dir)
    sensor = meta['sensor']
    kind = 'lidar' if sensor['kind'] == 'lidar' else sensor['preset']
    topic, frame_id = DRIVERS[kind]
    typestore = get_typestore(Stores.ROS2_JAZZY)
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        with Writer(staging / out.name, version=9, storage_plugin=plugin) as writer:
            cloud_conn = writer.add_connection(topic, 'sensor_msgs/msg/PointCloud2', typestore=typestore)
            tf_conn = writer.add_connection('/tf', 'tf2_msgs/msg/TFMessage', typestore=typestore)
            for entry in meta['frames']:
                with np.load(seq_dir / entry['file'], allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
                records = organised_lidar(arrays, sensor) if kind == 'lidar' else organised_xyzrgb(arrays, sensor)
                stamp = int(entry['stamp_ns'])
                pose = np.asarray(entry['world_from_sensor'])
                writer.write(tf_conn, stamp, typestore.serialize_cdr(_tf_msg(typestore, pose, frame_id, stamp),
                                                                     'tf2_msgs/msg/TFMessage'))
                writer.write(cloud_conn, stamp, typestore.serialize_cdr(_cloud_msg(typestore, records, frame_id,
                                                                                   stamp),
                                                                        'sensor_msgs/msg/PointCloud2'))
        os.replace(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
