"""Nested FPS of the frame path: the numpy early exit and the batched torch FPS give the reference's indices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpnet_model.infer.fps import NestedFps, farthest_point_sample_np, nested_fps_torch, nested_sample_indices
from mpnet_model.model.pointnet2 import farthest_point_sample

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available on this machine')


def sparse_and_dense_blocks(num_points: int = 256) -> np.ndarray:
    """(4, P, 3): two dense blocks and two sparse ones (7 and 40 distinct positions resampled with repeats, as
    lidar blocks are), so the early exit fires for some rows and not for others."""
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 1, size=(2, num_points, 3))
    sparse = []
    for distinct in (7, 40):
        positions = rng.uniform(0, 1, size=(distinct, 3))
        picks = np.concatenate([np.arange(distinct), rng.integers(0, distinct, num_points - distinct)])
        sparse.append(positions[rng.permutation(picks)])
    return np.concatenate([dense, np.stack(sparse)]).astype(np.float32)


def test_numpy_early_exit_gives_the_reference_indices():
    xyz = sparse_and_dense_blocks()
    expected = farthest_point_sample(torch.from_numpy(xyz), 128).numpy()
    np.testing.assert_array_equal(farthest_point_sample_np(xyz, 128), expected)
    # The sparse rows finish early: after their distinct positions every pick is index 0, as in the reference.
    assert (expected[2, 7:] == 0).all() and len(set(expected[2, :7])) == 7
    levels = nested_sample_indices(xyz, (128, 32, 8))
    reference = nested_fps_torch(torch.from_numpy(xyz), (128, 32, 8))
    for mine, theirs in zip(levels, reference):
        np.testing.assert_array_equal(mine, theirs.numpy())


def test_nested_fps_callable_on_cpu_matches_the_model_encoder():
    from mpnet_model.config import small_config
    from mpnet_model.model.pointnet2 import PointNet2Encoder

    xyz = torch.from_numpy(sparse_and_dense_blocks(1024))
    encoder = PointNet2Encoder(small_config())
    expected = encoder.sample_indices(xyz)
    for mine, theirs in zip(NestedFps(small_config().sa_npoints)(xyz), expected):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@needs_cuda
def test_cuda_graph_fps_matches_eager_for_every_batch_size():
    fps = NestedFps((128, 32, 8))
    for batch in (1, 4, 17, 4):                 # padded to 16 and 32; the repeated size replays a cached graph
        xyz = torch.rand(batch, 256, 3, device='cuda', generator=torch.Generator('cuda').manual_seed(batch))
        for mine, theirs in zip(fps(xyz), nested_fps_torch(xyz, (128, 32, 8))):
            assert mine.shape == theirs.shape == (batch, mine.shape[1])
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert fps.use_graphs and len(fps._graphs) == 2
