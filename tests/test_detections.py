"""~/detections (vision_msgs/Detection3DArray): the instance -> Detection3D mapping against the message definitions,
the message itself (CDR round trip through rosbags' reading of the .msg files), the oriented marker boxes, mpnet-bag's
detections topic, and the node over real DDS with vision_msgs and, in a subprocess where it cannot be imported,
without it (one warning, no topic, the node runs on)."""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
from ros_helpers import OUSTER_BAG, labeled_records, spinning, tiny_checkpoint, to_rclpy, wait_for, xyz_cloud  # noqa: E402

from mpnet_model.infer.instances import yaw_quaternion  # noqa: E402
from mpnet_model.infer.scene import InstanceInfo  # noqa: E402
from mpnet_ros.detections import (  # noqa: E402
    detection_array,
    detection_fields,
    register_vision_msgs,
    vision_msgs_available,
)

pytestmark = pytest.mark.ros
needs_vision_msgs = pytest.mark.skipif(not vision_msgs_available(),
                                       reason='vision_msgs is not importable here (ros-jazzy-vision-msgs)')


def _info(instance_id=7, yaw=0.6, confidence=0.83):
    return InstanceInfo(id=instance_id, class_id=8, class_name='chair', centre=np.array([1.0, 2.0, 0.4]),
                        extent=np.array([0.9, 0.9, 0.8]), num_points=321, score=0.9, confidence=confidence,
                        box_centre=np.array([1.05, 2.01, 0.41]), box_extent=np.array([0.6, 0.5, 0.8]), box_yaw=yaw,
                        box_orientation=yaw_quaternion(yaw))


@pytest.fixture(scope='module')
def typestore():
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    if not register_vision_msgs(store):
        pytest.skip('vision_msgs .msg definitions are not installed')
    return store


def _check_against_definition(value, typename, store, path=''):
    """`value` (nested dicts / lists) uses only fields of `typename` with matching kinds; returns the definition's
    field names that `value` leaves out."""
    from rosbags.typesys.store import Nodetype

    fields = dict(store.fielddefs[typename][1])
    unknown = set(value) - set(fields)
    assert not unknown, f'{path or typename}: fields {sorted(unknown)} are not in {typename}'
    for name, item in value.items():
        node, detail = fields[name]
        where = f'{path}.{name}'
        if node == Nodetype.NAME:
            assert isinstance(item, dict), where
            assert not _check_against_definition(item, detail, store, where), f'{where}: incomplete'
        elif node == Nodetype.SEQUENCE:
            (element, element_type), _ = detail
            assert element == Nodetype.NAME and isinstance(item, list) and item, where
            for k, entry in enumerate(item):
                assert not _check_against_definition(entry, element_type, store, f'{where}[{k}]')
        elif node == Nodetype.ARRAY:
            (_, (base, _)), length = detail
            assert len(item) == length and all(isinstance(v, float) for v in item), where
        else:
            base = detail[0]
            assert isinstance(item, str) if base == 'string' else isinstance(item, float), (where, base, item)
    return set(fields) - set(value)


def test_the_mapping_fills_every_field_of_detection3d(typestore):
    fields = detection_fields(_info())
    assert _check_against_definition(fields, 'vision_msgs/msg/Detection3D', typestore) == {'header'}  # the array's
    assert fields['id'] == '7'                                                    # the (track) id as text
    assert fields['results'][0]['hypothesis'] == {'class_id': 'chair', 'score': 0.83}
    centre = fields['bbox']['center']
    assert [centre['position'][k] for k in 'xyz'] == pytest.approx([1.05, 2.01, 0.41])   # the oriented box
    assert [fields['bbox']['size'][k] for k in 'xyz'] == pytest.approx([0.6, 0.5, 0.8])
    q = [centre['orientation'][k] for k in 'xyzw']
    assert q == pytest.approx([0.0, 0.0, math.sin(0.3), math.cos(0.3)])
    assert fields['results'][0]['pose']['pose'] == centre


def test_the_mapping_falls_back_to_the_axis_aligned_box_and_skips_what_cannot_be_placed():
    fields = detection_fields({'id': 3, 'class_name': 'wall', 'centre': [0.0, 1.0, 2.0], 'extent': [4.0, 0.1, 3.0],
                               'score': 0.5})
    assert fields['bbox']['center']['orientation'] == {'x': 0.0, 'y': 0.0, 'z': 0.0, 'w': 1.0}
    assert fields['bbox']['size'] == {'x': 4.0, 'y': 0.1, 'z': 3.0}
    assert fields['results'][0]['hypothesis']['score'] == 0.5                  # no confidence: the mean score
    assert detection_fields({'id': 1, 'centre': [math.nan, 0, 0]}) is None
    nan_confidence = detection_fields(_info(confidence=math.nan))
    assert nan_confidence['results'][0]['hypothesis']['score'] == 0.9


@needs_vision_msgs
def test_the_message_round_trips_through_cdr_and_the_bag_typestore(typestore):
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    header = Header(frame_id='os_lidar')
    header.stamp.sec, header.stamp.nanosec = 12, 34
    infos = [_info(7, 0.6), _info(9, -1.2), InstanceInfo(4, 2, 'wall', np.array([math.inf, 0, 0]), np.ones(3),
                                                          10, 0.5)]
    message = detection_array(header, infos)
    assert [d.id for d in message.detections] == ['7', '9']                  # the unplaceable one is skipped
    decoded = typestore.deserialize_cdr(serialize_message(message), 'vision_msgs/msg/Detection3DArray')
    assert decoded.header.frame_id == 'os_lidar' and decoded.header.stamp.sec == 12
    second = decoded.detections[1]
    assert second.header.frame_id == 'os_lidar' and second.results[0].hypothesis.class_id == 'chair'
    assert second.bbox.center.orientation.z == pytest.approx(math.sin(-0.6))
    assert second.bbox.size.x == pytest.approx(0.6) and len(second.results[0].pose.covariance) == 36


def test_markers_draw_the_same_oriented_boxes():
    from std_msgs.msg import Header

    from mpnet_ros.markers import instance_markers

    box = instance_markers(Header(frame_id='map'), [_info(5, 0.6)]).markers[1]
    assert (box.pose.orientation.z, box.pose.orientation.w) == pytest.approx((math.sin(0.3), math.cos(0.3)))
    assert (box.pose.position.x, box.scale.x, box.scale.y) == pytest.approx((1.05, 0.6, 0.5))


@needs_vision_msgs
def test_mpnet_bag_writes_the_detections(tmp_path):
    from ros_helpers import read_bag

    from mpnet_ros import bag_tool
    from mpnet_ros.params import validate_params

    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    params = validate_params({'model_path': str(checkpoint), 'backend': 'torch', 'min_instance_points': 5,
                              'crop_box': [0.0, -10.0, -3.0, 1.5, -8.5, 5.0]})
    bag_tool.segment_bag(OUSTER_BAG, tmp_path / 'out', params, progress=False, copy_input=False)
    by_topic: dict[str, list] = {}
    for topic, log_time, _, msg in read_bag(tmp_path / 'out'):
        by_topic.setdefault(topic, []).append((log_time, msg))
    assert len(by_topic['/mpnet_segment/detections']) == 3
    for (log_time, detections), (cloud_time, cloud) in zip(by_topic['/mpnet_segment/detections'],
                                                           by_topic['/mpnet_segment/labeled_cloud']):
        records = labeled_records(cloud)
        ids = set(np.unique(records['instance'][records['instance'] != 0xFFFFFFFF]).tolist())
        assert log_time == cloud_time and detections.header.stamp == cloud.header.stamp
        assert {int(d.id) for d in detections.detections} == ids and ids


# --- the node over real DDS -------------------------------------------------------------------------------------

def _office_patch():
    from ros_helpers import SHARED

    from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up

    frame = load_pcd(SHARED / 'data' / 'pcl_office1.pcd')
    xyz = optical_to_z_up(frame.xyz)
    centre = np.median(xyz[:, :2], axis=0)
    keep = np.all(np.abs(xyz[:, :2] - centre) < 0.75, axis=1)
    return xyz[keep][::2].astype(np.float32)


@needs_vision_msgs
def test_node_publishes_detections_over_dds(tmp_path):
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from scipy.spatial.transform import Rotation
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray

    from mpnet_ros.segment_node import SegmentNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ['ROS_DOMAIN_ID']))
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter('input_topic', value='/detections_test/in'), Parameter('sensor_kind', value='static'),
        Parameter('processing_budget_ms', value=600_000.0), Parameter('min_instance_fraction', value=0.0)])
    client = rclpy.create_node('detections_listener', context=context)
    received = {'clouds': [], 'detections': []}
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    client.create_subscription(PointCloud2, '/mpnet_segment/labeled_cloud', received['clouds'].append, reliable)
    client.create_subscription(Detection3DArray, '/mpnet_segment/detections', received['detections'].append, reliable)
    publisher = client.create_publisher(PointCloud2, '/detections_test/in', 1)
    with spinning(context, node, client):
        cloud = to_rclpy(xyz_cloud(_office_patch(), frame_id='map'))
        assert wait_for(lambda: publisher.get_subscription_count() > 0, 20)
        publisher.publish(cloud)
        assert wait_for(lambda: received['clouds'] and received['detections'], 120)
        detections, labelled = received['detections'][0], received['clouds'][0]
        records = labeled_records(labelled)
        ids = np.unique(records['instance'][records['instance'] != 0xFFFFFFFF])
        assert detections.header == labelled.header and len(ids) >= 2
        assert sorted(int(d.id) for d in detections.detections) == sorted(ids.tolist())
        names = set(node.pipeline.class_names)
        up_axes = []
        for detection in detections.detections:
            members = records[records['instance'] == int(detection.id)]
            hypothesis = detection.results[0].hypothesis
            assert hypothesis.class_id in names and 0.0 <= hypothesis.score <= 1.0
            centre = detection.bbox.center.position
            low = np.array([members['x'].min(), members['y'].min(), members['z'].min()])
            high = np.array([members['x'].max(), members['y'].max(), members['z'].max()])
            assert np.all(low - 1e-3 <= [centre.x, centre.y, centre.z]) and np.all([centre.x, centre.y, centre.z]
                                                                                 <= high + 1e-3)
            q = detection.bbox.center.orientation
            assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-6)
            up_axes.append(Rotation.from_quat([q.x, q.y, q.z, q.w]).apply([0.0, 0.0, 1.0]))
        # every box turns about the same up axis: gravity (the cloud was levelled first, gravity_align auto)
        np.testing.assert_allclose(up_axes, np.repeat(up_axes[:1], len(up_axes), axis=0), atol=1e-6)
        assert up_axes[0][2] > math.cos(math.radians(45))


def test_node_without_vision_msgs_runs_with_one_warning_and_no_topic(tmp_path):
    from ros_process import REPO, Client, domain_id, interrupt, output, ros_env, shell

    domain = domain_id()
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    blocked = ("import sys; sys.modules['vision_msgs'] = None; sys.modules['vision_msgs.msg'] = None; "
               'from mpnet_ros.segment_node import main; main(sys.argv)')
    command = (f'exec {sys.executable} -c "{blocked}" --ros-args -r __node:=mpnet_segment '
               f"-r '~/input:=/no_vision/in' -p model_path:={checkpoint} -p backend:=torch -p min_instance_points:=5")
    proc = shell(command, ros_env(domain, tmp_path / 'log'), REPO)
    client = Client(domain, '/no_vision/in')
    try:
        rng = np.random.default_rng(0)
        cloud = to_rclpy(xyz_cloud(rng.uniform([0, 0, 0], [2, 2, 1], (3000, 3)).astype(np.float32)))
        assert client.labelled(cloud, timeout=120, proc=proc) is not None, output(proc)
        time.sleep(1.0)                                                  # discovery of every endpoint
        topics = dict(client.node.get_topic_names_and_types())
        assert '/mpnet_segment/instances' in topics and '/mpnet_segment/labeled_cloud' in topics
        assert '/mpnet_segment/detections' not in topics
        assert proc.poll() is None                                       # still running
    finally:
        client.close()
        code = interrupt(proc)
    text = output(proc)
    assert text.count('vision_msgs is not importable') == 1, text
    assert code in (0, -2, 130), text
