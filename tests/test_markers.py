"""markers: DELETEALL first, one box + label per instance, stable colours, never NaN."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

pytest.importorskip('visualization_msgs.msg')
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from mpnet_ros.markers import MIN_EXTENT, instance_colour, instance_markers  # noqa: E402


@dataclass
class Info:
    id: int
    class_id: int
    class_name: str
    centre: tuple
    extent: tuple
    point_count: int


def _numbers(marker: Marker) -> list[float]:
    p, s, c = marker.pose, marker.scale, marker.color
    return [p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y, p.orientation.z,
            p.orientation.w, s.x, s.y, s.z, c.r, c.g, c.b, c.a]


def test_deleteall_first_then_box_and_label_per_instance():
    header = Header(frame_id='map')
    infos = [Info(3, 8, 'chair', (1.0, 2.0, 0.5), (0.5, 0.6, 1.0), 120),
             {'id': 7, 'class_id': 7, 'class_name': 'table', 'centre': [0, 0, 0.7], 'extent': [1.2, 0.8, 0.1],
              'point_count': 900}]
    markers = instance_markers(header, infos).markers
    assert markers[0].action == Marker.DELETEALL
    assert [m.type for m in markers[1:]] == [Marker.CUBE, Marker.TEXT_VIEW_FACING] * 2
    box, text = markers[1], markers[2]
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == (1.0, 2.0, 0.5)
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((0.5, 0.6, 1.0))
    assert text.pose.position.z > box.pose.position.z + box.scale.z / 2  # label above the box
    assert text.text == 'chair #3 (120 pts)' and 'table #7' in markers[4].text
    assert all(m.header.frame_id == 'map' for m in markers)
    assert box.color.r == pytest.approx(instance_colour(3)[0]) and box.id == text.id == 3


def test_colours_stable_and_distinct():
    assert instance_colour(5) == instance_colour(5)
    colours = {tuple(round(c, 3) for c in instance_colour(i)) for i in range(20)}
    assert len(colours) == 20


def test_never_nan_and_degenerate_boxes_fixed():
    infos = [Info(1, 0, 'wall', (math.nan, 0, 0), (1, 1, 1), 10),      # no place to draw: skipped
             Info(2, 0, 'wall', (1, 1, 1), (math.nan, 0.0, -2.0), 10),  # NaN / zero / negative extents
             Info(3, 0, 'wall', (math.inf, 1, 1), (1, 1, 1), 10),
             {'id': 4, 'centre': None}]
    markers = instance_markers(Header(), infos).markers
    assert len(markers) == 3 and markers[1].id == 2
    for marker in markers:
        assert all(math.isfinite(v) for v in _numbers(marker))
    assert (markers[1].scale.x, markers[1].scale.y, markers[1].scale.z) == pytest.approx((MIN_EXTENT, MIN_EXTENT, 2.0))


def test_empty_instances_still_clears():
    markers = instance_markers(Header(), []).markers
    assert len(markers) == 1 and markers[0].action == Marker.DELETEALL


def test_lifetime_and_persistent_ids_as_marker_ids():
    infos = [Info(1041, 8, 'chair', (1, 2, 0.5), (0.5, 0.5, 1), 300)]
    markers = instance_markers(Header(frame_id='map'), infos, lifetime_s=2.25).markers[1:]
    assert [m.id for m in markers] == [1041, 1041]                       # box and label carry the instance id
    assert all((m.lifetime.sec, m.lifetime.nanosec) == (2, 250_000_000) for m in markers)
    assert (markers[0].color.r, markers[0].color.g, markers[0].color.b) == pytest.approx(instance_colour(1041))
    forever = instance_markers(Header(frame_id='map'), infos).markers[1]
    assert (forever.lifetime.sec, forever.lifetime.nanosec) == (0, 0)
