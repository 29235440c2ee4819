"""`precision: fp16` end to end on the CPU: the segment node (rclpy + DDS, ONNX Runtime's fp16 graph of the shipped
model), `mpnet-bag` (torch backend under fp16 autocast) and `mpnet-demo` (fp16 graph) each run once with it."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('mpnet_model.infer.merging')
from ros_helpers import OUSTER_BAG, read_bag, spinning, tiny_checkpoint  # noqa: E402

from mpnet_ros import bag_tool  # noqa: E402
from mpnet_ros.cloud_io import parse_cloud  # noqa: E402
from mpnet_ros.demo import main as demo_main  # noqa: E402

needs_bag = pytest.mark.skipif(not OUSTER_BAG.exists(), reason=f'shared data not found at {OUSTER_BAG}')
CROP_BOX = [0.0, -10.0, -3.0, 1.5, -8.5, 5.0]   # a wall of the Ouster street scene: a few blocks


@needs_bag
@pytest.mark.ros
def test_node_segments_an_ouster_frame_with_precision_fp16():
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from mpnet_ros.segment_node import SegmentNode

    topic, _, raw, _ = read_bag(OUSTER_BAG)[0]
    frame = deserialize_message(raw, PointCloud2)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ.get('ROS_DOMAIN_ID', '22')))
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter('backend', value='onnxruntime'), Parameter('precision', value='fp16'),
        Parameter('input_topic', value=topic), Parameter('crop_box', value=CROP_BOX),
        Parameter('processing_budget_ms', value=60_000.0)])
    helper = rclpy.create_node('mpnet_fp16_test', context=context)
    received: list[PointCloud2] = []
    helper.create_subscription(PointCloud2, '/mpnet_segment/labeled_cloud', received.append,
                               QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    publisher = helper.create_publisher(PointCloud2, topic, qos_profile_sensor_data)
    with spinning(context, node, helper):
        deadline = time.monotonic() + 90
        while not received and time.monotonic() < deadline:
            publisher.publish(frame)          # best effort: repeat until discovery is done and a result is back
            time.sleep(1.0)
        assert received, 'no labelled cloud from the node with precision fp16'
        cloud = received[0]
        expected = node.pipeline.filter_frame(parse_cloud(frame)).xyz
        assert cloud.width == len(expected) > 500
        labels = np.frombuffer(bytes(cloud.data), np.uint8).reshape(-1, cloud.point_step)[:, 16]
        assert labels.max() < 13 and node.params.precision == 'fp16'


@needs_bag
def test_bag_tool_with_precision_fp16_on_the_torch_backend(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / 'tiny.pt')
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(f'/**:\n  ros__parameters:\n    crop_box: {CROP_BOX}\n')
    out = tmp_path / 'labelled'
    assert bag_tool.main([str(OUSTER_BAG), str(out), '--model', str(checkpoint), '--precision', 'fp16',
                          '--params-file', str(params_file), '--quiet']) == 0
    clouds = [msg for topic, _, _, msg in read_bag(out) if topic == '/mpnet_segment/labeled_cloud']
    assert len(clouds) == 3 and all(cloud.width > 100 for cloud in clouds)


def test_demo_with_precision_fp16(tmp_path, capsys):
    assert demo_main(['--shared', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out'), '--skip-real',
                      '--room-density', '120', '--precision', 'fp16']) == 0
    assert 'precision fp16' in capsys.readouterr().out
    assert (tmp_path / 'out' / 'generated_room.png').is_file()
