"""vision_msgs/Detection3DArray for the segmented instances: what a planner reads (issue 23).

One Detection3D per instance:
  id                         the instance id as text: the persistent track id when the pipeline tracks
                             (mpnet_model/infer/tracking.py), else the frame's own id
  results[0].hypothesis      class_id = the class name (e.g. 'chair'), score = the instance's confidence (the mean
                             probability of its class over its points, mpnet_model/infer/instances.py)
  results[0].pose.pose       the box centre and orientation (covariance left 0: not estimated)
  bbox.center                the ORIENTED box: centre, and orientation = yaw about gravity (the frame's +z, or the
                             levelled frame's up when the cloud was gravity-aligned), as a quaternion
  bbox.size                  extent along the box axes (x = the longer horizontal side)
The header is the labelled cloud's (its frame and the input stamp).

`detection_fields(info)` is the mapping as a pure function (plain nested dicts named like the message fields;
tested against the message definitions); `detection_array(header, infos)` builds the message and needs
vision_msgs, which ROS 2 robots have as a system package (`ros-jazzy-vision-msgs`). Without it
`vision_msgs_available()` is False and the node skips the topic with one warning.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from mpnet_ros.markers import _field, _finite_vector

DETECTION3D_ARRAY = 'vision_msgs/msg/Detection3DArray'
# The .msg files rosbags needs to write the type (it is not in rosbags' Jazzy typestore), dependencies first.
VISION_MSG_TYPES = ('ObjectHypothesis', 'ObjectHypothesisWithPose', 'BoundingBox3D', 'Detection3D', 'Detection3DArray')


def vision_msgs_available() -> bool:
    """True when vision_msgs' Python messages import."""
    try:
        from vision_msgs.msg import Detection3DArray  # noqa: F401
    except ImportError:
        return False
    return True


def oriented_box(info: Any) -> tuple[list[float], list[float], list[float]] | None:
    """(centre (3,), orientation quaternion x, y, z, w (4,), size (3,)) of an instance: its oriented box when it has
    one, else its axis-aligned box; None when it has no finite centre. Non-finite sizes become 0."""
    def optional(name):
        value = _field(info, name, default=None)
        return () if value is None else value

    centre = _finite_vector(optional('box_centre'), math.nan)
    size = _finite_vector(optional('box_extent'), 0.0)
    orientation = _field(info, 'box_orientation', default=None)
    if centre is None or size is None or orientation is None or not all(math.isfinite(v) for v in centre):
        centre = _finite_vector(_field(info, 'centre', 'center', default=()), math.nan)
        size = _finite_vector(_field(info, 'extent', 'size', default=(0, 0, 0)), 0.0) or [0.0] * 3
        orientation = (0.0, 0.0, 0.0, 1.0)
    if centre is None or not all(math.isfinite(v) for v in centre):
        return None
    quaternion = np.asarray([float(v) for v in orientation], np.float64)
    norm = np.linalg.norm(quaternion) if quaternion.shape == (4,) and np.isfinite(quaternion).all() else 0.0
    quaternion = quaternion / norm if norm > 0 else np.array([0.0, 0.0, 0.0, 1.0])
    return centre, quaternion.tolist(), [abs(v) for v in size]


def _confidence(info: Any) -> float:
    for name in ('confidence', 'score'):
        value = _field(info, name, default=None)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return 0.0


def detection_fields(info: Any) -> dict | None:
    """The Detection3D of one instance as nested dicts named like the message's fields (None: no finite centre)."""
    box = oriented_box(info)
    if box is None:
        return None
    centre, orientation, size = box
    pose = {'position': dict(zip('xyz', centre)), 'orientation': dict(zip('xyzw', orientation))}
    return {
        'results': [{'hypothesis': {'class_id': str(_field(info, 'class_name', 'name', default='?')),
                                    'score': _confidence(info)},
                     'pose': {'pose': pose, 'covariance': [0.0] * 36}}],
        'bbox': {'center': pose, 'size': dict(zip('xyz', size))},
        'id': str(int(_field(info, 'id', 'instance_id', default=0))),
    }


def _fill(message: Any, fields: dict) -> Any:
    """Set `fields` (nested dicts; lists of floats for arrays) on a message, recursing into sub-messages."""
    for name, value in fields.items():
        if isinstance(value, dict):
            _fill(getattr(message, name), value)
        else:
            setattr(message, name, value)
    return message


def detection_array(header: Any, instances_info: Iterable[Any]) -> Any:
    """vision_msgs/Detection3DArray with one Detection3D per instance that has a finite centre."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    array = Detection3DArray()
    array.header = header
    for info in instances_info:
        fields = detection_fields(info)
        if fields is None:
            continue
        detection = Detection3D()
        detection.header = header
        detection.results = [_fill(ObjectHypothesisWithPose(), result) for result in fields.pop('results')]
        array.detections.append(_fill(detection, fields))
    return array


def register_vision_msgs(typestore: Any) -> bool:
    """Add the vision_msgs types of Detection3DArray to a rosbags typestore (from the installed .msg definitions,
    rosbags' Jazzy store lacks them); False when vision_msgs is not installed."""
    from rosbags.typesys import get_types_from_msg

    folder = vision_msgs_share()
    if folder is None:
        return False
    types = {}
    for name in VISION_MSG_TYPES:
        types.update(get_types_from_msg((folder / 'msg' / f'{name}.msg').read_text(), f'vision_msgs/msg/{name}'))
    typestore.register(types)
    return True


def vision_msgs_share():
    """The installed vision_msgs share folder (its .msg definitions), None when vision_msgs is not installed: from
    the ament index when it knows the package, else beside the Python package (<prefix>/share/vision_msgs, as both a
    ROS install and this venv lay it out)."""
    from pathlib import Path

    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('vision_msgs')))
    except Exception:  # noqa: BLE001 - not indexed (no AMENT_PREFIX_PATH) or no ament_index: look beside the module
        pass
    try:
        import vision_msgs
    except ImportError:
        return None
    candidates += [parent / 'share' / 'vision_msgs' for parent in Path(vision_msgs.__file__).resolve().parents]
    return next((folder for folder in candidates if (folder / 'msg' / 'Detection3D.msg').is_file()), None)
