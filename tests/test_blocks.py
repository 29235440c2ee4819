"""Block partitioning and sampling (ASIS room2blocks_plus_normalized convention)."""
import numpy as np
import pytest

from mpnet_model.data.blocks import partition_blocks, room_to_blocks


def reference_blocks(xyz, block_size, stride, min_points):
    """ASIS room2blocks membership, written the slow obvious way: one mask over all points per grid cell."""
    shifted = xyz.astype(np.float64) - xyz.min(axis=0)
    limit = shifted.max(axis=0)
    nx = max(1, int(np.ceil((limit[0] - block_size) / stride)) + 1)
    ny = max(1, int(np.ceil((limit[1] - block_size) / stride)) + 1)
    blocks = []
    for i in range(nx):
        for j in range(ny):
            xbeg, ybeg = i * stride, j * stride
            cond = ((shifted[:, 0] <= xbeg + block_size) & (shifted[:, 0] >= xbeg)
                    & (shifted[:, 1] <= ybeg + block_size) & (shifted[:, 1] >= ybeg))
            if cond.sum() >= min_points:
                blocks.append(((xbeg, ybeg), np.flatnonzero(cond)))
    return blocks


def test_channels_on_a_hand_built_room():
    xyz = np.array([[1.0, 2.0, 0.5], [2.5, 3.0, 2.5], [1.75, 2.25, 1.5]], dtype=np.float32)
    rgb = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.4, 0.6]], dtype=np.float32)
    blocks = room_to_blocks(xyz, rgb, sem=np.array([0, 1, 2]), ins=np.array([5, 6, 7]),
                            num_points=4, min_points=1, rng=np.random.default_rng(0))
    # Shifted room: (0,0,0), (1.5,1,2), (0.75,0.25,1); extent (1.5, 1, 2) -> x blocks [0,1], [0.5,1.5]; one y block.
    assert len(blocks) == 2 and blocks.points.shape == (2, 4, 9)
    np.testing.assert_allclose(blocks.origins, [[1.0, 2.0], [1.5, 2.0]])
    np.testing.assert_allclose(blocks.room_min, [1.0, 2.0, 0.5])
    assert set(blocks.indices[0]) == {0, 2} and set(blocks.indices[1]) == {1, 2}
    expected_p2 = {0: [0.25, -0.25, 1.0, 0.2, 0.4, 0.6, 0.5, 0.25, 0.5],
                   1: [-0.25, -0.25, 1.0, 0.2, 0.4, 0.6, 0.5, 0.25, 0.5]}
    for k, expected in expected_p2.items():
        slot = np.flatnonzero(blocks.indices[k] == 2)[0]
        np.testing.assert_allclose(blocks.points[k, slot], expected, atol=1e-6)
    slot = np.flatnonzero(blocks.indices[1] == 1)[0]
    np.testing.assert_allclose(blocks.points[1, slot], [0.5, 0.5, 2.0, 1, 1, 1, 1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(blocks.sem, np.array([0, 1, 2])[blocks.indices])
    np.testing.assert_array_equal(blocks.ins, np.array([5, 6, 7])[blocks.indices])
    assert blocks.points.dtype == np.float32 and blocks.indices.dtype == np.int64 and blocks.sem.dtype == np.int64


def test_block_count_of_a_dense_room():
    rng = np.random.default_rng(1)
    xyz = np.concatenate([rng.uniform([0, 0, 0], [3, 2, 3], size=(6000, 3)), [[0, 0, 0], [3, 2, 3]]])
    blocks = room_to_blocks(xyz, None, num_points=64, min_points=10, rng=rng)
    # ceil((3 - 1) / 0.5) + 1 = 5 blocks along x, ceil((2 - 1) / 0.5) + 1 = 3 along y.
    assert len(blocks) == 15
    assert (blocks.sem == -1).all() and (blocks.ins == -1).all() and (blocks.points[..., 3:6] == 0).all()


@pytest.mark.parametrize('block_size, stride, min_points', [(1.0, 0.5, 100), (1.0, 1.0, 20), (1.5, 0.4, 50)])
def test_partition_matches_the_per_block_reference(block_size, stride, min_points):
    rng = np.random.default_rng(2)
    xyz = rng.uniform([-3, 5, 0], [1.2, 7.9, 3], size=(5000, 3)).astype(np.float32)
    xyz[0] = [-3, 5, 0]                        # room min on the 0.5 grid, so rounded points lie on block edges
    xyz[1:40] = np.round(xyz[1:40] * 2) / 2    # points exactly on block boundaries (inclusive on both sides)
    xyz[40:400, :2] = [-2.9, 5.1]              # a dense corner, so some blocks are kept and some dropped
    partition = partition_blocks(xyz, block_size, stride, min_points)
    reference = reference_blocks(xyz, block_size, stride, min_points)
    assert 0 < len(partition) == len(reference)
    on_half_metre_grid = (xyz[:, 0] * 2 == np.round(xyz[:, 0] * 2)) & (xyz[:, 1] * 2 == np.round(xyz[:, 1] * 2))
    assert on_half_metre_grid.sum() >= 30
    for k, (origin, members) in enumerate(reference):
        np.testing.assert_allclose(partition.origins[k], origin)
        np.testing.assert_array_equal(np.sort(partition.block_points(k)), members)


def test_small_blocks_are_fully_covered_and_large_ones_sampled_without_replacement():
    rng = np.random.default_rng(3)
    xyz = np.concatenate([rng.uniform(0, [4, 4, 2], size=(3000, 3)), rng.uniform(0, [1, 1, 2], size=(3000, 3))])
    num_points = 400
    partition = partition_blocks(xyz, 1.0, 0.5, 100)
    blocks = room_to_blocks(xyz, None, num_points=num_points, rng=rng)
    assert len(blocks) == len(partition)
    small = large = 0
    for k in range(len(blocks)):
        members = partition.block_points(k)
        sampled = blocks.indices[k]
        assert set(sampled) <= set(members)
        if members.shape[0] <= num_points:
            assert set(sampled) == set(members)          # every point of the block appears
            small += 1
        else:
            assert np.unique(sampled).shape[0] == num_points
            large += 1
    assert small > 0 and large > 0


def test_sampling_is_reproducible_given_the_generator():
    rng = np.random.default_rng(4)
    xyz = rng.uniform(0, [3, 3, 3], size=(4000, 3))
    rgb = rng.uniform(0, 1, size=(4000, 3))
    first = room_to_blocks(xyz, rgb, num_points=256, rng=np.random.default_rng(7))
    second = room_to_blocks(xyz, rgb, num_points=256, rng=np.random.default_rng(7))
    other = room_to_blocks(xyz, rgb, num_points=256, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.points, second.points)
    assert not np.array_equal(first.indices, other.indices)


def test_degenerate_rooms():
    one_point_short = np.zeros((99, 3))
    blocks = room_to_blocks(one_point_short, None, num_points=8)
    assert blocks.points.shape == (0, 8, 9) and blocks.indices.shape == (0, 8)
    empty = room_to_blocks(np.zeros((0, 3)), None, num_points=8)
    assert len(empty) == 0
    flat = room_to_blocks(np.c_[np.random.default_rng(0).uniform(0, 0.5, (200, 2)), np.zeros(200)], None,
                          num_points=8)
    assert len(flat) == 1 and np.isfinite(flat.points).all() and (flat.points[..., 8] == 0).all()


def test_bad_input_is_a_clear_error():
    xyz = np.zeros((200, 3))
    with pytest.raises(ValueError, match='stride=2.0 > block_size=1.0'):
        room_to_blocks(xyz, None, stride=2.0)
    with pytest.raises(ValueError, match=r'rgb has shape \(5, 3\)'):
        room_to_blocks(xyz, np.zeros((5, 3)))
    bad = xyz.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match='1 non-finite'):
        room_to_blocks(bad, None)
    with pytest.raises(ValueError, match='num_points=0'):
        room_to_blocks(xyz, None, num_points=0)


def test_vectorised_sampling_is_uniform():
    """Over many draws every member of a large block is picked with probability P / count, and the repeats of a
    short block fall uniformly on its members (the per-block draw's distribution, made for all blocks at once)."""
    from mpnet_model.data.blocks import sample_block_indices

    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform(0, [0.9, 0.9, 1], size=(50, 3)),              # one block of 50 points
                          rng.uniform([3.1, 0, 0], [3.9, 0.9, 1], size=(8, 3))])    # one of 8 points
    xyz[0] = 0.0                                                                    # grid origin at 0
    partition = partition_blocks(xyz, 1.0, 1.0, 1)
    assert partition.counts.tolist() == [50, 8]
    draws = np.stack([sample_block_indices(partition, 20, rng) for _ in range(3000)])   # (T, 2, 20)
    picked = np.bincount(draws[:, 0].reshape(-1), minlength=50)[:50] / 3000              # inclusion rate
    np.testing.assert_allclose(picked, 20 / 50, atol=0.05)
    assert all(len(set(row)) == 20 for row in draws[:5, 0])
    short = np.bincount(draws[:, 1].reshape(-1) - 50, minlength=8) / (3000 * 20)
    np.testing.assert_allclose(short, 1 / 8, atol=0.01)
    first_slot = np.bincount(draws[:, 1, 0] - 50, minlength=8) / 3000                    # rows are shuffled
    np.testing.assert_allclose(first_slot, 1 / 8, atol=0.03)
