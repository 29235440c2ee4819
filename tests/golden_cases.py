"""The golden real-frame cases: fixed crops of the shared real data run through today's frame path.

Each case returns the per-point (labels, instances) of the shipped model (ONNX Runtime backend, seed 0) plus a
description of its input; `tests/test_golden.py` compares them with `tests/golden/<case>.npz` and
`scripts/regen_goldens.py` rewrites those files deliberately (see tests/golden/README.md).

* office_patch  - `SceneSegmenter` on a 1.5 m x 1.5 m patch of the PCL office scan (Kinect, RGB, z-up), ~54k points;
* kinect_frame  - `SceneSegmenter` on the first Kinect tabletop frame (RGB, z-up), cropped to the table, ~190k points;
* ouster_8m_bag - the `mpnet-bag` CLI on the first Ouster OS-1-128 scan (intensity, no RGB) with the demo's 8 m
  range limit and a crop box on the building front (params file), read back from the output bag, ~2k points.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpnet_model.eval.golden import GoldenReference

DATA = Path(os.environ.get('MPNET_SHARED_DATA', Path(__file__).resolve().parents[2] / 'shared' / 'data'))
GOLDEN_DIR = Path(__file__).resolve().parent / 'golden'
# The shipped model of issues 14 and 16 ('room' input encoding), kept with the goldens it gave (tests/golden/room/):
# models written before issue 22 must keep loading and giving their answers.
ROOM_MODEL = Path(__file__).resolve().parent / 'models' / 'mpnet_synthetic_room.onnx'
GOLDEN_SETS = {'shipped': ('', GOLDEN_DIR), 'room model (issue 16)': (str(ROOM_MODEL), GOLDEN_DIR / 'room')}
SEED = 0

OFFICE_HALF_EXTENT = 0.75                                   # [m] patch half-size around the scan's median x, y
KINECT_BOX = (0.6, -0.6, -0.4, 1.4, 0.3, 0.8)               # z-up xmin ymin zmin xmax ymax zmax [m]
OUSTER_MAX_RANGE = 8.0
OUSTER_BOX = [4.0, -1.5, -3.0, 8.0, 1.5, 5.0]                # sensor frame [m]


def _segmenter(model_path: str = ''):
    from mpnet_model.infer.scene import SceneSegmenter

    # The shipped model; its size filter off: these crops' instances are far below its whole-room class sizes, and
    # the goldens guard the frame path's instances (the filter has its own tests, tests/test_model_values_flow.py).
    return SceneSegmenter.from_config('onnxruntime', model_path, seed=SEED, min_instance_fraction=0)


def _box(xyz: np.ndarray, box) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.all((xyz >= box[:3]) & (xyz <= box[3:]), axis=1)


def office_patch(segmenter=None) -> GoldenReference:
    from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up

    frame = load_pcd(DATA / 'pcl_office1.pcd')
    xyz = optical_to_z_up(frame.xyz)
    centre = np.median(xyz[:, :2], axis=0)
    keep = np.all(np.abs(xyz[:, :2] - centre) < OFFICE_HALF_EXTENT, axis=1)
    result = (segmenter or _segmenter()).segment(xyz[keep], frame.rgb[keep])
    return GoldenReference.from_result(result.labels, result.instances, source='pcl_office1.pcd', path='SceneSegmenter',
                                       crop=f'z-up, |x,y - median| < {OFFICE_HALF_EXTENT} m', points=int(keep.sum()))


def kinect_frame(segmenter=None) -> GoldenReference:
    from mpnet_model.io.pointclouds import optical_to_z_up
    from mpnet_ros.bag_tool import read_bag_clouds

    frame = next(read_bag_clouds(DATA / 'kinect_tabletop_sequence', limit=1))
    xyz = optical_to_z_up(frame.xyz)
    keep = _box(xyz, KINECT_BOX)
    result = (segmenter or _segmenter()).segment(xyz[keep], frame.rgb[keep])
    return GoldenReference.from_result(result.labels, result.instances, source='kinect_tabletop_sequence frame 0',
                                       path='SceneSegmenter', crop=f'z-up box {list(KINECT_BOX)}',
                                       points=int(keep.sum()))


def _first_frame_bag(source: Path, target: Path) -> Path:
    """Copy the first message of the bag's PointCloud2 topic into a new mcap bag (raw CDR bytes, same stamps)."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([source]) as reader, Writer(target, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = next(c for c in reader.connections if c.msgtype == 'sensor_msgs/msg/PointCloud2')
        out = writer.add_connection(connection.topic, connection.msgtype, typestore=get_typestore(Stores.ROS2_JAZZY))
        _, log_time, raw = next(reader.messages(connections=[connection]))
        writer.write(out, log_time, raw)
    return target


def ouster_8m_bag(segmenter=None) -> GoldenReference:
    """The mpnet-bag CLI end to end (params file, output bag); the tool builds its own segmenter, of the model
    `segmenter` was made from (default: the shipped model)."""
    import yaml
    from rosbags.highlevel import AnyReader

    from mpnet_ros import bag_tool
    from mpnet_ros.cloud_io import labeled_cloud_dtype

    with tempfile.TemporaryDirectory(prefix='mpnet-golden-') as scratch:
        scratch = Path(scratch)
        bag = _first_frame_bag(DATA / 'ouster_os1_128', scratch / 'one_frame')
        params = scratch / 'params.yaml'
        params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
            'max_range': OUSTER_MAX_RANGE, 'crop_box': OUSTER_BOX, 'backend': 'onnxruntime',
            'model_path': '' if segmenter is None else str(segmenter.backend.source),
            # A 2k-point crop: every instance is far below the whole-room class sizes of the model's size filter.
            'min_instance_fraction': 0.0}}}))
        code = bag_tool.main([str(bag), str(scratch / 'out'), '--params-file', str(params), '--no-copy-input',
                              '--quiet'])
        if code != 0:
            raise RuntimeError(f'mpnet-bag exited with {code}')
        with AnyReader([scratch / 'out']) as reader:
            connections = [c for c in reader.connections if c.topic.endswith('/labeled_cloud')]
            clouds = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=connections)]
    if len(clouds) != 1:
        raise RuntimeError(f'mpnet-bag wrote {len(clouds)} labelled clouds, expected 1')
    records = np.frombuffer(clouds[0].data.tobytes(), dtype=labeled_cloud_dtype())
    labels = np.where(records['label'] == 255, -1, records['label'].astype(np.int64))
    instances = records['instance'].astype(np.int64)
    instances[instances == 0xFFFFFFFF] = -1
    return GoldenReference.from_result(labels, instances, source='ouster_os1_128 frame 0', path='mpnet-bag CLI',
                                       crop=f'max_range {OUSTER_MAX_RANGE} m, crop_box {OUSTER_BOX}, '
                                            'min_instance_fraction 0',
                                       points=int(len(records)))


CASES: dict[str, Callable[..., GoldenReference]] = {
    'office_patch': office_patch,
    'kinect_frame': kinect_frame,
    'ouster_8m_bag': ouster_8m_bag,
}


def golden_path(case: str, folder: Path = GOLDEN_DIR) -> Path:
    return folder / f'{case}.npz'
