"""SceneSegmenter on real clouds: every input point gets a label / score / instance, deterministic for a seed,
empty and tiny clouds, lidar clouds without rgb, and the factory."""
from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import exported_small, needs_data, office_cloud, ouster_cloud

from mpnet_model.infer.backends.base import make_backend
from mpnet_model.infer.scene import SceneResult, SceneSegmenter, intensity_to_grey

pytestmark = needs_data


@pytest.fixture(scope='module')
def segmenter():
    return SceneSegmenter(make_backend('onnxruntime', exported_small()[1]), min_instance_points=20)


@pytest.fixture(scope='module')
def office_subset():
    """A 2 m x 1.5 m patch of the PCL office scan (z-up), ~20 blocks: real data, test-sized."""
    xyz, rgb = office_cloud()
    centre = np.median(xyz, axis=0)
    keep = (np.abs(xyz[:, 0] - centre[0]) < 1.0) & (np.abs(xyz[:, 1] - centre[1]) < 0.75)
    keep &= np.random.default_rng(0).random(len(xyz)) < 0.5
    return xyz[keep], rgb[keep]


def test_every_point_labelled_and_consistent(segmenter, office_subset):
    xyz, rgb = office_subset
    result = segmenter.segment(xyz, rgb)
    n = len(xyz)
    assert result.labels.shape == (n,) and result.labels.dtype == np.int32
    assert result.scores.shape == (n,) and result.scores.dtype == np.float32
    assert result.instances.shape == (n,) and result.instances.dtype == np.int32
    assert result.labels.min() >= 0 and result.labels.max() < 13           # every point predicted
    assert np.all((result.scores > 1 / 13 - 1e-6) & (result.scores <= 1))  # arg-max prob is >= 1/C
    ids = np.unique(result.instances[result.instances >= 0])
    np.testing.assert_array_equal(ids, np.arange(len(result.instances_info)))
    for info in result.instances_info:
        members = result.instances == info.id
        assert info.num_points == members.sum() >= 20
        assert info.class_name == segmenter.class_names[info.class_id]
        assert info.class_id == np.bincount(result.labels[members]).argmax()
        np.testing.assert_allclose(info.extent, xyz[members].max(0) - xyz[members].min(0), atol=1e-6)
    sizes = [info.num_points for info in result.instances_info]
    assert sizes == sorted(sizes, reverse=True)
    assert {'blocks', 'inference', 'meanshift', 'merging', 'projection', 'total'} <= set(result.timings)


def test_deterministic_for_a_seed(segmenter, office_subset):
    xyz, rgb = office_subset
    first, second = segmenter.segment(xyz, rgb), segmenter.segment(xyz, rgb)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.instances, second.instances)
    np.testing.assert_array_equal(first.scores, second.scores)


def test_unsampled_points_take_nearest_sampled_point(segmenter):
    # Two dense clusters far apart; duplicate points must get exactly their twin's result.
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.random((3000, 3)) * 0.9, rng.random((3000, 3)) * 0.9 + [3, 0, 0]]).astype(np.float32)
    xyz = np.concatenate([xyz, xyz[:100]])
    result = segmenter.segment(xyz, None, None)
    np.testing.assert_array_equal(result.labels[-100:], result.labels[:100])


def test_lidar_without_rgb(segmenter):
    xyz, intensity = ouster_cloud(15.0)
    anchor = np.median(xyz[:, :2], axis=0)      # a 2 m x 2 m patch of the street scan: a few blocks
    patch = np.all(np.abs(xyz[:, :2] - anchor) < 1.0, axis=1)
    xyz, intensity = xyz[patch], intensity[patch]
    assert len(xyz) > 200
    result = segmenter.segment(xyz, None, intensity)
    assert result.labels.shape == (len(xyz),) and result.labels.min() >= 0


def test_intensity_to_grey_scales_between_percentiles():
    # 0..999 plus one retro-reflector at 1e6: np.percentile (linear) puts the 1st / 99th percentiles at 10 / 990,
    # so 500 -> (500 - 10) / 980 = 0.5 (min-max scaling would give 0.0005), and the ends clip to 0 and 1.
    intensity = np.append(np.arange(1000, dtype=np.float32), np.float32(1e6))
    grey = intensity_to_grey(intensity)
    assert grey.shape == (1001, 3) and grey.dtype == np.float32 and np.all(grey == grey[:, :1])
    assert grey[500, 0] == pytest.approx(0.5, abs=1e-6)
    assert grey[255, 0] == pytest.approx(245 / 980, abs=1e-6)
    assert grey[0, 0] == grey[5, 0] == 0.0 and grey[995, 0] == grey[-1, 0] == 1.0
    assert intensity_to_grey(np.full(10, 7.0, np.float32)).max() == 0.0       # flat: no division by zero


def test_empty_and_tiny_clouds(segmenter):
    empty = segmenter.segment(np.zeros((0, 3), np.float32), None, None)
    assert isinstance(empty, SceneResult) and empty.labels.shape == (0,) and empty.instances_info == []
    tiny = segmenter.segment(np.random.default_rng(0).random((5, 3)), None, None)
    assert tiny.labels.tolist() == [-1] * 5 and tiny.instances.tolist() == [-1] * 5
    assert (tiny.labels.dtype, tiny.instances.dtype, tiny.scores.dtype) == (np.int32, np.int32, np.float32)
    assert tiny.scores.tolist() == [0.0] * 5 and 'total' in tiny.timings
    with pytest.raises(ValueError, match='NaN'):
        segmenter.segment(np.array([[0, 0, np.nan]] * 50, np.float32))
    with pytest.raises(ValueError, match='rgb'):
        segmenter.segment(np.zeros((50, 3), np.float32), np.full((50, 3), 255.0))


def test_factory_uses_model_metadata():
    checkpoint, onnx_path = exported_small()
    segmenter = SceneSegmenter.from_config('onnxruntime', onnx_path, device='cpu', batch_size=4)
    assert segmenter.num_points == 1024 and segmenter.block_size == 1.0 and segmenter.batch_size == 4
    assert SceneSegmenter.from_config('torch', checkpoint).backend.name == 'torch'
    with pytest.raises(ValueError, match='num_points=4096'):
        SceneSegmenter(segmenter.backend, num_points=4096)


def test_class_min_points_drops_small_instances_of_that_class_only(segmenter, office_subset):
    xyz, rgb = office_subset
    plain = segmenter.segment(xyz, rgb)
    assert plain.instances_info, 'need instances to filter'
    target = plain.instances_info[-1]                                    # the smallest instance
    thresholds = np.zeros(len(segmenter.class_names))
    thresholds[target.class_id] = target.num_points + 1                 # just above it, for its class only
    filtered = SceneSegmenter(segmenter.backend, min_instance_points=20, class_min_points=thresholds).segment(xyz, rgb)
    expected = [i.num_points for i in plain.instances_info
                if not (i.class_id == target.class_id and i.num_points <= target.num_points)]
    assert [i.num_points for i in filtered.instances_info] == expected
    np.testing.assert_array_equal(filtered.labels, plain.labels)         # semantics untouched
    with pytest.raises(ValueError, match='class_min_points'):
        SceneSegmenter(segmenter.backend, class_min_points=[1.0, 2.0])


def test_border_join_on_by_default_and_idle_on_the_dense_grid(segmenter, office_subset):
    # On the stride-0.5 grid every two points closer than 0.25 m share a block: the join finds nothing to join.
    xyz, rgb = office_subset
    assert segmenter.border_join == 0.2
    grid = segmenter.replace(layout='grid')
    plain, joined = grid.replace(border_join=0.0).segment(xyz, rgb), grid.segment(xyz, rgb)
    np.testing.assert_array_equal(plain.instances, joined.instances)
    np.testing.assert_array_equal(plain.labels, joined.labels)
    with pytest.raises(ValueError, match='border_join'):
        segmenter.replace(border_join=0.6)
