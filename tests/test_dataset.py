"""Room cache (build_cache) and BlockDataset."""
import os

import numpy as np
import pytest
import torch
from fixtures_data import write_s3dis_area

from mpnet_model.data import s3dis
from mpnet_model.data.dataset import BlockDataset, build_cache, cache_path
from mpnet_model.data.room import Room, load_room_npz

pytestmark = pytest.mark.filterwarnings('ignore::mpnet_model.data.s3dis.S3DISFormatWarning')


@pytest.fixture()
def area(tmp_path):
    root = tmp_path / 's3dis'
    expected = write_s3dis_area(root, area=2)
    return s3dis.list_rooms(root, areas=[2]), expected


def test_build_cache_round_trips_rooms_and_leaves_no_temp_files(area, tmp_path):
    rooms, expected = area
    paths = build_cache(rooms, tmp_path / 'cache', progress=False)
    assert [p.name for p in paths] == ['Area_2_hallway_6.npz', 'Area_2_office_1.npz']
    for path, room_dir in zip(paths, rooms):
        room = load_room_npz(path)
        truth = expected[room_dir.name]
        assert room.name == f'Area_2_{room_dir.name}'
        assert room.instance_names == s3dis.load_room(room_dir).instance_names
        for key in ('xyz', 'rgb', 'sem', 'ins'):
            np.testing.assert_array_equal(getattr(room, key), truth[key])
    assert sorted(os.listdir(tmp_path / 'cache')) == ['Area_2_hallway_6.npz', 'Area_2_office_1.npz']


def test_build_cache_reuses_fresh_entries_and_rebuilds_stale_ones(area, tmp_path):
    rooms, _ = area
    calls = []

    def counting_loader(room_dir):
        calls.append(room_dir.name)
        return s3dis.load_room(room_dir)

    build_cache(rooms, tmp_path / 'cache', loader=counting_loader, progress=False)
    assert len(calls) == 2
    build_cache(rooms, tmp_path / 'cache', loader=counting_loader, progress=False)
    assert len(calls) == 2                                   # nothing changed: no re-parse
    source = rooms[1] / 'Annotations' / 'floor_1.txt'
    source.write_text(source.read_text() + '0.5 0.5 0.5 1 2 3\n')
    build_cache(rooms, tmp_path / 'cache', loader=counting_loader, progress=False)
    assert calls[2:] == ['office_1']                         # only the changed room
    assert load_room_npz(cache_path(rooms[1], tmp_path / 'cache')).num_points == 6 * 7 + 1


def make_room(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([2, -1, 0], [5, 1, 3], size=(n, 3))
    rgb = rng.integers(0, 256, size=(n, 3)) / 255.0
    return Room(f'room{seed}', xyz, rgb, rng.integers(-1, 13, n), rng.integers(-1, 20, n), s3dis.S3DIS_CLASSES)


def test_block_dataset_items_match_the_room():
    room = make_room()
    dataset = BlockDataset([room], num_points=256, min_points=50, progress=False)
    assert len(dataset) == 5 * 3           # 3 m x 2 m room: 5 x 3 blocks of 1 m, stride 0.5 m
    points, sem, ins = dataset[4]
    assert points.shape == (256, 9) and points.dtype == torch.float32
    assert sem.shape == ins.shape == (256,) and sem.dtype == ins.dtype == torch.int64
    _, _, _, chosen = dataset.sample(4, np.random.default_rng([0, 0, 4]))
    np.testing.assert_array_equal(sem.numpy(), room.sem[chosen])
    np.testing.assert_array_equal(ins.numpy(), room.ins[chosen])
    np.testing.assert_allclose(points[:, 3:6].numpy(), room.rgb[chosen], atol=1e-7)
    extent = room.xyz.max(axis=0) - room.xyz.min(axis=0)
    np.testing.assert_allclose(points[:, 6:9].numpy() * extent + room.xyz.min(axis=0), room.xyz[chosen], atol=1e-5)
    np.testing.assert_array_equal(dataset.class_point_counts(), np.bincount(room.sem[room.sem >= 0], minlength=13))
    name, origin = dataset.block_info(4)
    center = room.xyz.min(axis=0)[:2] + origin + 0.5
    np.testing.assert_allclose(points[:, :2].numpy() + center, room.xyz[chosen, :2], atol=1e-5)


def test_block_dataset_resamples_per_epoch_and_is_reproducible():
    dataset = BlockDataset([make_room()], num_points=128, min_points=50, progress=False)
    first = dataset[3][0]
    assert torch.equal(first, dataset[3][0])
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[3][0])
    dataset.set_epoch(0)
    assert torch.equal(first, dataset[3][0])


def test_block_dataset_from_cache_dir_with_a_dataloader(area, tmp_path):
    rooms, expected = area
    build_cache(rooms, tmp_path / 'cache', progress=False)
    dataset = BlockDataset(tmp_path / 'cache', num_points=32, min_points=1, progress=False)
    assert dataset.room_names == ['Area_2_hallway_6', 'Area_2_office_1']
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True)
    points, sem, ins = next(iter(loader))
    assert points.shape == (2, 32, 9) and sem.shape == ins.shape == (2, 32)
    assert set(sem.unique().tolist()) <= {int(s) for truth in expected.values() for s in truth['sem']}


def test_augmentation_rotates_block_xy_and_keeps_room_channels():
    dataset = BlockDataset([make_room()], num_points=128, min_points=50, progress=False)
    plain = dataset.sample(2, np.random.default_rng(5))[0]
    augmented = BlockDataset([make_room()], num_points=128, min_points=50, augment=True,
                             progress=False).sample(2, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(plain[:, 3:9], augmented[:, 3:9])
    assert not np.allclose(plain[:, :2], augmented[:, :2], atol=0.1)
    radius_change = np.abs(np.linalg.norm(plain[:, :2], axis=1) - np.linalg.norm(augmented[:, :2], axis=1))
    assert radius_change.max() <= 0.05 * np.sqrt(2) + 1e-5   # a rotation about z, plus clipped jitter


def test_bad_dataset_input():
    with pytest.raises(FileNotFoundError, match='room cache directory'):
        BlockDataset('/nonexistent/cache', progress=False)
    with pytest.raises(TypeError, match='expected Room objects'):
        BlockDataset([42], progress=False)
    other = make_room()
    other.class_names = ('a', 'b') * 10
    with pytest.raises(ValueError, match='has classes'):
        BlockDataset([make_room(), other], num_points=8, min_points=1, progress=False)


def test_class_mean_instance_points_hand_computed():
    xyz = np.random.default_rng(0).random((10, 3)).astype(np.float32) * 2
    # instance 0: 4 points of class 2 (one mislabelled 5: majority wins), instance 1: 2 points of class 2,
    # instance 2: 3 points of class 7, one unannotated point.
    sem = np.array([2, 2, 2, 5, 2, 2, 7, 7, 7, -1])
    ins = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, -1])
    room = Room('r', xyz, np.zeros((10, 3)), sem, ins, s3dis.S3DIS_CLASSES)
    sizes = BlockDataset([room], num_points=4, min_points=1, progress=False).class_mean_instance_points()
    expected = np.zeros(13)
    expected[2], expected[7] = (4 + 2) / 2, 3
    np.testing.assert_allclose(sizes, expected)
