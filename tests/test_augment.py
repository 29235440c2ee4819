"""Training augmentations for robot clouds (mpnet_model/data/transforms.py) and their use by BlockDataset."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_model.config import ConfigError
from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.dataset import BlockDataset
from mpnet_model.data.room import Room
from mpnet_model.data.transforms import (
    BlockSample,
    RobotAugment,
    floor_error,
    parse_augment,
    partial_view,
    raised_ground,
    stray_points,
    tall_walls,
)

WALL, CEILING, FLOOR = S3DIS_CLASSES.index('wall'), S3DIS_CLASSES.index('ceiling'), S3DIS_CLASSES.index('floor')


def _block(n: int = 400, wall_share: float = 0.8, seed: int = 0) -> BlockSample:
    rng = np.random.default_rng(seed)
    xyz = np.column_stack([rng.uniform(2.0, 3.0, (n, 2)), rng.uniform(0.0, 3.0, n)])
    sem = np.where(rng.random(n) < wall_share, WALL, CEILING)
    sem[:10] = FLOOR
    xyz[sem == CEILING, 2] = 3.0
    return BlockSample(xyz, rng.random((n, 3)).astype(np.float32), sem.astype(np.int64), np.arange(n) // 50,
                       np.arange(n), floor=0.0, centre=np.array([2.5, 2.5]), block_size=1.0)


def test_tall_walls_build_a_facade_without_ceiling():
    block = _block()
    out = tall_walls(block, np.random.default_rng(1), 1.0, WALL, CEILING)
    assert not np.any(out.sem == CEILING)
    assert 5.0 - 1e-6 <= out.xyz[:, 2].max() <= 20.0 + 1e-6
    lifted = out.index < 0
    assert lifted.any() and np.all(out.sem[lifted] == WALL)              # only wall points are stacked
    assert np.all(out.xyz[~lifted, 2] <= 3.0)                          # the floor strip stays where it was
    assert tall_walls(block, np.random.default_rng(1), 0.0, WALL, CEILING) is block
    assert tall_walls(_block(wall_share=0.2), np.random.default_rng(1), 1.0, WALL, CEILING).xyz.shape == \
        _block(wall_share=0.2).xyz.shape                               # not a wall block: unchanged


def test_partial_view_keeps_one_side_of_a_vertical_plane():
    block = _block()
    for seed in range(20):
        out = partial_view(block, np.random.default_rng(seed), 1.0)
        share = len(out.xyz) / len(block.xyz)
        assert 0.29 <= share <= 0.91
        kept = set(out.index.tolist())
        dropped = np.array([i not in kept for i in block.index])
        # separable by a line in x, y: a linear classifier on the kept/dropped split is exact
        from sklearn.svm import LinearSVC
        svm = LinearSVC(C=1e4, max_iter=20000).fit(block.xyz[:, :2] - 2.5, dropped)
        assert svm.score(block.xyz[:, :2] - 2.5, dropped) > 0.99


def test_raised_ground_lifts_one_side_of_a_line_and_keeps_labels():
    from sklearn.svm import LinearSVC

    block = _block(wall_share=0.0)
    block.sem[:] = FLOOR                                                # a block of ground, a ceiling strip on top
    block.sem[-40:] = CEILING
    block.xyz[block.sem == FLOOR, 2] = 0.0
    steps = []
    for seed in range(40):
        out = raised_ground(block, np.random.default_rng(seed), 1.0, FLOOR, CEILING)
        np.testing.assert_array_equal(out.sem, block.sem)
        np.testing.assert_array_equal(out.xyz[:, :2], block.xyz[:, :2])
        moved = np.abs(out.xyz[:, 2] - block.xyz[:, 2]) > 1e-9
        assert not moved[block.sem == CEILING].any()
        share = moved.sum() / (block.sem != CEILING).sum()
        assert 0.15 <= share <= 0.85
        step = np.unique(np.round(out.xyz[moved, 2] - block.xyz[moved, 2], 9))
        assert step.size == 1 and 0.05 <= abs(step[0]) <= 0.2            # one step, 5-20 cm
        steps.append(step[0])
        ground = block.sem != CEILING                                   # the lifted side: one side of a line
        svm = LinearSVC(C=1e4, max_iter=20000).fit(block.xyz[ground, :2] - 2.5, moved[ground])
        assert svm.score(block.xyz[ground, :2] - 2.5, moved[ground]) > 0.99
    assert 0.5 <= np.mean(np.array(steps) > 0) < 1.0                    # mostly up, sometimes down
    assert raised_ground(block, np.random.default_rng(0), 0.0, FLOOR, CEILING) is block
    no_floor = _block()
    no_floor.sem[no_floor.sem == FLOOR] = WALL
    assert raised_ground(no_floor, np.random.default_rng(0), 1.0, FLOOR, CEILING) is no_floor


def test_stray_points_and_floor_error():
    block = _block()
    out = stray_points(block, np.random.default_rng(2), 1.0)
    added = out.index < 0
    assert 1 <= added.sum() <= 3 and np.all(out.sem[added] == -1) and np.all(out.ins[added] == -1)
    assert np.all(np.abs(out.xyz[added, :2] - block.centre) <= 0.5)
    assert np.all((out.xyz[added, 2] >= -5.0) & (out.xyz[added, 2] <= 15.0))
    errors = [floor_error(block, np.random.default_rng(s), 0.1).floor for s in range(200)]
    assert max(map(abs, errors)) <= 0.1 and np.std(errors) > 0.04


def test_parse_and_order():
    assert list(parse_augment('floor_error=0.1, stray_points=0.3,tall_walls=0.2,raised_ground=0.2')) == \
        ['tall_walls', 'raised_ground', 'stray_points', 'floor_error']        # applied in the registry's order
    for bad, why in (('rain=0.2', 'name one of'), ('stray_points', 'name=value'), ('stray_points=x', 'not a number'),
                     ('partial_view=1.5', 'probability')):
        with pytest.raises(ConfigError, match=why):
            parse_augment(bad)
    assert not RobotAugment('', S3DIS_CLASSES) and RobotAugment('stray_points=0.5', S3DIS_CLASSES)


def _room() -> Room:
    rng = np.random.default_rng(0)
    n = 6000
    xyz = np.column_stack([rng.uniform(0, 3, (n, 2)), rng.uniform(0, 3, n)]).astype(np.float32)
    xyz[: n // 3, 2] = 0.0                                             # a floor
    sem = np.where(xyz[:, 2] == 0.0, FLOOR, WALL)
    return Room('r', xyz, rng.random((n, 3)), sem, np.zeros(n, np.int64), S3DIS_CLASSES)


def test_block_dataset_encodes_heights_above_the_floor_and_augments():
    plain = BlockDataset([_room()], num_points=256, min_points=50, progress=False, encoding='floor')
    points, sem, _, chosen = plain.sample(0, np.random.default_rng(0))
    np.testing.assert_allclose(points[:, 2], plain._xyz[0][chosen, 2] - plain._floors[0], atol=1e-6)
    assert abs(plain._floors[0]) < 0.01 and np.all(points[:, 6:8] == 0.5)
    room = BlockDataset([_room()], num_points=256, min_points=50, progress=False)   # 'room': unchanged
    assert room._floors == [None]
    robot = BlockDataset([_room()], num_points=256, min_points=50, progress=False, encoding='floor', augment=True,
                         robot_augment='stray_points=1,floor_error=0.1')
    points, sem, _, chosen = robot.sample(0, np.random.default_rng(0))
    assert points.shape == (256, 9) and np.all(sem[chosen < 0] == -1)
    same = robot.sample(0, np.random.default_rng(0))
    np.testing.assert_array_equal(same[0], points)                     # deterministic in the rng
