"""Mean shift against scikit-learn's MeanShift(bandwidth, bin_seeding=True), the clustering ASIS/MPNet use."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from mpnet_model.infer.meanshift import bin_seeds, mean_shift, mean_shift_blocks


def _sklearn_labels(points: np.ndarray, bandwidth: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "Binning data failed" is part of the behaviour we match
        fitted = MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(points)
    return fitted.labels_, fitted.cluster_centers_


def _blobs(num_points: int, num_clusters: int, std: float, box: float, seed: int) -> np.ndarray:
    points, _ = make_blobs(num_points, 5, centers=num_clusters, cluster_std=std, center_box=(-box, box),
                           random_state=seed)
    return points.astype(np.float32)


@pytest.mark.parametrize(('num_points', 'num_clusters', 'std', 'box'), [
    (1024, 5, 0.1, 3.0),     # well separated
    (1024, 12, 0.15, 3.0),
    (400, 8, 0.3, 1.5),      # overlapping clusters: many seeds, centres merge (sklearn is slow here)
])
def test_matches_sklearn_small(num_points, num_clusters, std, box):
    points = _blobs(num_points, num_clusters, std, box, seed=num_clusters)
    expected, expected_centres = _sklearn_labels(points)
    labels, centres = mean_shift(points, 0.6, return_centres=True)
    assert labels.dtype == np.int64 and labels.shape == (num_points,)
    assert adjusted_rand_score(expected, labels) >= 0.99
    assert centres.shape[0] == expected_centres.shape[0]


@pytest.mark.parametrize(('num_clusters', 'std', 'box'), [
    (5, 0.1, 3.0), (15, 0.15, 3.0), (30, 0.2, 3.0), (10, 0.4, 3.0), (20, 0.3, 1.5),
])
def test_matches_sklearn_4096(num_clusters, std, box):
    points = _blobs(4096, num_clusters, std, box, seed=100 + num_clusters)
    expected, _ = _sklearn_labels(points)
    assert adjusted_rand_score(expected, mean_shift(points, 0.6)) >= 0.99


def test_centres_in_sklearn_order():
    """Cluster 0 is the strongest centre, as in sklearn (labels equal, not only up to permutation)."""
    points = _blobs(600, 4, 0.1, 3.0, seed=3)
    expected, expected_centres = _sklearn_labels(points)
    labels, centres = mean_shift(points, return_centres=True)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(centres, expected_centres, atol=1e-4)


def test_hand_computed_two_clusters_on_a_line():
    # 1-D: windows of 0.6 hold {0, .1, .2} and {5, 5.1}; the bigger cluster is label 0.
    points = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    labels, centres = mean_shift(points, 0.6, return_centres=True)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(centres[:, 0], [0.1, 5.05], atol=1e-12)


def test_bin_seeds_as_sklearn():
    from sklearn.cluster import get_bin_seeds
    points = _blobs(500, 6, 0.3, 2.0, seed=1).astype(np.float64)
    ours = bin_seeds(torch.from_numpy(points), 0.6).numpy()
    theirs = get_bin_seeds(points, 0.6, 1)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(np.unique(ours, axis=0), np.unique(theirs, axis=0), atol=1e-6)


def test_single_point():
    labels, centres = mean_shift(np.array([[0.3, -1.0, 2.0, 0.0, 0.5]], np.float32), return_centres=True)
    np.testing.assert_array_equal(labels, [0])
    np.testing.assert_allclose(centres, [[0.3, -1.0, 2.0, 0.0, 0.5]])


def test_empty_input():
    labels, centres = mean_shift(np.zeros((0, 5), np.float32), return_centres=True)
    assert labels.shape == (0,) and centres.shape == (0, 5)


def test_identical_points_near_bin_centre_match_sklearn():
    points = np.full((50, 5), 0.61, np.float32)
    expected, _ = _sklearn_labels(points)
    np.testing.assert_array_equal(mean_shift(points), expected)
    assert set(expected.tolist()) == {0}


def test_identical_points_far_from_bin_centre_still_one_cluster():
    # The bin centre (origin) is 0.29*sqrt(5) = 0.65 > 0.6 away: sklearn raises, we fall back to point seeds.
    points = np.full((20, 5), 0.29, np.float32)
    with pytest.raises(ValueError):
        _sklearn_labels(points)
    labels, centres = mean_shift(points, return_centres=True)
    np.testing.assert_array_equal(labels, np.zeros(20, np.int64))
    np.testing.assert_allclose(centres, points[:1], atol=1e-6)


def test_torch_input_returns_tensor_and_float64_works():
    points = _blobs(300, 3, 0.1, 3.0, seed=7)
    as_tensor = mean_shift(torch.from_numpy(points))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.int64
    as_double = mean_shift(points.astype(np.float64))
    assert adjusted_rand_score(as_tensor.numpy(), as_double) == 1.0


def test_blocks_equal_per_block_calls():
    blocks = np.stack([_blobs(256, k, 0.1, 3.0, seed=k) for k in (2, 4, 6)])  # (3,256,5)
    labels = mean_shift_blocks(blocks)
    assert labels.shape == (3, 256)
    for block, block_labels in zip(blocks, labels):
        np.testing.assert_array_equal(block_labels, mean_shift(block))


@pytest.mark.parametrize(('bad', 'message'), [
    (np.zeros((2, 3, 5), np.float32), 'shape'),
    (np.array([[np.nan, 0.0]]), 'NaN'),
    ([[0.0, 1.0]], 'numpy.ndarray'),
])
def test_bad_input_raises(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mean_shift(bad)


def test_bad_bandwidth_raises():
    with pytest.raises(ValueError, match='bandwidth'):
        mean_shift(np.zeros((3, 2)), bandwidth=0.0)
