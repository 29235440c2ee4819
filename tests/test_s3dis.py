"""S3DIS raw-release loader on a tiny area written in the real layout (incl. malformed lines and stairs)."""
import warnings

import numpy as np
import pytest
from fixtures_data import S3DIS_BAD_LINES, write_s3dis_area

from mpnet_model.data import s3dis
from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.room import Room, save_room_npz


@pytest.fixture(scope='module')
def area(tmp_path_factory):
    root = tmp_path_factory.mktemp('s3dis')
    return root, write_s3dis_area(root, area=5)


def test_load_room_round_trips_coordinates_colours_labels_and_instances(area):
    root, expected = area
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', s3dis.S3DISFormatWarning)
        for room_name, truth in expected.items():
            room = s3dis.load_room(root / 'Area_5' / room_name)
            assert room.name == f'Area_5_{room_name}'
            assert room.class_names == S3DIS_CLASSES
            assert room.xyz.dtype == np.float32 and room.rgb.dtype == np.float32
            assert room.sem.dtype == np.int64 and room.ins.dtype == np.int64
            np.testing.assert_array_equal(room.xyz, truth['xyz'])
            np.testing.assert_array_equal(room.rgb, truth['rgb'])
            np.testing.assert_array_equal(room.sem, truth['sem'])
            np.testing.assert_array_equal(room.ins, truth['ins'])


def test_stairs_map_to_clutter_and_instances_follow_natural_file_order(area):
    root, _ = area
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', s3dis.S3DISFormatWarning)
        room = s3dis.load_room(root / 'Area_5' / 'office_1')
    # ceiling_1, chair_1, chair_2, chair_10, floor_1, stairs_1 -> instances 0..5
    first_class_of_instance = [S3DIS_CLASSES[room.sem[room.ins == i][0]] for i in range(6)]
    assert first_class_of_instance == ['ceiling', 'chair', 'chair', 'chair', 'floor', 'clutter']
    assert room.instance_names == ('ceiling_1', 'chair_1', 'chair_2', 'chair_10', 'floor_1', 'stairs_1')


def test_malformed_lines_are_skipped_with_a_warning_naming_file_and_line(area):
    root, _ = area
    for room_name, annotation, line_number, _ in S3DIS_BAD_LINES:
        with pytest.warns(s3dis.S3DISFormatWarning) as record:
            s3dis.load_room(root / 'Area_5' / room_name)
        messages = [str(w.message) for w in record]
        assert any(f'{annotation}.txt' in m and f'line {line_number}' in m for m in messages), messages


def test_clean_room_loads_without_warnings(tmp_path):
    annotations = tmp_path / 'Area_1' / 'office_1' / 'Annotations'
    annotations.mkdir(parents=True)
    (annotations / 'board_1.txt').write_text('1.0 2.0 3.0 255 0 0\n\n4.0\t5.0 6.0 0 255 0\r\n')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        room = s3dis.load_room(tmp_path / 'Area_1' / 'office_1')
    np.testing.assert_array_equal(room.xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(room.rgb, [[1, 0, 0], [0, 1, 0]])
    assert room.sem.tolist() == [S3DIS_CLASSES.index('board')] * 2


def test_read_points_txt_reports_every_bad_line(tmp_path):
    path = tmp_path / 'chair_1.txt'
    path.write_text('1 2 3 4 5 6\n1 2 3 4 5\n1 2 x 4 5 6\n7 8 9 10 11 12\n1 2 3 4 5 6 7\n')
    with pytest.warns(s3dis.S3DISFormatWarning, match=r'3 malformed line\(s\).*line 2, 3, 5'):
        points = s3dis.read_points_txt(path)
    np.testing.assert_array_equal(points, [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])


def test_unknown_class_is_a_clear_error(tmp_path):
    annotations = tmp_path / 'Area_1' / 'office_1' / 'Annotations'
    annotations.mkdir(parents=True)
    (annotations / 'spaceship_1.txt').write_text('1 2 3 4 5 6\n')
    with pytest.raises(ValueError, match=r"spaceship_1\.txt.*unknown S3DIS class 'spaceship'"):
        s3dis.load_room(tmp_path / 'Area_1' / 'office_1')


def test_missing_annotations_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='Annotations'):
        s3dis.load_room(tmp_path / 'nowhere')


def test_list_rooms_and_missing_area(area):
    root, expected = area
    rooms = s3dis.list_rooms(root, areas=[5])
    assert [r.name for r in rooms] == sorted(expected)
    assert s3dis.list_rooms(root, areas=['Area_5']) == rooms
    with pytest.raises(FileNotFoundError, match='Area_1'):
        s3dis.list_rooms(root, areas=[1])


def test_splits():
    assert s3dis.area_split() == s3dis.Split(train=(1, 2, 3, 4, 6), test=(5,))
    for fold in range(1, 7):
        split = s3dis.six_fold(fold)
        assert split.test == (fold,) and len(split.train) == 5 and fold not in split.train
    with pytest.raises(ValueError, match='fold=7'):
        s3dis.six_fold(7)


def test_load_room_reads_the_npz_cache(tmp_path):
    room = Room('Area_1_x', np.ones((3, 3)), np.full((3, 3), 0.2), [0, 1, -1], [0, 0, -1], S3DIS_CLASSES)
    path = save_room_npz(room, tmp_path / 'Area_1_x.npz')
    loaded = s3dis.load_room(path)
    np.testing.assert_array_equal(loaded.sem, [0, 1, -1])
    np.testing.assert_allclose(loaded.rgb, 0.2, atol=0.5 / 255)
