"""Mean shift against scikit-learn's MeanShift(bandwidth, bin_seeding=True), the clustering ASIS/MPNet use."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from mpnet_model.infer.meanshift import bin_seeds, mean_shift, mean_shift_blocks, mean_shift_blocks_reference
from tests.postprocess_fixtures import needs_cuda, needs_data, shipped_block_embeddings


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
    for function in (mean_shift_blocks, mean_shift_blocks_reference):
        labels = function(blocks)
        assert labels.shape == (3, 256) and labels.dtype == np.int64
        for block, block_labels in zip(blocks, labels):
            np.testing.assert_array_equal(block_labels, mean_shift(block))


def _assert_blocks_agree(labels, reference, min_ari=0.99):
    aris = [adjusted_rand_score(a, b) for a, b in zip(reference, labels)]
    assert min(aris) >= min_ari, f'per-block ARI {np.round(aris, 4).tolist()}'


@needs_data
def test_batched_matches_per_block_on_real_blocks():
    """The shipped model's embeddings of real office and lidar blocks (dense ones and sparse resampled ones)."""
    embeddings = shipped_block_embeddings()
    reference = mean_shift_blocks_reference(embeddings)
    labels = mean_shift_blocks(embeddings)
    assert labels.shape == reference.shape and labels.dtype == np.int64
    _assert_blocks_agree(labels, reference)
    assert max(block.max() for block in reference) >= 2  # real clusterings, not one cluster per block
    # Small memory chunks, convergence checked every iteration: the same clustering.
    _assert_blocks_agree(mean_shift_blocks(embeddings, max_elements=1 << 16, check_every=1), reference)


def test_batched_matches_sklearn_on_varied_blocks():
    """Blocks of different shapes in one batch: separated, overlapping, resampled (repeated points), tiny."""
    rng = np.random.default_rng(0)
    blocks = [_blobs(512, 5, 0.1, 3.0, seed=1), np.tile(_blobs(256, 8, 0.3, 1.5, seed=2), (2, 1)),
              _blobs(40, 3, 0.1, 3.0, seed=3)[rng.integers(0, 40, 512)],  # 40 points drawn up to 512
              np.repeat(_blobs(2, 1, 0.1, 3.0, seed=4), 256, axis=0)]
    blocks = np.stack(blocks)
    labels = mean_shift_blocks(blocks)
    for block, block_labels in zip(blocks, labels):
        expected, _ = _sklearn_labels(block)
        assert adjusted_rand_score(expected, block_labels) >= 0.99
    np.testing.assert_array_equal(labels[2], mean_shift(blocks[2]))  # cluster 0 = strongest, as per block


@pytest.mark.parametrize('max_iter', [0, 1, 3, 9])
def test_batched_stops_each_seed_like_per_block_with_few_iterations(max_iter):
    """With the iteration cap hit by most seeds, the per-seed stop bookkeeping decides the result."""
    blocks = np.stack([_blobs(300, 6, 0.3, 2.0, seed=s) for s in range(3)])
    expected = mean_shift_blocks_reference(blocks, max_iter=max_iter)
    np.testing.assert_array_equal(mean_shift_blocks(blocks, max_iter=max_iter), expected)
    np.testing.assert_array_equal(mean_shift_blocks(blocks, max_iter=max_iter, check_every=2), expected)


def test_batched_seeds_from_points_like_sklearn():
    """Every point in its own bin: sklearn seeds from the points; a block whose windows are all empty falls back
    to point seeds too (as :func:`mean_shift`)."""
    spread = np.arange(12, dtype=np.float32)[:, None] * np.array([[1.3, 0, 0, 0, 0]], np.float32)  # own bins
    far = np.full((12, 5), 0.29, np.float32)  # the bin centre is out of every window
    blocks = np.stack([spread, far])
    labels = mean_shift_blocks(blocks)
    np.testing.assert_array_equal(labels[0], mean_shift(spread))
    np.testing.assert_array_equal(labels[0], _sklearn_labels(spread)[0])
    np.testing.assert_array_equal(labels[1], np.zeros(12, np.int64))


def test_batched_handles_empty_and_single_point_blocks():
    assert mean_shift_blocks(np.zeros((0, 16, 5), np.float32)).shape == (0, 16)
    assert mean_shift_blocks(np.zeros((3, 0, 5), np.float32)).shape == (3, 0)
    np.testing.assert_array_equal(mean_shift_blocks(np.ones((2, 1, 5), np.float32)), [[0], [0]])


def test_batched_precision_and_types():
    blocks = np.stack([_blobs(300, 3, 0.1, 3.0, seed=s) for s in (7, 8)])
    expected = mean_shift_blocks_reference(blocks)
    as_tensor = mean_shift_blocks(torch.from_numpy(blocks))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.int64
    np.testing.assert_array_equal(as_tensor.numpy(), expected)
    _assert_blocks_agree(mean_shift_blocks(blocks.astype(np.float64)), expected, 1.0)
    _assert_blocks_agree(mean_shift_blocks(torch.from_numpy(blocks).half()), expected)  # computed in float32


@pytest.mark.parametrize(('bad', 'kwargs', 'message'), [
    (np.zeros((3, 5), np.float32), {}, r'\(B, N, E\)'),
    (np.full((1, 2, 5), np.nan, np.float32), {}, 'NaN'),
    ([[[0.0, 1.0]]], {}, 'numpy.ndarray'),
    (np.zeros((1, 2, 5), np.float32), {'bandwidth': -1.0}, 'bandwidth'),
    (np.zeros((1, 2, 5), np.float32), {'check_every': 0}, 'check_every'),
])
def test_batched_bad_input_raises(bad, kwargs, message):
    for function in (mean_shift_blocks, mean_shift_blocks_reference):
        if 'check_every' in kwargs and function is mean_shift_blocks_reference:
            continue
        with pytest.raises((ValueError, TypeError), match=message):
            function(bad, **kwargs)


@needs_data
def test_batched_gpu_strategy_on_the_cpu(monkeypatch):
    """The GPU code path (torch sorts, one window pass per chunk, no walker regrouping), run on CPU tensors."""
    import mpnet_model.infer.meanshift as meanshift

    embeddings = shipped_block_embeddings()
    expected = mean_shift_blocks(embeddings)
    monkeypatch.setattr(meanshift, '_cpu_strategy', lambda device: False)
    _assert_blocks_agree(mean_shift_blocks(embeddings), expected, 1.0)
    _assert_blocks_agree(mean_shift_blocks(embeddings, max_elements=1 << 18), expected, 1.0)


@needs_cuda
def test_batched_on_cuda_stays_on_device_and_matches_cpu():
    blocks = torch.from_numpy(np.stack([_blobs(512, k, 0.15, 3.0, seed=k) for k in (3, 6, 9)]))
    expected = mean_shift_blocks(blocks)
    labels = mean_shift_blocks(blocks.cuda())
    assert labels.device.type == 'cuda' and labels.dtype == torch.int64
    _assert_blocks_agree(labels.cpu().numpy(), expected.numpy())


@needs_cuda
@needs_data
def test_batched_on_cuda_matches_per_block_on_real_blocks():
    embeddings = shipped_block_embeddings()
    labels = mean_shift_blocks(torch.from_numpy(embeddings).cuda())
    assert labels.device.type == 'cuda'
    _assert_blocks_agree(labels.cpu().numpy(), mean_shift_blocks_reference(embeddings))


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
