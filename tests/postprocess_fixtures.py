"""Real inputs for the post-processing tests: blocks of the shared sample frames (PCL office scan, one Ouster
OS-1-128 frame) through the shipped model, and the block layout of a lidar crop for BlockMerging."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mpnet_model.data.blocks import room_to_blocks
from mpnet_model.infer.scene import intensity_to_grey
from tests.runtime_fixtures import needs_data, office_cloud, ouster_cloud

needs_data = needs_data
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available on this machine')


@functools.lru_cache(maxsize=1)
def shipped_block_embeddings(count: int = 16) -> np.ndarray:
    """(count, 1024, 5) instance embeddings of the shipped model on real blocks: a quarter from the office scan,
    the rest from the Ouster frame cut as the node cuts it (min 20 points), picked across the density range so
    both dense blocks and sparse resampled ones (few dozen points drawn up to 1024) are in."""
    from mpnet_model.infer.backends.base import make_backend

    backend = make_backend('onnxruntime', '')
    rng = np.random.default_rng(0)
    xyz, rgb = office_cloud()
    office = room_to_blocks(xyz, rgb, num_points=backend.num_points, rng=rng)
    lidar_xyz, intensity = ouster_cloud()
    lidar = room_to_blocks(lidar_xyz, intensity_to_grey(intensity), num_points=backend.num_points, min_points=20,
                           rng=rng)
    distinct = np.array([np.unique(row).size for row in lidar.indices])
    by_density = np.argsort(distinct, kind='stable')
    num_lidar = count - count // 4
    lidar_pick = by_density[np.linspace(0, by_density.size - 1, num_lidar).astype(int)]
    office_pick = np.random.default_rng(1).choice(len(office), count // 4, replace=False)
    points = np.concatenate([office.points[np.sort(office_pick)], lidar.points[np.sort(lidar_pick)]])
    return np.ascontiguousarray(backend.run(points)[1], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def lidar_merge_case(num_blocks: int = 400):
    """A real block layout to merge: the first ``num_blocks`` blocks (a strip, in block order) of the Ouster
    frame's 15 m crop cut as the node cuts it, with block-local instance ids from a spatial grid (0.7 m cells,
    numbered per block in a random order, 5 % label noise and unlabelled points) and classes from height bands.
    -> (xyz, indices, instances, semantic)."""
    xyz, _ = ouster_cloud()
    indices = room_to_blocks(xyz, None, num_points=1024, min_points=20, rng=np.random.default_rng(0)).indices
    indices = indices[:num_blocks]
    rng = np.random.default_rng(1)
    cell = np.floor(xyz[:, :2] / 0.7).astype(np.int64)
    cell_id = np.unique(cell, axis=0, return_inverse=True)[1].reshape(-1)  # (N,) global instance
    band = np.clip(np.floor((xyz[:, 2] - xyz[:, 2].min()) / 0.8), 0, 4).astype(np.int64)
    instances = np.empty(indices.shape, dtype=np.int64)
    for k, rows in enumerate(indices):  # test setup only: per-block random numbering
        local = np.unique(cell_id[rows], return_inverse=True)[1].reshape(-1)
        instances[k] = rng.permutation(local.max() + 1)[local]
    noise = rng.random(instances.shape) < 0.05
    instances[noise] = rng.integers(-1, 4, int(noise.sum()))
    return xyz, indices, instances, band[indices]
