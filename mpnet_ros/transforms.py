"""Where a cloud's points are in the fixed frame: the transform lookup the pipeline is given (injected).

`TransformSource` is the interface: `lookup(target_frame, source_frame, stamp_ns) -> (4, 4) matrix`, raising
`TransformUnavailable`. On a robot the node builds `Tf2Transforms` (tf2_ros's Buffer and TransformListener) when
tf2_ros is importable; tests and offline tools pass `KnownPoses`, a table of sensor poses given per stamp (no tree,
no interpolation: it is not a tf2 replacement, it only serves poses that are known exactly).
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mpnet_ros.accumulate import transform_matrix


class TransformUnavailable(LookupError):
    """No transform between the two frames at that stamp; the message says which."""


class TransformSource(Protocol):
    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int) -> np.ndarray:
        """(4, 4) matrix mapping points from `source_frame` to `target_frame` at `stamp_ns`."""


class KnownPoses:
    """Poses of sensor frames in one fixed frame, known per stamp (exact match), e.g. from a simulation or a
    trajectory file. `add(frame, stamp_ns, matrix)`; `lookup(fixed, frame, stamp_ns)`."""

    def __init__(self, fixed_frame: str):
        self.fixed_frame = fixed_frame
        self._poses: dict[tuple[str, int], np.ndarray] = {}

    def add(self, frame_id: str, stamp_ns: int, matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f'pose of {frame_id!r} at {stamp_ns} must be a finite (4, 4) matrix')
        self._poses[(frame_id, int(stamp_ns))] = matrix

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int) -> np.ndarray:
        if target_frame != self.fixed_frame:
            raise TransformUnavailable(f'only poses in {self.fixed_frame!r} are known, not {target_frame!r}')
        try:
            return self._poses[(source_frame, int(stamp_ns))]
        except KeyError:
            raise TransformUnavailable(f'no pose of {source_frame!r} in {target_frame!r} at {stamp_ns} ns') from None


class Tf2Transforms:
    """tf2_ros lookups for a node (non-blocking: a transform not yet in the buffer is unavailable)."""

    def __init__(self, node: Any, tf2_ros: Any):
        from rclpy.time import Time

        self._tf2_ros, self._time = tf2_ros, Time
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    @classmethod
    def from_buffer(cls, buffer: Any, tf2_ros: Any) -> Tf2Transforms:
        """Lookups in a filled buffer, without a listener (offline)."""
        from rclpy.time import Time

        source = cls.__new__(cls)
        source._tf2_ros, source._time, source.buffer, source.listener = tf2_ros, Time, buffer, None
        return source

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int) -> np.ndarray:
        try:
            stamped = self.buffer.lookup_transform(target_frame, source_frame, self._time(nanoseconds=stamp_ns))
        except self._tf2_ros.TransformException as exc:
            raise TransformUnavailable(f'no transform {source_frame!r} -> {target_frame!r}: {exc}') from exc
        t, q = stamped.transform.translation, stamped.transform.rotation
        return transform_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def bag_transforms(bag_dir: Any) -> Tf2Transforms:
    """Offline tf2: a `tf2_ros.Buffer` (no node) holding every /tf and /tf_static transform of a rosbag2 folder,
    so a bag's clouds are looked up with tf2's own chaining and interpolation (`mpnet-bag --fixed-frame`)."""
    from pathlib import Path

    import tf2_ros
    from geometry_msgs.msg import TransformStamped
    from rclpy.duration import Duration
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(bag_dir)]) as reader:
        buffer = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(reader.duration) + 10**10))
        connections = [c for c in reader.connections if c.topic in ('/tf', '/tf_static')]
        for connection, _, raw in reader.messages(connections=connections):
            for item in reader.deserialize(raw, connection.msgtype).transforms:
                stamped = TransformStamped()
                stamped.header.frame_id, stamped.child_frame_id = item.header.frame_id, item.child_frame_id
                stamped.header.stamp.sec, stamped.header.stamp.nanosec = item.header.stamp.sec, \
                    item.header.stamp.nanosec
                t, q = item.transform.translation, item.transform.rotation
                stamped.transform.translation.x, stamped.transform.translation.y = t.x, t.y
                stamped.transform.translation.z = t.z
                stamped.transform.rotation.x, stamped.transform.rotation.y = q.x, q.y
                stamped.transform.rotation.z, stamped.transform.rotation.w = q.z, q.w
                if connection.topic == '/tf_static':
                    buffer.set_transform_static(stamped, 'bag')
                else:
                    buffer.set_transform(stamped, 'bag')
    return Tf2Transforms.from_buffer(buffer, tf2_ros)


def tf2_transforms(node: Any) -> Tf2Transforms | None:
    """Tf2Transforms for `node`, or None when tf2_ros is not importable (plain venvs)."""
    try:
        import tf2_ros
    except ImportError:
        return None
    return Tf2Transforms(node, tf2_ros)
