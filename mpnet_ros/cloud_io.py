"""PointCloud2 <-> numpy, vectorised, for any field layout.

`parse_cloud` reads x/y/z plus colour (`rgb`/`rgba`, packed 0x00RRGGBB as float32 or uint32) or `intensity`
from any PointCloud2 layout: arbitrary field order/offsets/datatypes, padding inside a point (`point_step`) and
at the end of each row (`row_step`), organised clouds (height > 1) and big-endian data. Non-finite points and the
`0, 0, 0` returns lidars such as Ouster publish for "no return" are dropped. Input is duck-typed on the message
attributes (`fields`, `data`, `width`, ...) so rclpy messages and `rosbags` deserialised messages both work.

Malformed input raises `CloudError` whose message names the defect and whose `defect` is a short name of it
(row_step, non_float_xyz, truncated, ...: the node rate-limits its warnings per defect); nothing else escapes
`parse_cloud`.

`labeled_cloud_dtype` / `labeled_cloud_bytes` build the node's output layout (x, y, z, rgb, label, instance,
score); `labeled_cloud_msg` wraps them in an rclpy `sensor_msgs/PointCloud2` (rclpy imported lazily so the parse
path stays ROS-free).
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpnet_model.data.classes import class_colour_table
from mpnet_model.io.pointclouds import pack_rgb, unpack_rgb

# sensor_msgs/PointField datatype constants (fixed by the message definition).
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

# The in-package field -> dtype table, equal to sensor_msgs_py's (checked by a test).
_BUILTIN_DATATYPES: dict[int, np.dtype] = {
    INT8: np.dtype(np.int8), UINT8: np.dtype(np.uint8), INT16: np.dtype(np.int16), UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32), UINT32: np.dtype(np.uint32), FLOAT32: np.dtype(np.float32),
    FLOAT64: np.dtype(np.float64),
}

DEFAULT_MAX_POINTS = 5_000_000
COLOUR_FIELDS = ('rgb', 'rgba')


class CloudError(ValueError):
    """A PointCloud2 message cannot be parsed; the message names the defect, `defect` is its short name."""

    def __init__(self, message: str, defect: str = 'malformed'):
        super().__init__(message)
        self.defect = defect


def field_datatypes(use_sensor_msgs_py: bool = True) -> dict[int, np.dtype]:
    """PointField datatype -> numpy dtype, from sensor_msgs_py when installed, else the in-package table."""
    if use_sensor_msgs_py:
        try:
            from sensor_msgs_py import point_cloud2
            return dict(point_cloud2._DATATYPES)
        except ImportError:
            pass
    return dict(_BUILTIN_DATATYPES)


@dataclass(frozen=True)
class ParsedCloud:
    """The valid points of one PointCloud2 message, in its own frame."""
    xyz: np.ndarray              # (N, 3) float32
    rgb: np.ndarray | None       # (N, 3) float32 in [0, 1], when the cloud has rgb/rgba
    intensity: np.ndarray | None  # (N,) float32, when the cloud has intensity and no colour
    source_index: np.ndarray     # (N,) int64: index of each point in the message (row-major over height x width)
    frame_id: str
    stamp_ns: int
    num_input_points: int        # width * height, before removing invalid points

    def __len__(self) -> int:
        return len(self.xyz)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _message_bytes(data: Any) -> np.ndarray:
    """`data` as a flat uint8 array without copying (array.array from rclpy, ndarray from rosbags, bytes)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise CloudError(f'data has dtype {data.dtype}, expected uint8 bytes', 'data')
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    except TypeError as exc:
        raise CloudError(f'data is a {type(data).__name__}, not a byte buffer', 'data') from exc


def point_dtype(fields: list[Any], point_step: int, big_endian: bool,
                datatypes: dict[int, np.dtype] | None = None) -> np.dtype:
    """Structured numpy dtype of one point (itemsize = point_step), validating every field.

    Fields with count > 1 become sub-arrays. Raises CloudError for unknown datatypes, count 0, duplicate names,
    and fields that do not fit in point_step.
    """
    datatypes = datatypes if datatypes is not None else field_datatypes()
    names, formats, offsets = [], [], []
    for field in fields:
        name = str(field.name)
        if field.datatype not in datatypes:
            raise CloudError(f'field {name!r} has unknown datatype {field.datatype} (expected 1..8)', 'datatype')
        if int(field.count) < 1:
            raise CloudError(f'field {name!r} has count {field.count} (must be >= 1)', 'field_count')
        if name in names:
            raise CloudError(f'duplicate field name {name!r}', 'duplicate_field')
        base = datatypes[field.datatype].newbyteorder('>' if big_endian else '<')
        size = base.itemsize * int(field.count)
        if int(field.offset) < 0 or int(field.offset) + size > point_step:
            raise CloudError(f'wrong point_step {point_step}: field {name!r} at offset {field.offset} '
                             f'({size} bytes) does not fit in a point', 'point_step')
        names.append(name)
        formats.append(base if field.count == 1 else (base, (int(field.count),)))
        offsets.append(int(field.offset))
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': point_step})


def _check_geometry(msg: Any, max_points: int) -> tuple[int, int, int, int]:
    """Validate width/height/point_step/row_step/data length; returns (height, width, point_step, row_step)."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise CloudError(f'negative size {height} x {width}', 'size')
    count = height * width
    if count == 0:
        raise CloudError(f'0 points (height {height} x width {width})', 'size')
    if count > max_points:
        raise CloudError(f'too large: {count} points > max_points {max_points}', 'too_large')
    if point_step <= 0:
        raise CloudError(f'wrong point_step {point_step} (must be > 0)', 'point_step')
    if row_step < width * point_step:
        raise CloudError(f'row_step {row_step} < width*point_step {width * point_step}', 'row_step')
    return height, width, point_step, row_step


def _point_records(raw: np.ndarray, height: int, width: int, point_step: int, row_step: int) -> np.ndarray:
    """(height*width*point_step,) bytes of the points in row-major order, with row padding removed."""
    needed = (height - 1) * row_step + width * point_step
    if raw.size < needed:
        raise CloudError(f'truncated data: {raw.size} bytes < {needed} needed for {height} x {width} points '
                         f'(point_step {point_step}, row_step {row_step})', 'truncated')
    packed = width * point_step
    if row_step == packed or height == 1:
        return raw[:height * packed]
    # Rows carry padding: view the rows as (height, row_step) and cut each to its points.
    padded = np.lib.stride_tricks.as_strided(raw, shape=(height, packed), strides=(row_step, 1), writeable=False)
    return np.ascontiguousarray(padded).reshape(-1)


def parse_cloud(msg: Any, max_points: int = DEFAULT_MAX_POINTS, drop_zero: bool = True,
                datatypes: dict[int, np.dtype] | None = None) -> ParsedCloud:
    """Valid points of a PointCloud2 (any layout) as float32 arrays; raises CloudError naming the defect."""
    try:
        return _parse_cloud(msg, max_points, drop_zero, datatypes)
    except CloudError:
        raise
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        # Anything the checks above did not anticipate (wrong attribute types, ...) still names the defect.
        raise CloudError(f'malformed PointCloud2: {type(exc).__name__}: {exc}', type(exc).__name__) from exc


def _parse_cloud(msg: Any, max_points: int, drop_zero: bool, datatypes: dict[int, np.dtype] | None) -> ParsedCloud:
    height, width, point_step, row_step = _check_geometry(msg, max_points)
    fields = list(msg.fields)
    by_name = {str(f.name): f for f in fields}
    missing = [axis for axis in 'xyz' if axis not in by_name]
    if missing:
        raise CloudError(f'missing field(s) {missing}; fields are {sorted(by_name)}', 'missing_xyz')
    for axis in 'xyz':
        if by_name[axis].datatype not in (FLOAT32, FLOAT64) or int(by_name[axis].count) != 1:
            raise CloudError(f'non-float xyz: field {axis!r} has datatype {by_name[axis].datatype} '
                             f'count {by_name[axis].count} (expected FLOAT32/FLOAT64, count 1)', 'non_float_xyz')
    dtype = point_dtype(fields, point_step, bool(msg.is_bigendian), datatypes)
    raw = _point_records(_message_bytes(msg.data), height, width, point_step, row_step)
    points = np.frombuffer(raw, dtype=dtype, count=height * width)  # (H*W,) structured view

    with np.errstate(over='ignore'):    # float64 beyond float32's range becomes inf: dropped as invalid just below
        xyz = np.stack([points[axis].astype(np.float32) for axis in 'xyz'], axis=1)  # (H*W, 3)
    valid = np.isfinite(xyz).all(axis=1)
    if drop_zero:
        valid &= (xyz != 0).any(axis=1)
    source_index = np.flatnonzero(valid)
    if source_index.size == 0:
        raise CloudError(f'no valid points: all {height * width} are NaN/inf' + (' or 0,0,0' if drop_zero else ''),
                         'no_valid_points')

    rgb = intensity = None
    colour_name = next((name for name in COLOUR_FIELDS if name in by_name), None)
    if colour_name is not None:
        field = by_name[colour_name]
        if dtype[colour_name].itemsize != 4 or dtype[colour_name].shape:
            raise CloudError(f'field {colour_name!r} must be one packed 4-byte value, got datatype {field.datatype} '
                             f'count {field.count}', 'colour_field')
        rgb = unpack_rgb(points[colour_name][source_index])
    elif 'intensity' in by_name:
        if dtype['intensity'].shape:
            raise CloudError(f"field 'intensity' has count {by_name['intensity'].count} (expected 1)",
                             'intensity_field')
        with np.errstate(over='ignore'):    # out-of-range values become inf, set to 0 just below
            intensity = points['intensity'][source_index].astype(np.float32)
        intensity[~np.isfinite(intensity)] = 0.0
    return ParsedCloud(xyz=np.ascontiguousarray(xyz[source_index]), rgb=rgb, intensity=intensity,
                       source_index=source_index, frame_id=str(msg.header.frame_id),
                       stamp_ns=stamp_to_ns(msg.header.stamp), num_input_points=height * width)


# --- output cloud -------------------------------------------------------------------------------------------------

# (name, PointField datatype, offset): x y z rgb | label (+3 padding) | instance | score -> point_step 28.
LABELED_FIELDS = (('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8), ('rgb', FLOAT32, 12),
                  ('label', UINT8, 16), ('instance', UINT32, 20), ('score', FLOAT32, 24))
LABELED_POINT_STEP = 28
UNKNOWN_LABEL = 255


def labeled_cloud_dtype() -> np.dtype:
    """Little-endian structured dtype of the output layout."""
    return np.dtype({'names': [n for n, _, _ in LABELED_FIELDS],
                     'formats': [_BUILTIN_DATATYPES[t].newbyteorder('<') for _, t, _ in LABELED_FIELDS],
                     'offsets': [o for _, _, o in LABELED_FIELDS], 'itemsize': LABELED_POINT_STEP})


def labeled_cloud_bytes(xyz: np.ndarray, labels: np.ndarray, instances: np.ndarray, scores: np.ndarray,
                        num_classes: int) -> bytes:
    """Pack (N,3) xyz, (N,) labels, (N,) instances (-1 = none), (N,) scores into the output layout.

    `rgb` is the class colour. Labels outside [0, num_classes) (-1 = nothing predicted) are written as
    UNKNOWN_LABEL (255) in grey; the uint32 `instance` field holds -1 ("no instance") as 0xFFFFFFFF.
    """
    labels = np.asarray(labels)
    colours = class_colour_table(num_classes)       # grey at index C for an unknown label
    known = (labels >= 0) & (labels < num_classes)
    colour_index = np.where(known, labels, num_classes)
    records = np.zeros(len(xyz), dtype=labeled_cloud_dtype())
    for axis, name in enumerate('xyz'):
        records[name] = xyz[:, axis]
    records['rgb'] = pack_rgb(colours[colour_index])
    records['label'] = np.where(known, labels, UNKNOWN_LABEL).astype(np.uint8)
    records['instance'] = np.asarray(instances).astype(np.int64).astype(np.uint32)
    records['score'] = scores
    return records.tobytes()


def labeled_cloud_msg(header: Any, xyz: np.ndarray, labels: np.ndarray, instances: np.ndarray,
                      scores: np.ndarray, num_classes: int) -> Any:
    """rclpy sensor_msgs/PointCloud2 (unorganised, little-endian, RViz-ready) with the output layout."""
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(xyz)
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=1) for n, t, o in LABELED_FIELDS]
    msg.is_bigendian = False
    msg.point_step = LABELED_POINT_STEP
    msg.row_step = LABELED_POINT_STEP * len(xyz)
    msg.is_dense = True
    # array.array avoids rclpy's per-byte validation of list/bytes assignments.
    msg.data = array.array('B', labeled_cloud_bytes(xyz, labels, instances, scores, num_classes))
    return msg
