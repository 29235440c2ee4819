"""mpnet-bag: real shared bags in, new bags out (mcap and sqlite3), stamps kept, written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
from ros_helpers import KINECT_BAG, OUSTER_BAG, labeled_records, read_bag, tiny_checkpoint  # noqa: E402

from mpnet_ros import bag_tool  # noqa: E402
from mpnet_ros.cloud_io import parse_cloud  # noqa: E402
from mpnet_ros.detections import vision_msgs_available  # noqa: E402
from mpnet_ros.params import validate_params  # noqa: E402
from mpnet_ros.pipeline import ScenePipeline, make_segmenter  # noqa: E402

CROP_BOX = [0.0, -10.0, -3.0, 1.5, -8.5, 5.0]  # a wall: a few blocks


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp('bag_model') / 'tiny.pt')


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_ouster_bag_to_mcap(checkpoint, tmp_path):
    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    params = validate_params({'model_path': str(checkpoint), 'backend': 'torch', 'crop_box': CROP_BOX})
    out = tmp_path / 'labelled'
    summary = bag_tool.segment_bag(OUSTER_BAG, out, params, storage='mcap', progress=False)
    assert summary.frames_in == summary.frames_out == 3 and summary.bad_frames == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['labelled']  # no staging folder left behind
    assert list(out.glob('*.mcap'))

    inputs = read_bag(OUSTER_BAG)
    reference = ScenePipeline(params, segmenter=None)
    expected = {_stamp(msg): (log_time, len(reference.filter_frame(parse_cloud(msg)).xyz))
                for _, log_time, _, msg in inputs}
    written = read_bag(out)
    by_topic: dict[str, list] = {}
    for topic, log_time, _, msg in written:
        by_topic.setdefault(topic, []).append((log_time, msg))
    detections = ['/mpnet_segment/detections'] if vision_msgs_available() else []     # tests/test_detections.py
    assert sorted(by_topic) == [*detections, '/mpnet_segment/instances', '/mpnet_segment/labeled_cloud',
                                '/ouster/points']
    for log_time, cloud in by_topic['/mpnet_segment/labeled_cloud']:
        input_log_time, count = expected[_stamp(cloud)]  # header stamp of the input frame
        assert log_time == input_log_time and cloud.width == count and cloud.header.frame_id == 'os_lidar'
        assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb', 'label', 'instance', 'score']
    for log_time, markers in by_topic['/mpnet_segment/instances']:
        assert markers.markers[0].action == 3  # DELETEALL
        assert expected[_stamp(markers.markers[0])][0] == log_time
    assert len(by_topic['/ouster/points']) == 3


def test_cli_kinect_to_sqlite3_and_refuses_existing_output(checkpoint, tmp_path, capsys):
    if not KINECT_BAG.exists():
        pytest.skip(f'shared data not found at {KINECT_BAG}')
    out = tmp_path / 'kinect_out'
    argv = [str(KINECT_BAG), str(out), '--storage', 'sqlite3', '--model', str(checkpoint), '--voxel-size', '0.05',
            '--no-copy-input', '--quiet']
    assert bag_tool.main(argv) == 0
    assert '3/3 frames segmented' in capsys.readouterr().out
    assert list(out.glob('*.db3'))
    written = read_bag(out)
    clouds = [msg for topic, _, _, msg in written if topic.endswith('labeled_cloud')]
    inputs = [msg for _, _, _, msg in read_bag(KINECT_BAG)]
    assert [_stamp(c) for c in clouds] == [_stamp(m) for m in inputs]
    # Voxel down-sampling only thins what is segmented: every valid input point comes back labelled.
    assert [c.width for c in clouds] == [len(parse_cloud(m)) for m in inputs]
    # Each frame's labels and instances are the library's for the parameters the command line asked for.
    params = validate_params({'model_path': str(checkpoint), 'backend': 'torch', 'voxel_size': 0.05})
    segmenter = make_segmenter(params)
    for cloud, msg in zip(clouds, inputs):
        pipeline = ScenePipeline(params, segmenter, enforce_budget=False)     # as the bag tool: every frame whole
        pipeline.add(parse_cloud(msg))
        expected = pipeline.process(pipeline.window.snapshot())
        records = labeled_records(cloud)
        np.testing.assert_array_equal(records['label'], expected.labels)
        np.testing.assert_array_equal(records['instance'].astype(np.int64), expected.instances.astype(np.int64) % 2**32)

    assert bag_tool.main(argv) == 2  # output exists: refused, nothing overwritten
    assert bag_tool.main([str(KINECT_BAG), str(tmp_path / 'x'), '--model', str(tmp_path / 'missing.pt')]) == 2
    assert not Path(tmp_path / 'x').exists()
