"""visualization_msgs/MarkerArray for the segmented instances (ROS message building only).

The array starts with a DELETEALL marker (so boxes of instances that vanished disappear), then per instance a
CUBE and a TEXT_VIEW_FACING label above it. The cube is the instance's oriented box (yaw from its footprint about
gravity, the same box as on `~/detections`, mpnet_ros/detections.py), or its axis-aligned box when it has none.
Marker ids are the instance ids (persistent across frames when the pipeline tracks them), colours follow the id,
and every marker has a lifetime, so boxes vanish in RViz when no newer array arrives (the node stopped, or input
stopped). No field is ever NaN.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mpnet_model.data.classes import instance_colour_table

MIN_EXTENT = 0.02      # [m] RViz rejects zero-size cubes
TEXT_HEIGHT = 0.25     # [m]
BOX_ALPHA = 0.35


def _field(info: Any, *names: str, default: Any = None) -> Any:
    """Read the first present of `names` from a dict or an object (instances_info entries may be either)."""
    for name in names:
        if isinstance(info, dict) and name in info:
            return info[name]
        if not isinstance(info, dict) and hasattr(info, name):
            return getattr(info, name)
    return default


def instance_colour(instance_id: int) -> tuple[float, float, float]:
    """The instance's RGB in [0, 1]: the same colour as in the package's PNG renders."""
    return tuple(float(c) / 255.0 for c in instance_colour_table([instance_id])[0])


def _finite_vector(values: Any, fallback: float) -> list[float] | None:
    try:
        vector = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if len(vector) != 3:
        return None
    return [v if math.isfinite(v) else fallback for v in vector]


def instance_markers(header: Any, instances_info: Iterable[Any], namespace: str = 'mpnet',
                     lifetime_s: float = 0.0) -> Any:
    """MarkerArray: DELETEALL, then a box and a text label per instance that has a finite centre.

    lifetime_s: how long RViz shows each marker without a refresh (0 = forever)."""
    from visualization_msgs.msg import Marker, MarkerArray

    lifetime_sec, lifetime_nsec = divmod(int(round(max(lifetime_s, 0.0) * 1e9)), 1_000_000_000)

    array = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    array.markers.append(clear)
    from mpnet_ros.detections import oriented_box

    for info in instances_info:
        instance_id = int(_field(info, 'id', 'instance_id', default=0))
        box_pose = oriented_box(info)
        if box_pose is None:
            continue  # nowhere to draw it
        centre, orientation, extent = box_pose
        extent = [max(abs(v), MIN_EXTENT) for v in extent]
        class_name = str(_field(info, 'class_name', 'name', default='?'))
        point_count = int(_field(info, 'point_count', 'num_points', 'count', default=0))
        r, g, b = instance_colour(instance_id)

        box = Marker()
        box.header = header
        box.ns, box.id = f'{namespace}/boxes', instance_id
        box.type, box.action = Marker.CUBE, Marker.ADD
        box.pose.position.x, box.pose.position.y, box.pose.position.z = centre
        (box.pose.orientation.x, box.pose.orientation.y, box.pose.orientation.z,
         box.pose.orientation.w) = orientation
        box.scale.x, box.scale.y, box.scale.z = extent
        box.color.r, box.color.g, box.color.b, box.color.a = r, g, b, BOX_ALPHA
        box.lifetime.sec, box.lifetime.nanosec = lifetime_sec, lifetime_nsec
        array.markers.append(box)

        text = Marker()
        text.header = header
        text.ns, text.id = f'{namespace}/labels', instance_id
        text.type, text.action = Marker.TEXT_VIEW_FACING, Marker.ADD
        text.pose.position.x, text.pose.position.y = centre[0], centre[1]
        text.pose.position.z = centre[2] + extent[2] / 2 + TEXT_HEIGHT
        text.pose.orientation.w = 1.0
        text.scale.z = TEXT_HEIGHT
        text.color.r, text.color.g, text.color.b, text.color.a = r, g, b, 1.0
        text.text = f'{class_name} #{instance_id} ({point_count} pts)'
        text.lifetime.sec, text.lifetime.nanosec = lifetime_sec, lifetime_nsec
        array.markers.append(text)
    return array
