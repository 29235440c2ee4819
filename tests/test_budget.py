"""Bounded work per frame: block estimates against the real block partition, the crop to the nearest range, the
sane-extent check, the measured cost per block, and the pipeline's crop / refuse behaviour and memory after a
large frame (measured)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from mpnet_model.data.blocks import partition_blocks
from mpnet_model.infer.budget import (
    BlockCost,
    ExtentError,
    bucket_weights,
    calibrate,
    check_extent,
    estimate_blocks,
    estimate_load,
    plan_frame,
    release_memory,
    segmenter_weights,
)


def blocks_of(xyz, min_points=20):
    return len(partition_blocks(xyz, 1.0, 0.5, min_points).offsets) - 1


@pytest.mark.parametrize('extent, count, min_points', [
    ((0.7, 0.7, 1.0), 500, 1), ((2.0, 2.0, 1.0), 4000, 20), ((7.3, 4.1, 3.0), 20000, 20),
    ((30.0, 30.0, 3.0), 50000, 20), ((30.0, 30.0, 3.0), 50000, 100)])
def test_estimate_equals_the_block_partition(extent, count, min_points):
    xyz = np.random.default_rng(count).uniform(0, extent, (count, 3)).astype(np.float32)
    assert estimate_blocks(xyz, 1.0, 0.5, min_points) == blocks_of(xyz, min_points)


def test_estimate_on_a_real_scan():
    pytest.importorskip('rosbags')
    from ros_helpers import OUSTER_BAG, read_bag

    from mpnet_ros.cloud_io import parse_cloud

    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    xyz = parse_cloud(read_bag(OUSTER_BAG)[0][3]).xyz
    assert estimate_blocks(xyz, 1.0, 0.5, 20) == blocks_of(xyz)


def test_plan_crops_to_the_nearest_cells_within_the_cap():
    xyz = np.random.default_rng(0).uniform((-30, -30, 0), (30, 30, 3), (200_000, 3)).astype(np.float32)
    origin = np.array([5.0, -3.0, 1.0])
    plan = plan_frame(xyz, origin, 85, 1.0, 0.5, 20)
    assert not plan.fits and plan.blocks == blocks_of(xyz) > 10_000
    kept = xyz[plan.keep]
    assert 0 < plan.kept_blocks <= 85 and blocks_of(kept) <= 85
    ranges = np.hypot(xyz[:, 0] - origin[0], xyz[:, 1] - origin[1])
    # Nearest first (cell centres, so up to a cell diagonal of slack).
    assert ranges[plan.keep].max() <= ranges[~plan.keep].min() + 0.5 * np.sqrt(2) + 1e-6
    assert abs(plan.radius - ranges[plan.keep].max()) < 0.5
    assert plan_frame(xyz, origin, 20_000, 1.0, 0.5, 20).fits


def test_plan_bounds_the_grid_of_a_sparse_far_cloud():
    rng = np.random.default_rng(1)
    near = rng.uniform((0, 0, 0), (2, 2, 1), (3000, 3))
    far = rng.uniform((900, 900, 0), (902, 902, 1), (3000, 3))
    xyz = np.concatenate([near, far]).astype(np.float32)
    plan = plan_frame(xyz, np.zeros(3), 1000, 1.0, 0.5, 20, max_grid_cells=100_000)
    assert plan.blocks == blocks_of(xyz) < 40 and plan.grid_cells > 3_000_000      # few blocks, a huge grid
    assert not plan.fits and plan.keep[:3000].all() and not plan.keep[3000:].any()


def test_extent_check():
    check_extent(np.array([[999.0, -999.0, 0.0]], dtype=np.float32), 1000.0)
    xyz = np.array([[1.0, 2.0, 3.0], [1e30, 0.0, 0.0], [0.0, -2e3, 0.0]], dtype=np.float32)
    with pytest.raises(ExtentError, match=r'2 of 3 points .* \+-1000 m .* 1e\+30'):
        check_extent(xyz, 1000.0)


def test_block_cost_median_and_cap():
    cost = BlockCost()
    assert cost.cap(1000.0) > 10**12                  # nothing measured yet: no cap
    cost.update(10, 1000.0)                           # 100 ms/block: the first frame sets the shape
    cost.update(10, 500.0)                            # 50: median of 100 and 50
    assert cost.ms_per_block == pytest.approx(75.0) and cost.cap(1000.0) == 13 and cost.cap(10.0) == 1
    cost.update(0, 100.0)                             # ignored
    assert cost.samples == 2


def test_one_odd_frame_does_not_move_the_cost_but_a_lasting_change_does():
    cost = BlockCost(ms_per_block=10.0, window=9)
    for _ in range(4):
        cost.update(100, 1000.0)                      # 10 ms/block
    cost.update(1, 431.8)                             # one degenerate frame: 431.8 ms for "one block"
    assert cost.ms_per_block == pytest.approx(10.0) and cost.cap(1000.0) == 100
    for _ in range(5):
        cost.update(100, 2000.0)                      # the machine got twice as busy, and stays so
    assert cost.ms_per_block == pytest.approx(20.0) and cost.cap(1000.0) == 50


def test_cost_shape_fixed_block_and_point_parts():
    cost = BlockCost(ms_per_block=4.0, ms_per_point=0.002, fixed_ms=50.0)
    assert cost.point_weight == pytest.approx(0.0005)            # 2,000 points cost one block
    load = 100 + cost.point_weight * 20_000                      # 100 blocks of 20,000 points
    assert cost.predict_ms(load) == pytest.approx(50 + 400 + 40)
    assert cost.cap(1000.0) == 237                               # (1000 - 50) // 4
    cost.update(load, 2 * 490.0)                                 # everything twice as slow: scale 1.5 (median)
    assert cost.fixed_ms == pytest.approx(75.0) and cost.ms_per_block == pytest.approx(6.0)
    cost.ms_per_block = 50.0                                     # a plain per-block cost, nothing else
    assert cost.fixed_ms == 0.0 and cost.point_weight == 0.0 and cost.cap(500.0) == 10


def test_load_weights_blocks_by_their_bucket_and_adds_points():
    # Reference: one cell holding 30 points at the origin and one 3 m away holding 600: each cell lies in one
    # existing block of the grid (the 0.5 m stride puts a block origin on it), 30 -> bucket 256, 600 -> 1024.
    xyz = np.concatenate([np.full((30, 3), 0.1), np.full((600, 3), 0.1) + (3.0, 0.0, 0.0)]).astype(np.float32)
    assert estimate_blocks(xyz, 1.0, 0.5, 20) == blocks_of(xyz) == 2
    blocks, load = estimate_load(xyz, 1.0, 0.5, 20, buckets=(256, 512, 1024), point_weight=0.001)
    assert blocks == 2 and load == pytest.approx(256 / 1024 + 1.0 + 0.001 * 630)
    assert estimate_load(xyz, 1.0, 0.5, 20) == (2, 2.0)          # no buckets, no point part: the block count
    np.testing.assert_allclose(bucket_weights(np.array([1, 256, 257, 1024, 5000]), (256, 512, 1024)),
                               [0.25, 0.25, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(bucket_weights(np.array([30, 600, 5000]), (256, 512, 1024), thinning=(1.0, 0.3)),
                               [0.075, 0.3, 1.0])                 # 'adaptive' keeps ~a third of the sparse blocks
    _, thinned = estimate_load(xyz, 1.0, 0.5, 20, buckets=(256, 512, 1024), thinning=(1.0, 0.3))
    assert thinned == pytest.approx(0.3 * (256 / 1024 + 1.0))


def test_plan_counts_points_and_names_a_cell_a_crop_cannot_split():
    rng = np.random.default_rng(0)
    near = rng.uniform((0, 0, 0), (4, 4, 1), (4000, 3))
    plan = plan_frame(near.astype(np.float32), np.zeros(3), 40, 1.0, 0.5, 20, point_weight=0.01)
    kept = near[plan.keep]
    assert not plan.fits and plan.kept_load <= 40 and plan.kept_load == pytest.approx(
        blocks_of(kept) + 0.01 * len(kept))
    one_spot = np.tile([[1.0, 2.0, 0.5]], (500_000, 1)).astype(np.float32)
    plan = plan_frame(one_spot, np.zeros(3), 100, 1.0, 0.5, 20, point_weight=0.01)
    assert not plan.keep.any() and plan.nearest_cell_points == 500_000 and plan.blocks == 1


@pytest.fixture(scope='module')
def tiny_segmenter(tmp_path_factory):
    from ros_helpers import tiny_checkpoint

    from mpnet_model.infer.scene import SceneSegmenter

    path = tiny_checkpoint(tmp_path_factory.mktemp('budget') / 'tiny.pt')
    return SceneSegmenter.from_config('torch', path), path


def test_calibration_measures_the_real_segmenter(tiny_segmenter):
    segmenter, _ = tiny_segmenter
    cost = calibrate(segmenter)
    assert cost.samples == 3 and 0.01 < cost.ms_per_block < 10_000
    assert cost.fixed_ms >= 0 and cost.ms_per_point >= 0 and cost.scale == 1.0


def test_nearest_sampled_point_with_coincident_references(tiny_segmenter):
    """The projection's nearest-reference lookup is the brute-force nearest (reference-computed), also when many
    references coincide (a degenerate cloud made the k-d tree scan all of them for every query)."""
    import torch

    segmenter, _ = tiny_segmenter
    rng = np.random.default_rng(3)
    references = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    references[100:250] = references[7]                           # 151 copies of one point
    queries = rng.uniform(0, 1, (500, 3)).astype(np.float32)
    got = segmenter._nearest(torch.from_numpy(references), torch.from_numpy(queries)).numpy()
    distances = np.linalg.norm(queries[:, None] - references[None], axis=2)
    np.testing.assert_allclose(distances[np.arange(500), got], distances.min(axis=1), atol=1e-6)
    assert not np.isin(got, np.arange(100, 250)).any()            # a copy is represented by its first


def pipeline_for(tiny_segmenter, **values):
    pytest.importorskip('rclpy')
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import ScenePipeline

    segmenter, path = tiny_segmenter
    notices = []
    params = validate_params({'model_path': str(path), 'backend': 'torch', **values})
    pipeline = ScenePipeline(params, segmenter, warn=lambda kind, message: notices.append((kind, message)))
    return pipeline, notices


def parsed(xyz, frame_id='sensor', stamp_ns=1):
    from mpnet_ros.cloud_io import ParsedCloud

    return ParsedCloud(xyz=xyz.astype(np.float32), rgb=None, intensity=None, source_index=np.arange(len(xyz)),
                       frame_id=frame_id, stamp_ns=stamp_ns, num_input_points=len(xyz))


def big_frame(count=300_000, seed=2):
    return np.random.default_rng(seed).uniform((-30, -30, 0), (30, 30, 3), (count, 3)).astype(np.float32)


def test_pipeline_crops_an_oversize_frame_and_says_so(tiny_segmenter):
    pipeline, notices = pipeline_for(tiny_segmenter, processing_budget_ms=500.0)
    pipeline.cost.ms_per_block = 50.0                 # a fixed cost keeps the cap at 10 blocks in this test
    pipeline.add(parsed(big_frame()))
    result = pipeline.process(pipeline.window.snapshot())
    segmenter = pipeline.segmenter
    _, load = estimate_load(result.xyz, segmenter.block_size, segmenter.stride, segmenter.min_block_points,
                            **segmenter_weights(segmenter))
    assert result.cropped_from == 300_000 and 0 < len(result.xyz) < 5_000 and load <= 10 < result.blocks
    assert len(result.labels) == len(result.xyz) == len(result.instances)
    ((kind, message),) = notices
    assert kind == 'oversize' and 'cropped a frame of 300,000 points' in message
    assert 'cap of 10 blocks' in message and 'to the nearest' in message and 'processing_budget_ms 500' in message


def test_pipeline_refuses_an_oversize_frame_when_told(tiny_segmenter):
    from mpnet_ros.pipeline import FrameRejected

    pipeline, _ = pipeline_for(tiny_segmenter, processing_budget_ms=500.0, oversize_action='refuse')
    pipeline.cost.ms_per_block = 50.0
    pipeline.add(parsed(big_frame()))
    with pytest.raises(FrameRejected, match="refused a frame of 300,000 points.*oversize_action 'refuse'") as info:
        pipeline.process(pipeline.window.snapshot())
    assert info.value.kind == 'oversize' and pipeline.busy() is None


def test_pipeline_rejects_corrupt_extent_without_numpy_warnings(tiny_segmenter):
    from mpnet_ros.pipeline import FrameRejected

    pipeline, _ = pipeline_for(tiny_segmenter)
    xyz = np.random.default_rng(0).uniform(0, 1, (100, 3))
    xyz[7] = (1e30, 0.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                   # any numpy RuntimeWarning fails the test
        with pytest.raises(FrameRejected, match='sane extent') as info:
            pipeline.add(parsed(xyz))
    assert info.value.kind == 'extent'


def test_empty_frame_id_uses_the_fallback_with_a_warning(tiny_segmenter):
    pipeline, notices = pipeline_for(tiny_segmenter, fallback_frame_id='lidar_fallback')
    frame = pipeline.add(parsed(np.random.default_rng(0).uniform(0, 1, (100, 3)), frame_id=''))
    assert frame.frame_id == 'lidar_fallback'
    assert notices == [('frame_id', "cloud with an empty header.frame_id: using fallback_frame_id 'lidar_fallback'")]


def test_memory_returns_after_a_large_frame(tiny_segmenter):
    """RSS after a 2,000,000-point frame (60 x 60 x 3 m, cropped to the cap) is back within 300 MB of the steady
    state of small frames (measured; printed)."""
    psutil = pytest.importorskip('psutil')
    process = psutil.Process()
    pipeline, _ = pipeline_for(tiny_segmenter, processing_budget_ms=2000.0)
    small = np.random.default_rng(5).uniform((0, 0, 0), (3, 3, 2), (20_000, 3))

    def run(xyz, stamp):
        pipeline.add(parsed(xyz, stamp_ns=stamp))
        return pipeline.process(pipeline.window.snapshot())

    for stamp in range(3):
        run(small, stamp)
    steady = process.memory_info().rss
    result = run(big_frame(2_000_000, seed=3), 10)
    assert result.cropped_from == 2_000_000
    del result
    for stamp in range(11, 14):
        run(small, stamp)
    after = process.memory_info().rss
    print(f'RSS steady {steady / 1e6:.0f} MB, after the 2M-point frame and 3 small ones {after / 1e6:.0f} MB '
          f'({(after - steady) / 1e6:+.0f} MB)')
    assert after - steady < 300e6
    assert release_memory()


def good_cloud(seed=5):
    return np.random.default_rng(seed).uniform((-3, -3, 0), (3, 3, 2), (20_000, 3)).astype(np.float32)


def one_spot(count=500_000):
    return np.tile(np.float32([[1.0, 2.0, 0.5]]), (count, 1))


def test_one_degenerate_cloud_does_not_crop_the_next_good_one(tiny_segmenter):
    """After a valid cloud of 500,000 points at one coordinate (segmented whole at its cost, or refused naming
    why when its predicted cost is over the budget), the next good 20,000-point cloud is segmented whole within the
    budget. The budget is 4x the good cloud's predicted cost: the degenerate cloud's time as the cost of "one block"
    (what the moving average took in before) would cap the good cloud to a few of its 121 blocks."""
    import time

    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import FrameRejected, ScenePipeline

    segmenter, path = tiny_segmenter
    cost = calibrate(segmenter)
    _, good_load = estimate_load(good_cloud(), 1.0, 0.5, segmenter.min_block_points, point_weight=cost.point_weight,
                                 **segmenter_weights(segmenter))
    budget = 4 * cost.predict_ms(good_load)
    params = validate_params({'model_path': str(path), 'backend': 'torch', 'processing_budget_ms': budget})
    pipeline = ScenePipeline(params, segmenter)
    pipeline.cost = cost
    start = time.perf_counter()
    segmenter.segment(one_spot())
    poisoned_ms_per_block = (time.perf_counter() - start) * 1e3      # one block, as the old estimate saw it

    def run(xyz, stamp):
        pipeline.add(parsed(xyz, stamp_ns=stamp))
        return pipeline.process(pipeline.window.snapshot())

    first = run(good_cloud(), 1)
    try:
        degenerate = run(one_spot(), 2)
        assert degenerate.cropped_from == 0 and len(degenerate.labels) == 500_000
        outcome = f'segmented in {degenerate.timings["segment_ms"]:.0f} ms'
    except FrameRejected as refused:
        assert 'the cell nearest the sensor alone holds 500,000 points' in str(refused)
        outcome = 'refused'
    after = run(good_cloud(6), 3)
    assert first.cropped_from == 0 and after.cropped_from == 0 and len(after.xyz) == 20_000
    print(f'budget {budget:.0f} ms: good cloud {first.timings["segment_ms"]:.0f} ms, degenerate cloud {outcome} '
          f'(predicted {cost.predict_ms(1 + cost.point_weight * 500_000):.0f} ms, {poisoned_ms_per_block:.0f} ms '
          f'alone), next good cloud {after.timings["segment_ms"]:.0f} ms, whole')
    assert poisoned_ms_per_block * 121 > budget           # what the test guards against: the old estimate crops


def test_cost_survives_a_rebuild_unless_model_or_device_change(tiny_segmenter):
    from mpnet_ros.params import validate_params

    pipeline, _ = pipeline_for(tiny_segmenter)
    pipeline.calibrate()
    segmenter, path = tiny_segmenter
    values = {'model_path': str(path), 'backend': 'torch'}
    rebuilt = pipeline.reconfigured(validate_params({**values, 'cluster_bandwidth': 1.5}), segmenter)
    assert rebuilt.cost is pipeline.cost and rebuilt.prepare_rate is pipeline.prepare_rate
    other_layout = pipeline.reconfigured(validate_params({**values, 'block_layout': 'grid'}), segmenter)
    assert other_layout.cost is not pipeline.cost and other_layout.cost.ms_per_block is None


def test_a_cloud_whose_nearest_cell_alone_is_over_budget_is_refused_naming_why(tiny_segmenter):
    from mpnet_ros.pipeline import FrameRejected

    pipeline, _ = pipeline_for(tiny_segmenter, processing_budget_ms=500.0)
    pipeline.cost = BlockCost(ms_per_block=1.0, ms_per_point=0.01)   # 500,000 points: 5,000 ms
    pipeline.add(parsed(one_spot()))
    with pytest.raises(FrameRejected, match=r'refused a frame of 500,000 points.*predicted 5001 ms.*the cell '
                                            r'nearest the sensor alone holds 500,000 points') as info:
        pipeline.process(pipeline.window.snapshot())
    assert info.value.kind == 'oversize'


def test_a_cost_measured_far_too_high_recovers_from_the_frames(tiny_segmenter):
    """A calibration on a thrashing machine (fixed part alone over the budget) must not refuse every frame
    forever: the nearest cell is segmented anyway, and the median follows the measured frames within 3 frames."""
    pipeline, notices = pipeline_for(tiny_segmenter, processing_budget_ms=1000.0)
    pipeline.cost = BlockCost(ms_per_block=291.0, ms_per_point=0.00166, fixed_ms=1776.0)
    pipeline.cost.prime(291.0, 0.00166, 1776.0, weight=2)
    cube = np.random.default_rng(0).uniform(0, 1, (2000, 3))
    kept = []
    for stamp in range(5):
        pipeline.add(parsed(cube, stamp_ns=stamp + 1))
        kept.append(len(pipeline.process(pipeline.window.snapshot()).xyz))
    assert 0 < kept[0] < 2000 and kept[-1] == 2000, kept
    assert 'the nearest cell only' in notices[0][1]
