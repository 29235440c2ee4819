"""Frame blocking for inference (mpnet_model.infer.blocking): the torch variant reproduces the numpy blocks, the
vectorised samplers keep the per-block semantics, and the layouts keep every point covered with fewer blocks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mpnet_model.data.blocks import block_features, partition_blocks, room_to_blocks
from mpnet_model.infer.blocking import (
    LAYOUTS,
    block_channels,
    frame_blocks,
    layout_partition,
    partition_torch,
    sample_rows_torch,
)


def room(seed: int = 2) -> np.ndarray:
    """4.2 m x 2.9 m, with points on block edges and a dense corner (kept and dropped blocks)."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-3, 5, 0], [1.2, 7.9, 3], size=(5000, 3)).astype(np.float32)
    xyz[0] = [-3, 5, 0]
    xyz[1:40] = np.round(xyz[1:40] * 2) / 2
    xyz[40:400, :2] = [-2.9, 5.1]
    return xyz


def covered(partition, num_points: int) -> np.ndarray:
    mask = np.zeros(num_points, dtype=bool)
    mask[partition.point_order.cpu().numpy()] = True
    return mask


@pytest.mark.parametrize('block_size, stride, min_points', [(1.0, 0.5, 100), (1.0, 1.0, 20), (1.5, 0.4, 50)])
def test_torch_partition_is_the_numpy_partition(block_size, stride, min_points):
    xyz = room()
    expected = partition_blocks(xyz, block_size, stride, min_points)
    mine = partition_torch(torch.from_numpy(xyz), block_size, stride, min_points)
    np.testing.assert_array_equal(mine.point_order.numpy(), expected.point_order)   # same members, same order
    np.testing.assert_array_equal(mine.offsets.numpy(), expected.offsets)
    np.testing.assert_allclose(mine.origins.numpy(), expected.origins)
    assert len(partition_torch(torch.zeros(0, 3), 1.0, 0.5, 1)) == 0


def test_numpy_sampler_reproduces_room_to_blocks_and_torch_channels_are_exact():
    xyz = room()
    rgb = np.random.default_rng(0).random((len(xyz), 3), dtype=np.float32)
    expected = room_to_blocks(xyz, rgb, num_points=256, min_points=20, rng=np.random.default_rng(5))
    blocks = frame_blocks(torch.from_numpy(xyz), torch.from_numpy(rgb), 'grid', num_points=256, min_points=20,
                          seed=5, sampler='numpy')
    np.testing.assert_array_equal(blocks.indices.numpy(), expected.indices)
    np.testing.assert_array_equal(blocks.points.numpy(), expected.points)      # bit-identical channels
    partition = blocks.partition.to_numpy()
    np.testing.assert_array_equal(
        block_channels(torch.from_numpy(xyz), None, blocks.indices, blocks.partition).numpy(),
        block_features(xyz, None, expected.indices, partition.origins, partition))


def test_torch_sampler_keeps_the_per_block_semantics():
    xyz = room()
    partition = partition_torch(torch.from_numpy(xyz), 1.0, 0.5, 20)
    num_points = 300
    first = sample_rows_torch(partition, num_points, torch.Generator().manual_seed(0))
    again = sample_rows_torch(partition, num_points, torch.Generator().manual_seed(0))
    other = sample_rows_torch(partition, num_points, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    counts = partition.counts.numpy()
    small = large = 0
    for k in range(len(partition)):
        members = set(partition.point_order[partition.offsets[k]:partition.offsets[k + 1]].tolist())
        row = first[k].tolist()
        assert set(row) <= members
        if counts[k] <= num_points:
            assert set(row) == members               # every point once, the rest repeats
            small += 1
        else:
            assert len(set(row)) == num_points        # without replacement
            large += 1
    assert small and large


def test_layouts_cover_every_point_of_the_grid_with_fewer_blocks():
    """Thinned layouts leave no half-grid block with >= min_points points that no kept block holds."""
    xyz = room()
    xyz = np.concatenate([xyz, xyz[:300] + [0.0, 3.3, 0.0]])     # a strip that only off-tile blocks reach fully
    cloud = torch.from_numpy(xyz)
    grid = layout_partition(cloud, 'grid', 1.0, 0.5, 20, use_numpy=False)
    counts = {}
    for layout in LAYOUTS:
        for use_numpy in (False, True):
            partition = layout_partition(cloud, layout, 1.0, 0.5, 20, use_numpy, dense_points=256)
            counts[layout] = len(partition)
            mine = covered(partition, len(xyz))
            if layout == 'tile':     # no half-block blocks to rescue with: a point may sit in a dropped tile only
                np.testing.assert_array_equal(partition.point_order.numpy(),
                                              partition_blocks(xyz, 1.0, 1.0, 20).point_order)
                continue
            assert not (mine & ~covered(grid, len(xyz))).any()
            kept = {tuple(c) for c in partition.cells.tolist()}
            for k, cell in enumerate(grid.cells.tolist()):
                members = grid.point_order[grid.offsets[k]:grid.offsets[k + 1]].numpy()
                if tuple(cell) not in kept:
                    assert (~mine[members]).sum() < 20, (layout, cell)
    assert counts['tile'] < counts['cover'] < counts['staggered'] < counts['grid']
    adaptive = {tuple(c) for c in layout_partition(cloud, 'adaptive', 1.0, 0.5, 20, False, 256).cells.tolist()}
    dense = {tuple(c) for c, n in zip(grid.cells.tolist(), grid.counts.tolist()) if n >= 256}
    assert dense <= adaptive and len(dense) < len(adaptive) < counts['grid']     # dense blocks all kept
    sparse = layout_partition(cloud, 'adaptive', 1.0, 0.5, 20, False, dense_points=10_000)
    assert len(sparse) == counts['cover']                      # no block is dense: the cover thinning
    staggered = layout_partition(cloud, 'staggered', 1.0, 0.5, 20, use_numpy=False)
    cells = staggered.cells.numpy()
    on_board = (cells.sum(1) % 2) == 0
    all_cells = grid.cells.numpy()
    # Every checkerboard block of the grid is kept; off-board blocks only where they rescue uncovered points.
    assert {tuple(c) for c in all_cells[(all_cells.sum(1) % 2) == 0]} == {tuple(c) for c in cells[on_board]}


def test_rescue_pass_adds_the_far_edge_block():
    # x extent 2.3 m: the half grid has 4 columns (0, 0.5, 1, 1.5 m); the tiles (0 m, 1 m) end at 2 m, so the
    # points beyond 2 m are only in column 3, which the rescue pass must add.
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 2.3, 4000), rng.uniform(0, 0.9, 4000), rng.uniform(0, 1, 4000)].astype(np.float32)
    partition = layout_partition(torch.from_numpy(xyz), 'cover', 1.0, 0.5, 20, use_numpy=False)
    assert covered(partition, len(xyz)).all()
    assert sorted(partition.cells[:, 0].tolist()) == [0, 2, 3]


def test_bad_layout_or_sampler_is_a_clear_error():
    cloud = torch.from_numpy(room())
    with pytest.raises(ValueError, match="layout='diagonal'"):
        frame_blocks(cloud, None, 'diagonal')
    with pytest.raises(ValueError, match="sampler='fast'"):
        frame_blocks(cloud, None, sampler='fast')


def test_point_buckets_sample_sparse_blocks_to_fewer_points():
    xyz = room()[:1500]                        # sparse (~90 points per block) with the dense corner (> 256)
    cloud = torch.from_numpy(xyz)
    buckets = (64, 128, 256)
    for sampler in ('numpy', 'torch'):
        blocks = frame_blocks(cloud, None, 'grid', num_points=256, min_points=20, sampler=sampler,
                              point_buckets=buckets)
        counts = blocks.partition.counts.numpy()
        assert sorted(g.indices.shape[1] for g in blocks.groups) == [64, 128, 256]     # this room uses all three
        seen = np.zeros(len(blocks), dtype=int)
        for group in blocks.groups:
            size = group.indices.shape[1]
            for row, k in zip(group.indices.numpy(), group.blocks.numpy()):
                seen[k] += 1
                members = blocks.partition.point_order[blocks.partition.offsets[k]:blocks.partition.offsets[k + 1]]
                expected = min(b for b in buckets if b >= counts[k]) if counts[k] <= 256 else 256
                assert size == expected and set(row) <= set(members.tolist())
                if counts[k] <= size:
                    assert set(row) == set(members.tolist())
            np.testing.assert_array_equal(group.points.numpy()[..., 3:6], 0.0)
        assert (seen == 1).all()                                                   # every block in one group
        padded, valid = blocks.padded_indices()
        assert padded.shape == (len(blocks), 256) and valid.sum(1).tolist() == [
            min(b for b in buckets if b >= c) if c <= 256 else 256 for c in counts]
    with pytest.raises(ValueError, match='groups'):
        _ = blocks.points
