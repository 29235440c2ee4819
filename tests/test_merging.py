"""BlockMerging: hand-made blocks with a known merge, and equality with a per-point loop of the same algorithm."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from mpnet_model.infer.merging import BlockMerger, block_merging, block_merging_reference, join_across_borders
from tests.postprocess_fixtures import lidar_merge_case, needs_cuda, needs_data


def reference_block_merging(blocks, room_min, gap, min_points=0, overlap_min=7, new_group_min_points=30):
    """Straightforward per-point loop of the SAME algorithm (ASIS BlockMerging with the documented fixes).

    blocks: list of (xyz (P,3), instance (P,), semantic (P,)). Returns the (T,) final ids of all points in order.
    """
    volume = {}  # voxel (i, j, k) -> (scene id, class)
    next_id = 0
    voxels_added, classes_added = [], []
    for xyz, instance, semantic in blocks:
        voxels = [tuple(math.floor((float(p[a]) - float(room_min[a])) / gap) for a in range(3)) for p in xyz]
        group_points = {}
        for i, g in enumerate(instance):
            if g >= 0:
                group_points.setdefault(int(g), []).append(i)
        group_class = {}
        for g, members in group_points.items():
            votes = Counter(int(semantic[i]) for i in members)
            top = max(votes.values())
            group_class[g] = min(c for c, n in votes.items() if n == top)
        overlap = {g: {} for g in group_points}
        for i, g in enumerate(instance):
            if g >= 0 and voxels[i] in volume and volume[voxels[i]][1] == group_class[int(g)]:
                stored = volume[voxels[i]][0]
                overlap[int(g)][stored] = overlap[int(g)].get(stored, 0) + 1
        scene_id = {}
        for g in sorted(group_points):
            best_count, best_id = 0, -1
            for stored, count in sorted(overlap[g].items()):
                if count > best_count:
                    best_count, best_id = count, stored
            size = len(group_points[g])
            if best_count == 0 or (best_count < overlap_min and size >= new_group_min_points):
                scene_id[g] = next_id
                next_id += 1
            else:
                scene_id[g] = best_id
        for i, g in enumerate(instance):
            if g >= 0 and voxels[i] not in volume:
                volume[voxels[i]] = (scene_id[int(g)], group_class[int(g)])
        voxels_added += voxels
        classes_added += [int(c) for c in semantic]
    point_ids = [volume[v][0] if v in volume else -1 for v in voxels_added]
    counts, votes = Counter(), {}
    for pid, c in zip(point_ids, classes_added):
        if pid >= 0:
            counts[pid] += 1
            votes.setdefault(pid, Counter())[c] += 1
    renumber = {}
    for pid in sorted(counts):
        top = max(votes[pid].values())
        cls = min(c for c, n in votes[pid].items() if n == top)
        threshold = min_points if np.ndim(min_points) == 0 else min_points[cls]
        if counts[pid] >= threshold:
            renumber[pid] = len(renumber)
    return np.array([renumber.get(pid, -1) for pid in point_ids], dtype=np.int64)


def _grid_object(origin, size, step=0.01):
    """Points on a regular grid filling a box: one point per 1 cm cell, so one point per voxel at gap 1 cm."""
    axes = [np.arange(o + step / 2, o + s, step) for o, s in zip(origin, size)]
    return np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)


def _merge_all(blocks, room_min, room_max, gap, **kwargs):
    merger = BlockMerger(room_min, room_max, gap)
    for block in blocks:
        merger.add_block(*block)
    return merger.finalize(**kwargs)


def test_two_blocks_sharing_half_an_object_give_one_id():
    table = _grid_object((0.0, 0.0, 0.0), (0.2, 0.1, 0.05))  # (1000,3)
    left, right = table[table[:, 0] < 0.15], table[table[:, 0] >= 0.05]  # overlap: x in [0.05, 0.15)
    # Different local ids in the two blocks: the merge must map both to one scene id.
    blocks = [(left, np.full(len(left), 3), np.full(len(left), 7)),
              (right, np.full(len(right), 0), np.full(len(right), 7))]
    result = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01)
    assert set(result.instances.tolist()) == {0}
    np.testing.assert_array_equal(result.semantic, [7])
    np.testing.assert_array_equal(result.sizes, [len(left) + len(right)])


def test_overlap_of_another_class_does_not_merge():
    table = _grid_object((0.0, 0.0, 0.0), (0.2, 0.1, 0.05))
    left, right = table[table[:, 0] < 0.15], table[table[:, 0] >= 0.05]
    blocks = [(left, np.zeros(len(left), int), np.full(len(left), 7)),
              (right, np.zeros(len(right), int), np.full(len(right), 8))]
    result = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01)
    assert result.semantic.tolist() == [7, 8]


def test_disjoint_objects_get_different_ids():
    chair = _grid_object((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))
    lamp = _grid_object((0.5, 0.5, 0.0), (0.1, 0.1, 0.1))
    xyz = np.concatenate([chair, lamp])
    instance = np.r_[np.zeros(len(chair), int), np.ones(len(lamp), int)]
    # Second block sees the same two objects with swapped local ids: each keeps its own scene id.
    blocks = [(xyz, instance, np.zeros(len(xyz), int)), (xyz, 1 - instance, np.zeros(len(xyz), int))]
    result = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01)
    n = len(xyz)
    np.testing.assert_array_equal(result.instances[:n], instance)
    np.testing.assert_array_equal(result.instances[n:], instance)


def test_more_than_100_groups_in_a_block():
    # 150 small cubes on a line, one group each (the reference's (100, 300) arrays overflow here).
    cubes = [_grid_object((0.04 * i, 0.0, 0.0), (0.03, 0.03, 0.04)) for i in range(150)]  # 36 points each
    xyz = np.concatenate(cubes)
    instance = np.repeat(np.arange(150), [len(c) for c in cubes])
    blocks = [(xyz, instance, np.zeros(len(xyz), int)), (xyz, (instance + 7) % 150, np.zeros(len(xyz), int))]
    result = _merge_all(blocks, (0, 0, 0), (6.5, 1, 1), gap=0.01)
    assert result.sizes.size == 150
    np.testing.assert_array_equal(result.instances[:len(xyz)], instance)
    np.testing.assert_array_equal(result.instances[len(xyz):], instance)


def test_small_group_without_overlap_is_not_merged_into_id_0():
    big = _grid_object((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))  # 1000 points, becomes scene id 0
    small = _grid_object((0.5, 0.5, 0.5), (0.02, 0.02, 0.02))  # 8 points (< 30), overlaps nothing
    blocks = [(big, np.zeros(len(big), int), np.zeros(len(big), int)),
              (small, np.zeros(len(small), int), np.zeros(len(small), int))]
    result = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01)
    assert set(result.instances[len(big):].tolist()) == {1}  # the reference would give 0
    dropped = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01, min_points=10)
    assert set(dropped.instances[len(big):].tolist()) == {-1}  # removed by the size filter, not merged
    assert set(dropped.instances[:len(big)].tolist()) == {0}


def test_small_group_with_weak_overlap_adopts_existing_id():
    big = _grid_object((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))
    small = _grid_object((0.09, 0.0, 0.0), (0.03, 0.02, 0.02))  # 12 points, 4 inside `big` (< 7, size < 30)
    blocks = [(big, np.zeros(len(big), int), np.zeros(len(big), int)),
              (small, np.zeros(len(small), int), np.zeros(len(small), int))]
    result = _merge_all(blocks, (0, 0, 0), (1, 1, 1), gap=0.01)
    assert set(result.instances.tolist()) == {0}


def test_per_class_min_points_and_unlabelled_points():
    a = _grid_object((0.0, 0.0, 0.0), (0.1, 0.1, 0.05))  # 500 points, class 0
    b = _grid_object((0.5, 0.0, 0.0), (0.1, 0.1, 0.05))  # 500 points, class 1
    xyz = np.concatenate([a, b])
    semantic = np.r_[np.zeros(500, int), np.ones(500, int)]
    instance = np.r_[np.zeros(500, int), np.ones(500, int)]
    instance[:10] = -1  # unlabelled points: no id (their voxels stay empty)
    result = _merge_all([(xyz, instance, semantic)], (0, 0, 0), (1, 1, 1), gap=0.01,
                        min_points=np.array([400, 600]))
    assert (result.instances[:10] == -1).all() and (result.instances[10:500] == 0).all()
    assert (result.instances[500:] == -1).all()  # class 1 needs 600 points
    np.testing.assert_array_equal(result.semantic, [0])


def _random_room(num_blocks, points_per_block, rng):
    """Blocks of 1 m x 1 m at stride 0.5 m over a 3 m x 3 m room, with random box-shaped instances."""
    boxes_lo = rng.uniform(0, 2.6, size=(25, 3)) * [1, 1, 0.5]
    boxes_hi = boxes_lo + rng.uniform(0.15, 0.5, size=(25, 3))
    box_class = rng.integers(0, 3, 25)
    blocks = []
    for k in range(num_blocks):
        x0, y0 = 0.5 * (k % 5), 0.5 * ((k // 5) % 5)
        xyz = rng.uniform([x0, y0, 0.0], [x0 + 1, y0 + 1, 1.5], size=(points_per_block, 3))
        inside = np.all((xyz[:, None] >= boxes_lo) & (xyz[:, None] <= boxes_hi), -1)  # (P,25)
        box = np.where(inside.any(1), inside.argmax(1), -1)
        # Block-local ids: a random permutation of the boxes, with some clustering noise.
        local = np.where(box >= 0, rng.permutation(25)[box], -1)
        noise = rng.random(points_per_block) < 0.05
        local[noise] = rng.integers(-1, 25, int(noise.sum()))
        semantic = np.where(box >= 0, box_class[box], 2)
        semantic[noise] = rng.integers(0, 3, int(noise.sum()))
        blocks.append((xyz, local, semantic))
    return blocks


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_equals_loop_reference_on_random_rooms(seed):
    rng = np.random.default_rng(seed)
    blocks = _random_room(12, 800, rng)
    # Coarse voxels: many shared voxels, so strong and weak adoptions, new ids and class mismatches all occur.
    gap = 0.1
    expected = reference_block_merging(blocks, (0, 0, 0), gap, min_points=20)
    result = _merge_all(blocks, (0, 0, 0), (3.5, 3.5, 1.5), gap, min_points=20)
    np.testing.assert_array_equal(result.instances, expected)
    assert len(set(expected.tolist()) - {-1}) > 3  # the case is not degenerate


def test_add_block_returns_stored_ids():
    table = _grid_object((0.0, 0.0, 0.0), (0.2, 0.1, 0.05))
    merger = BlockMerger((0, 0, 0), (1, 1, 1), gap=0.01)
    first = merger.add_block(table, np.full(len(table), 5), np.zeros(len(table), int))
    second = merger.add_block(table, np.full(len(table), 9), np.zeros(len(table), int))
    assert set(first.tolist()) == {0} and set(second.tolist()) == {0}
    assert merger.num_voxels == len(table)


def test_functional_block_merging_scatters_to_room_points():
    table = _grid_object((0.0, 0.0, 0.0), (0.2, 0.1, 0.05))  # room of 1000 points
    lamp = _grid_object((0.5, 0.5, 0.0), (0.1, 0.1, 0.1))
    room = np.concatenate([table, lamp, [[0.9, 0.9, 0.9]]])  # last point never in a block
    table_idx = np.arange(len(table))
    lamp_idx = len(table) + np.arange(len(lamp))
    left, right = table_idx[table[:, 0] < 0.15][:600], table_idx[table[:, 0] >= 0.05][:600]
    block_indices = np.stack([np.r_[left, lamp_idx[:400]], np.r_[right, lamp_idx[200:600]]])  # (2,1000)
    block_instances = np.stack([np.r_[np.zeros(600, int), np.ones(400, int)],
                                np.r_[np.ones(600, int), np.zeros(400, int)]])
    block_semantic = np.stack([np.r_[np.zeros(600, int), np.ones(400, int)],
                               np.r_[np.zeros(600, int), np.ones(400, int)]])
    scene = block_merging(room, block_indices, block_instances, block_semantic, gap=0.01)
    assert scene.shape == (len(room),) and scene[-1] == -1
    assert len(set(scene[np.unique(np.r_[left, right])].tolist())) == 1
    assert len(set(scene[lamp_idx[:600]].tolist())) == 1 and scene[lamp_idx[0]] != scene[left[0]]
    assert (scene[lamp_idx[600:]] == -1).all()  # never sampled


def _shared_point_room(seed, num_blocks=12, points_per_block=800, gap=0.1):
    """`_random_room` as a room cloud whose blocks sample shared room points (with repeats), as room_to_blocks."""
    rng = np.random.default_rng(seed)
    blocks = _random_room(num_blocks, points_per_block, rng)
    room = np.concatenate([xyz for xyz, _, _ in blocks])
    indices = np.arange(room.shape[0]).reshape(num_blocks, points_per_block)
    instances = np.stack([instance for _, instance, _ in blocks])
    semantic = np.stack([semantic for _, _, semantic in blocks])
    # Each block also resamples 10 % of its points (repeats, as a sparse block drawn up to P points).
    repeat = rng.random(indices.shape) < 0.1
    source = rng.integers(0, points_per_block, indices.shape)
    rows = np.arange(num_blocks)[:, None].repeat(points_per_block, 1)
    for array in (indices, instances, semantic):
        array[repeat] = array[rows[repeat], source[repeat]]
    return room, indices, instances, semantic


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('gap', [0.1, 0.03])
def test_frame_merge_equals_block_loop_on_random_rooms(seed, gap):
    room, indices, instances, semantic = _shared_point_room(seed)
    expected = block_merging_reference(room, indices, instances, semantic, gap=gap, min_points=20)
    result = block_merging(room, indices, instances, semantic, gap=gap, min_points=20)
    assert isinstance(result, np.ndarray) and result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)
    assert len(set(expected.tolist()) - {-1}) > 3


def test_frame_merge_equals_block_loop_when_copies_disagree():
    """Copies of a room point with different labels in one block (a non-deterministic model) stay separate."""
    room, indices, instances, semantic = _shared_point_room(3)
    indices[:, 1::2] = indices[:, ::2]  # every point twice, the copy with its own (random) labels
    expected = block_merging_reference(room, indices, instances, semantic, gap=0.1)
    np.testing.assert_array_equal(block_merging(room, indices, instances, semantic, gap=0.1), expected)


@needs_data
@pytest.mark.parametrize(('gap', 'min_points'), [(0.005, 0), (0.05, 30), (0.2, np.array([10, 20, 30, 40, 50]))])
def test_frame_merge_equals_block_loop_on_a_real_block_layout(gap, min_points):
    """400 blocks of the Ouster frame, cut as the node cuts it (overlaps, sparse resampled blocks)."""
    xyz, indices, instances, semantic = lidar_merge_case()
    expected = block_merging_reference(xyz, indices, instances, semantic, gap=gap, min_points=min_points)
    result = block_merging(xyz, indices, instances, semantic, gap=gap, min_points=min_points)
    np.testing.assert_array_equal(result, expected)
    assert len(set(expected.tolist())) > 50


def test_frame_merge_torch_input_returns_tensor():
    room, indices, instances, semantic = _shared_point_room(0)
    expected = block_merging(room, indices, instances, semantic, gap=0.1)
    result = block_merging(torch.from_numpy(room), torch.from_numpy(indices), instances, semantic, gap=0.1)
    assert isinstance(result, torch.Tensor) and result.dtype == torch.int64
    np.testing.assert_array_equal(result.numpy(), expected)


def test_frame_merge_gpu_strategy_on_the_cpu(monkeypatch):
    """The GPU code path (torch sorts instead of numpy's), run on CPU tensors."""
    import mpnet_model.infer.merging as merging

    monkeypatch.setattr(merging, '_cpu_strategy', lambda device: False)
    room, indices, instances, semantic = _shared_point_room(2)
    expected = block_merging_reference(room, indices, instances, semantic, gap=0.1, min_points=20)
    np.testing.assert_array_equal(block_merging(room, indices, instances, semantic, gap=0.1, min_points=20),
                                  expected)


@needs_cuda
def test_frame_merge_on_cuda_stays_on_device_and_matches():
    room, indices, instances, semantic = _shared_point_room(1)
    expected = block_merging_reference(room, indices, instances, semantic, gap=0.1, min_points=20)
    result = block_merging(*(torch.from_numpy(a).cuda() for a in (room, indices, instances, semantic)), gap=0.1,
                           min_points=20)
    assert result.device.type == 'cuda'
    np.testing.assert_array_equal(result.cpu().numpy(), expected)


@pytest.mark.parametrize(('change', 'message'), [
    (lambda a: a.update(room_xyz=a['room_xyz'][:, :2]), r'room_xyz must have shape \(N, 3\)'),
    (lambda a: a.update(block_instances=a['block_instances'][:, :5]), 'share a'),
    (lambda a: a['room_xyz'].__setitem__((0, 0), np.nan), 'NaN'),
    (lambda a: a['block_indices'].__setitem__((0, 0), 10 ** 6), 'block_indices must lie in'),
    (lambda a: a.update(block_instances=a['block_instances'].astype(float)), 'integers'),
    (lambda a: a['block_instances'].__setitem__((0, 0), -2), 'block_instances must be >= -1'),
    (lambda a: a['block_semantic'].__setitem__((0, 0), -1), 'block_semantic must lie in'),
    (lambda a: a.update(gap=0.0), 'gap'),
    (lambda a: a.update(min_points=np.array([5])), 'min_points has 1 classes'),
    (lambda a: a.update(min_points=np.zeros((2, 2))), 'scalar or'),
])
def test_frame_merge_bad_input_raises(change, message):
    room, indices, instances, semantic = _shared_point_room(0, num_blocks=2, points_per_block=100)
    arguments = dict(room_xyz=room, block_indices=indices, block_instances=instances, block_semantic=semantic,
                     gap=0.1)
    change(arguments)
    with pytest.raises(ValueError, match=message):
        block_merging(**arguments)


def test_sparse_map_handles_a_large_window():
    # 40 m x 40 m x 4 m at 5 mm would be 5e10 dense voxels; the map only holds the occupied ones.
    merger = BlockMerger((-20, -20, 0), (20, 20, 4), gap=0.005)
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-20, -20, 0], [20, 20, 4], size=(4096, 3))
    merger.add_block(xyz, np.zeros(4096, int), np.zeros(4096, int))
    assert merger.num_voxels == 4096


@pytest.mark.parametrize(('args', 'message'), [
    ((np.zeros((4, 2)), np.zeros(4, int), np.zeros(4, int)), 'shape'),
    ((np.zeros((4, 3)), np.zeros(3, int), np.zeros(4, int)), 'block_instance'),
    ((np.zeros((4, 3)), np.zeros(4), np.zeros(4, int)), 'integers'),
    ((np.zeros((4, 3)), np.zeros(4, int), -np.ones(4, int)), 'block_semantic'),
    ((np.full((4, 3), 5.0), np.zeros(4, int), np.zeros(4, int)), 'outside the room'),
])
def test_bad_block_raises(args, message):
    with pytest.raises(ValueError, match=message):
        BlockMerger((0, 0, 0), (1, 1, 1), gap=0.01).add_block(*args)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match='gap'):
        BlockMerger((0, 0, 0), (1, 1, 1), gap=0)
    with pytest.raises(ValueError, match='bounds'):
        BlockMerger((0, 0, 0), (-1, 1, 1))


def test_empty_block_and_empty_merger():
    merger = BlockMerger((0, 0, 0), (1, 1, 1), gap=0.01)
    assert merger.finalize().instances.shape == (0,)
    assert merger.add_block(np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, int)).shape == (0,)
    block = _grid_object((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))
    merger.add_block(block, np.full(len(block), -1), np.zeros(len(block), int))  # nothing labelled
    assert (merger.finalize().instances == -1).all() and merger.num_voxels == 0


def _tiles_case():
    """Two 1 m tiles [0,1] and [1,2] (x) of a 1 m strip: points every 5 cm, each point in the tile(s) holding it.
    -> xyz (N,3) tensor, memberships (points, blocks), block min corners (2,2)."""
    xs, ys = np.meshgrid(np.arange(0.025, 2.0, 0.05), np.arange(0.025, 1.0, 0.05), indexing='ij')
    xyz = torch.tensor(np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1))
    tiles = [torch.nonzero((xyz[:, 0] >= lo) & (xyz[:, 0] <= lo + 1)).squeeze(1) for lo in (0.0, 1.0)]
    blocks = torch.cat([torch.full_like(t, k) for k, t in enumerate(tiles)])
    return xyz, torch.cat(tiles), blocks, torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)


def test_border_join_joins_a_plane_split_by_a_tile_border():
    xyz, points, blocks, corners = _tiles_case()
    instances = (xyz[:, 0] > 1).long()  # the plane: id 0 in the left tile, id 1 in the right one
    classes = torch.zeros_like(instances)
    joined = join_across_borders(xyz, instances, classes, points, blocks, corners, 1.0, 0.1)
    assert joined.unique().tolist() == [0]
    # Too short a reach (below the 5 cm spacing) joins nothing; off is the plain merge.
    np.testing.assert_array_equal(join_across_borders(xyz, instances, classes, points, blocks, corners, 1.0, 0.04),
                                  instances)


def test_border_join_keeps_separated_objects_and_other_classes_apart():
    xyz, points, blocks, corners = _tiles_case()
    gap = (xyz[:, 0] > 0.8) & (xyz[:, 0] < 1.2)   # two objects of one class 40 cm apart across the border
    instances = torch.where(gap, -1, (xyz[:, 0] > 1).long())
    classes = torch.zeros_like(instances)
    np.testing.assert_array_equal(join_across_borders(xyz, instances, classes, points, blocks, corners, 1.0, 0.2),
                                  instances)
    # Touching across the border but of different classes: apart.
    instances = (xyz[:, 0] > 1).long()
    np.testing.assert_array_equal(join_across_borders(xyz, instances, instances.clone(), points, blocks, corners,
                                                      1.0, 0.2), instances)


def test_border_join_respects_a_split_made_inside_one_block():
    # A third block covering both sides ([0.5, 1.5]) saw the two pieces together and kept them apart: no join.
    xyz, points, blocks, corners = _tiles_case()
    middle = torch.nonzero((xyz[:, 0] >= 0.5) & (xyz[:, 0] <= 1.5)).squeeze(1)
    points, blocks = torch.cat([points, middle]), torch.cat([blocks, torch.full_like(middle, 2)])
    corners = torch.cat([corners, torch.tensor([[0.5, 0.0]], dtype=torch.float64)])
    instances = (xyz[:, 0] > 1).long()
    np.testing.assert_array_equal(join_across_borders(xyz, instances, torch.zeros_like(instances), points, blocks,
                                                      corners, 1.0, 0.2), instances)


def test_border_join_chains_pieces_order_independently():
    # Three tiles, the plane in three pieces with ids given in a shuffled order: one component, smallest id.
    xs, ys = np.meshgrid(np.arange(0.025, 3.0, 0.05), np.arange(0.025, 1.0, 0.05), indexing='ij')
    xyz = torch.tensor(np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1))
    tiles = [torch.nonzero((xyz[:, 0] >= lo) & (xyz[:, 0] <= lo + 1)).squeeze(1) for lo in (0.0, 1.0, 2.0)]
    blocks = torch.cat([torch.full_like(t, k) for k, t in enumerate(tiles)])
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    instances = torch.tensor([5, 2, 7])[torch.clamp((xyz[:, 0] // 1).long(), max=2)]
    joined = join_across_borders(xyz, instances, torch.zeros_like(instances), torch.cat(tiles), blocks, corners,
                                 1.0, 0.1)
    assert joined.unique().tolist() == [2]


@needs_cuda
def test_border_join_on_cuda_stays_on_device_and_matches():
    xyz, points, blocks, corners = _tiles_case()
    instances = torch.where(xyz[:, 1] > 0.5, 3, (xyz[:, 0] > 1).long())  # a split lower plane, one upper plane
    classes = (xyz[:, 1] > 0.5).long()
    expected = join_across_borders(xyz, instances, classes, points, blocks, corners, 1.0, 0.1)
    on_gpu = join_across_borders(*(t.cuda() for t in (xyz, instances, classes, points, blocks, corners)), 1.0, 0.1)
    assert on_gpu.device.type == 'cuda'
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), expected.numpy())
    assert expected.unique().tolist() == [0, 3]
