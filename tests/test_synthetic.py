"""Tests of the synthetic S3DIS-layout room generator (low density so the whole file runs in seconds)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.synthetic import (
    META_FILENAME,
    RARE_KINDS,
    generate_dataset,
    generate_room,
    layout,
    main,
    room_rng,
    sampling,
    write_room,
)
from mpnet_model.data.synthetic import io as synth_io

LOW = 60.0       # points per m^2: ~5k points per room


def _room(seed: int = 0, index: int = 0, **kwargs):
    return generate_room(room_rng(seed, 1, index), density=kwargs.pop('density', LOW), **kwargs)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_room_arrays_are_consistent_and_inside_the_room():
    xyz, rgb, sem, ins, meta = _room(3, rare_prob=1.0)
    n = len(xyz)
    assert n > 1000 and xyz.shape == (n, 3) and xyz.dtype == np.float32
    assert rgb.shape == (n, 3) and rgb.dtype == np.uint8
    assert sem.dtype == np.int64 and ins.dtype == np.int64
    assert meta['num_points'] == n
    # Within the room box, allowing for the position noise (5 mm std, 6 sigma).
    lo, hi = np.array(meta['bounds_min']), np.array(meta['bounds_max'])
    np.testing.assert_allclose(hi - lo, meta['size'], atol=1e-3)
    assert np.all(xyz >= lo - 0.03) and np.all(xyz <= hi + 0.03)
    # Instance ids are 0..K-1, sorted, each instance has one class matching its meta entry and name.
    instances = meta['instances']
    assert np.all(np.diff(ins) >= 0) and ins[0] == 0 and ins[-1] == len(instances) - 1
    names = [i['name'] for i in instances]
    assert len(set(names)) == len(names)
    assert names == sorted(names, key=lambda s: (s.rsplit('_', 1)[0], int(s.rsplit('_', 1)[1])))
    for info in instances:
        labels = np.unique(sem[ins == info['id']])
        assert labels.tolist() == [S3DIS_CLASSES.index(info['class'])]
        assert info['name'].rsplit('_', 1)[0] == info['class']
    # The structure is always there: exactly one floor, one ceiling, four walls.
    classes = [i['class'] for i in instances]
    assert classes.count('floor') == 1 and classes.count('ceiling') == 1 and classes.count('wall') == 4


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    kwargs = dict(areas={1: 2}, density=LOW, progress=False)
    generate_dataset(tmp_path / 'a', seed=5, **kwargs)
    generate_dataset(tmp_path / 'b', seed=5, **kwargs)
    generate_dataset(tmp_path / 'c', seed=6, **kwargs)
    a, b, c = (_files(tmp_path / k) for k in 'abc')
    timing_free = {k: v for k, v in a.items() if k.name != 'synthetic_dataset.json'}
    assert timing_free == {k: v for k, v in b.items() if k.name != 'synthetic_dataset.json'}
    rooms_a = {k: v for k, v in a.items() if k.suffix == '.txt' and k.parent.name != 'Annotations'}
    rooms_c = {k: v for k, v in c.items() if k.suffix == '.txt' and k.parent.name != 'Annotations'}
    assert len(rooms_a) == 2
    assert sorted(rooms_a.values()) != sorted(rooms_c.values())


def test_room_does_not_depend_on_other_rooms():
    # room (seed, area, index) has its own stream: generating others first changes nothing
    first = _room(9, 2)[0]
    _room(9, 0)
    np.testing.assert_array_equal(first, _room(9, 2)[0])


def test_all_13_classes_appear_and_walls_dominate():
    # beams and columns appear in a minority of rooms (as in S3DIS): allow up to 16 rooms to meet them all
    counts = np.zeros(len(S3DIS_CLASSES), np.int64)
    types = ['office', 'conferenceRoom', 'lobby', 'office', 'storage', 'hallway', 'conferenceRoom', 'office'] * 2
    for index, room_type in enumerate(types):
        sem = _room(1, index, room_type=room_type, density=40.0)[2]
        counts += np.bincount(sem, minlength=len(S3DIS_CLASSES))
        if index >= 5 and counts.min() > 0:
            break
    missing = [c for c, n in zip(S3DIS_CLASSES, counts, strict=True) if n == 0]
    assert not missing, f'classes never generated: {missing}'
    fraction = counts / counts.sum()
    big = fraction[[S3DIS_CLASSES.index(c) for c in ('wall', 'floor', 'ceiling')]]
    rare = fraction[[S3DIS_CLASSES.index(c) for c in ('sofa', 'board', 'beam')]]
    assert big.min() > 0.1 and rare.max() < 0.03        # S3DIS-like imbalance


def test_written_files_read_back_with_the_s3dis_loader(tmp_path):
    from mpnet_model.data.s3dis import load_room

    xyz, rgb, sem, ins, meta = _room(2, 1, rare_prob=1.0)
    room_dir = write_room(tmp_path, 3, 'office_7', xyz, rgb, sem, ins, meta)
    assert room_dir == tmp_path / 'Area_3' / 'office_7'
    room = load_room(room_dir)
    assert room.name == 'Area_3_office_7'
    assert list(room.instance_names) == [i['name'] for i in meta['instances']]
    np.testing.assert_array_equal(room.ins, ins)
    np.testing.assert_array_equal(room.sem, sem)
    np.testing.assert_allclose(room.xyz, xyz, atol=5e-4 + 1e-5, rtol=0)     # %.3f rounding + float32
    np.testing.assert_array_equal(np.rint(room.rgb * 255).astype(np.uint8), rgb)
    # The room file is the concatenation of the annotation files in instance order.
    whole = np.loadtxt(room_dir / 'office_7.txt', ndmin=2)
    assert whole.shape == (len(xyz), 6)
    np.testing.assert_allclose(whole[:, :3], room.xyz, atol=1e-5)
    first_line = (room_dir / 'Annotations' / f"{meta['instances'][0]['name']}.txt").read_text().split('\n')[0]
    assert len(first_line.split()) == 6 and len(first_line.split()[0].split('.')[1]) == 3
    # Sidecar: rare instances are named annotation files.
    side = json.loads((room_dir / META_FILENAME).read_text())
    assert side['area'] == 3 and side['room'] == 'office_7' and side['rare_instances']
    for name in side['rare_instances']:
        assert (room_dir / 'Annotations' / f'{name}.txt').is_file()
    assert not list(room_dir.rglob('*.tmp'))


def test_rewriting_a_room_removes_stale_annotations(tmp_path):
    big = _room(4, 0, room_type='conferenceRoom')
    small = _room(4, 1, room_type='hallway')
    room_dir = write_room(tmp_path, 1, 'room_1', *big)
    write_room(tmp_path, 1, 'room_1', *small)
    on_disk = sorted(p.stem for p in (room_dir / 'Annotations').glob('*.txt'))
    assert on_disk == sorted(i['name'] for i in small[4]['instances'])


def test_rare_arrangements_are_flagged_only_when_asked():
    seen = set()
    for index in range(6):
        meta = _room(7, index, rare_prob=1.0, density=30.0)[4]
        assert meta['rare_arrangements'], 'rare_prob=1 must give at least one arrangement'
        assert meta['rare_instances']
        seen.update(meta['rare_arrangements'])
        flagged = {i['rare'] for i in meta['instances'] if i['rare']}
        assert flagged <= set(meta['rare_arrangements'])
    assert len(seen) >= 3 and seen <= set(RARE_KINDS)
    for index in range(3):
        meta = _room(7, index, rare_prob=0.0, density=30.0)[4]
        assert meta['rare_arrangements'] == [] and meta['rare_instances'] == []


def test_stacked_chairs_share_a_footprint_and_rise_by_9cm():
    scene = layout._Scene(np.random.default_rng(0), np.array([5.0, 5.0, 3.0]))
    assert layout._rare(scene, 'stacked_chairs')
    chairs = [i for i, inst in enumerate(scene.instances) if inst.rare == 'stacked_chairs']
    assert 2 <= len(chairs) <= 4
    seats = np.array([next(p.centre for p in scene.parts if p.inst == i) for i in chairs])   # first part = seat
    np.testing.assert_allclose(seats[1:, :2], np.repeat(seats[:1, :2], len(seats) - 1, axis=0), atol=1e-9)
    np.testing.assert_allclose(np.diff(seats[:, 2]), 0.09, atol=1e-9)


def _box_arrays(centre, half, occluder=True, inst=0):
    part = layout._Part(inst, np.asarray(centre, float), np.asarray(half, float), np.eye(3), (True,) * 6,
                           np.ones(3), occluder=occluder)
    return sampling._PartArrays.from_parts([part])


def test_visibility_hand_case():
    # Scanner at the origin looking along +x; a 0.2 m cube centred at x=1 blocks the ray to (2, 0, 0).
    arr = _box_arrays([1.0, 0.0, 0.0], [0.1, 0.1, 0.1], inst=5)
    xyz = np.array([[2.0, 0.0, 0.0],     # behind the cube: hidden
                    [2.0, 0.5, 0.0],     # ray passes 0.25 m beside the cube: seen
                    [0.5, 0.0, 0.0],     # in front of the cube: seen
                    [2.0, 0.5, 0.0],     # seen position but its face turns away from the scanner: hidden
                    [0.9, 0.0, 0.0]])    # on the cube's own face (same instance): seen
    normal = np.array([[-1.0, 0, 0], [-1, 0, 0], [-1, 0, 0], [1, 0, 0], [-1, 0, 0]])
    inst = np.array([0, 0, 0, 0, 5])
    seen = sampling._visible(xyz, normal, inst, arr, np.zeros((1, 3)))
    assert seen.tolist() == [False, True, True, False, True]
    # A second scanner that sees the first point around the cube restores it.
    seen2 = sampling._visible(xyz, normal, inst, arr, np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert seen2.tolist() == [True, True, True, False, True]


def test_inside_solids_hand_case():
    arr = _box_arrays([0.0, 0.0, 0.5], [0.5, 0.5, 0.5])
    xyz = np.array([[-0.2, 0.0, 0.5], [0.0, 0.0, 1.0], [0.3, 0.1, 0.2], [0.7, 0.0, 0.5]])   # sorted by x
    # inside, on the top face (kept), inside, outside
    assert sampling._inside_solids(xyz, arr).tolist() == [True, False, True, False]


def test_sampling_density_matches_area():
    arr = _box_arrays([0.0, 0.0, 0.0], [1.0, 0.5, 0.25])
    xyz, normal, part = sampling._sample_faces(arr, 2000.0, np.random.default_rng(0))
    area = 2 * (2.0 * 1.0 + 2.0 * 0.5 + 1.0 * 0.5)      # 7 m^2
    assert abs(len(xyz) - 2000.0 * area) < 4 * np.sqrt(2000.0 * area)
    # every point lies on the box surface and its normal is the face's outward axis
    on_face = np.isclose(np.abs(xyz), [1.0, 0.5, 0.25]).any(axis=1)
    assert on_face.all()
    np.testing.assert_allclose(np.abs(normal).sum(axis=1), 1.0)
    axis = np.abs(normal).argmax(axis=1)
    assert np.all(np.sign(xyz[np.arange(len(xyz)), axis]) == normal[np.arange(len(xyz)), axis])


def test_format_points_exact():
    text = synth_io._format_points(np.array([[1.23449, -0.0004, 10.5]], np.float64), np.array([[0, 128, 255]]))
    assert text == '1.234 -0.000 10.500 0 128 255\n'


def test_bad_input_is_rejected_with_clear_messages(tmp_path):
    with pytest.raises(ValueError, match='density'):
        generate_room(np.random.default_rng(0), density=0)
    with pytest.raises(ValueError, match='room_type'):
        generate_room(np.random.default_rng(0), room_type='kitchen')
    xyz, rgb, sem, ins, meta = _room(0, 0, density=20.0)
    with pytest.raises(ValueError, match='lengths differ'):
        write_room(tmp_path, 1, 'r', xyz[:-1], rgb, sem, ins, meta)
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--areas', 'x'])


def test_cli_writes_dataset_with_previews(tmp_path, capsys):
    assert main(['--out', str(tmp_path), '--areas', '1,3', '--rooms-per-area', '1', '--seed', '2',
                 '--density', '30', '--quiet', '--preview']) == 0
    assert 'wrote 2 rooms' in capsys.readouterr().out
    summary = json.loads((tmp_path / 'synthetic_dataset.json').read_text())
    assert [r['area'] for r in summary['rooms']] == [1, 3]
    assert abs(sum(summary['class_fraction'].values()) - 1.0) < 1e-3
    for r in summary['rooms']:
        room_dir = tmp_path / f"Area_{r['area']}" / r['room']
        assert (room_dir / f"{r['room']}.txt").is_file()
        assert (room_dir / 'preview.png').read_bytes()[:4] == b'\x89PNG'
