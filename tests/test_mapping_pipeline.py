"""Mapping mode of the shared pipeline (ROS-free): known poses put a moving sensor's frames into one map, a frame
without a pose is rejected and leaves the map as it was, the block cap bounds each frame's run, runtime changes
keep or rebuild the map, and the RViz config shows the map topic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mpnet_ros.cloud_io import ParsedCloud
from mpnet_ros.params import validate_params
from mpnet_ros.pipeline import FrameRejected, ScenePipeline, make_segmenter
from mpnet_ros.transforms import KnownPoses

REPO = Path(__file__).resolve().parents[1]


def parsed(xyz, stamp_ns):
    return ParsedCloud(xyz=xyz, rgb=None, intensity=np.linspace(0, 1, len(xyz), dtype=np.float32),
                       source_index=np.arange(len(xyz)), frame_id='lidar', stamp_ns=stamp_ns,
                       num_input_points=len(xyz))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from ros_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp('model') / 'tiny.pt')


@pytest.fixture(scope='module')
def frames():
    from test_node_mapping import corridor, frame_points, pose

    scene = corridor(np.random.default_rng(2))
    return [(frame_points(scene, k), pose(k)) for k in range(4)]


def mapping_pipeline(checkpoint, poses, **values):
    params = validate_params({'model_path': str(checkpoint), 'backend': 'torch', 'fixed_frame': 'map',
                              'mapping': True, 'map_voxel_size': 0.1, **values})
    return ScenePipeline(params, make_segmenter(params), transforms=poses, enforce_budget=False)


def test_frames_go_into_one_map_and_a_missing_pose_changes_nothing(checkpoint, frames):
    poses = KnownPoses('map')
    pipeline = mapping_pipeline(checkpoint, poses, window_frames=5)
    assert pipeline.window.snapshot() is None
    for k, (xyz, world_from_sensor) in enumerate(frames):
        poses.add('lidar', 100 + k, world_from_sensor)
        pipeline.add(parsed(xyz, 100 + k))
        window = pipeline.window.snapshot()
        assert window.num_frames == 1                          # mapping integrates each frame once
        result = pipeline.process(window)
        assert result.map is not None and result.frame_id == 'map' and len(result.labels) == len(xyz)
        assert (result.labels >= 0).mean() > 0.95
    mapper = pipeline.mapper
    assert mapper.frame == 4
    # the map holds the frames in the map frame: frame 0's points, moved by its pose, are in it
    xyz0, pose0 = frames[0]
    assert mapper.voxels.find(xyz0 @ pose0[:3, :3].T + pose0[:3, 3])[1].mean() > 0.99
    keys, probs, frame = mapper.voxels.table.keys.copy(), mapper.voxels['probs'].copy(), mapper.frame
    with pytest.raises(FrameRejected, match="no pose of 'lidar' in 'map' at 999 ns") as info:
        pipeline.add(parsed(frames[1][0], 999))
    assert info.value.kind == 'transform'
    assert mapper.frame == frame and pipeline.window.snapshot().stamp_ns == 103   # the last good frame stays
    np.testing.assert_array_equal(mapper.voxels.table.keys, keys)
    np.testing.assert_array_equal(mapper.voxels['probs'], probs)


def test_block_cap_bounds_a_frame_and_the_rest_follows(checkpoint, frames):
    poses = KnownPoses('map')
    pipeline = mapping_pipeline(checkpoint, poses)
    pipeline.enforce_budget = True
    pipeline.cost.ms_per_block = 100.0
    pipeline.params = validate_params({**{k: getattr(pipeline.params, k) for k in ('model_path', 'backend',
                                       'fixed_frame', 'mapping', 'map_voxel_size')}, 'processing_budget_ms': 500.0})
    cap = pipeline.block_cap()
    poses.add('lidar', 1, frames[0][1])
    pipeline.add(parsed(frames[0][0], 1))
    first = pipeline.process(pipeline.window.snapshot()).map
    assert 0 < first.blocks_run <= cap and first.blocks_pending > 0
    pipeline.add(parsed(frames[0][0], 1))
    again = pipeline.process(pipeline.window.snapshot()).map
    assert 0 < again.blocks_run <= cap and again.blocks_pending < first.blocks_pending   # the pending ones next


def test_runtime_changes_keep_or_rebuild_the_map(checkpoint, frames):
    poses = KnownPoses('map')
    pipeline = mapping_pipeline(checkpoint, poses)
    poses.add('lidar', 1, frames[0][1])
    pipeline.add(parsed(frames[0][0], 1))
    pipeline.process(pipeline.window.snapshot())
    mapper, values = pipeline.mapper, {k: getattr(pipeline.params, k) for k in (
        'model_path', 'backend', 'fixed_frame', 'mapping', 'map_voxel_size')}
    bounded = pipeline.reconfigured(validate_params({**values, 'map_radius': 4.0, 'map_dirty_fraction': 1.0}))
    assert bounded.mapper is mapper and mapper.config.radius == 4.0 and mapper.schedule.dirty_fraction == 1.0
    assert len(mapper) > 0
    finer = bounded.reconfigured(validate_params({**values, 'map_voxel_size': 0.05}))
    assert finer.mapper is not mapper and len(finer.mapper) == 0 and finer.mapper.config.voxel_size == 0.05
    rebuilt = make_segmenter(validate_params({**values, 'cluster_bandwidth': 0.4}))
    bandwidth = finer.reconfigured(validate_params({**values, 'map_voxel_size': 0.05, 'cluster_bandwidth': 0.4}),
                                   rebuilt)
    assert bandwidth.mapper is finer.mapper and finer.mapper.segmenter is rebuilt     # same grid: the map stays
    tiles = bandwidth.reconfigured(validate_params({**values, 'map_voxel_size': 0.05, 'block_layout': 'tile'}),
                                   make_segmenter(validate_params({**values, 'block_layout': 'tile'})))
    assert tiles.mapper is not finer.mapper and tiles.mapper.stride == 1.0             # another grid: a new map
    off = finer.reconfigured(validate_params({**values, 'mapping': False}))
    assert off.mapper is None


def test_rviz_shows_the_latched_map_topic():
    config = yaml.safe_load((REPO / 'config' / 'mpnet.rviz').read_text())
    displays = {d['Name']: d for d in config['Visualization Manager']['Displays']}
    topic = displays['Semantic map']['Topic']
    assert topic['Value'] == '/mpnet_segment/map_cloud' and topic['Durability Policy'] == 'Transient Local'
    assert displays['Semantic map']['Color Transformer'] == 'RGB8'          # rgb = class colour
