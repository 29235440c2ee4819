"""ScanNetV2 loader on a tiny scene written in the real formats (binary PLY with faces, segs, aggregation, tsv)."""
import numpy as np
import pytest
from fixtures_data import write_scannet_scene

from mpnet_model.data import scannet
from mpnet_model.data.classes import SCANNET_CLASSES


@pytest.fixture()
def scene(tmp_path):
    return write_scannet_scene(tmp_path)


def test_load_scene_round_trips_vertices_and_labels(scene):
    scene_dir, label_map, expected = scene
    room = scannet.load_scene(scene_dir, label_map)
    assert room.name == 'scene0000_00' and room.class_names == SCANNET_CLASSES
    np.testing.assert_array_equal(room.xyz, expected['xyz'])
    np.testing.assert_array_equal(room.rgb, expected['rgb'])
    np.testing.assert_array_equal(room.sem, expected['sem'])
    np.testing.assert_array_equal(room.ins, expected['ins'])
    # The fixture has annotated vertices of 3 benchmark classes and unannotated ones.
    assert set(np.unique(room.sem).tolist()) == {-1, SCANNET_CLASSES.index('chair'),
                                                 SCANNET_CLASSES.index('wall'), SCANNET_CLASSES.index('counter')}
    assert np.array_equal(room.sem == -1, room.ins == -1)


def test_load_room_finds_the_label_map_next_to_the_data(scene):
    scene_dir, _, expected = scene
    room = scannet.load_room(scene_dir)
    np.testing.assert_array_equal(room.sem, expected['sem'])


def test_read_ply_vertices_fields(scene):
    scene_dir, _, expected = scene
    vertices = scannet.read_ply_vertices(scene_dir / 'scene0000_00_vh_clean_2.ply')
    assert vertices.dtype.names == ('x', 'y', 'z', 'red', 'green', 'blue', 'alpha')
    np.testing.assert_array_equal(vertices['y'], expected['xyz'][:, 1])


def test_label_map_parsing(scene):
    _, label_map, _ = scene
    mapping = scannet.read_label_map(label_map)
    assert mapping['office chair'] == 5 and mapping['kitchen counter'] == 12 and mapping['ceiling'] == 22
    with pytest.raises(ValueError, match="lacks column.*'nope'"):
        scannet.read_label_map(label_map, label_to='nope')


def test_ascii_ply_is_rejected_clearly(tmp_path):
    path = tmp_path / 'a.ply'
    path.write_bytes(b'ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1.0\n')
    with pytest.raises(scannet.PlyFormatError, match="unsupported PLY format 'ascii 1.0'"):
        scannet.read_ply_vertices(path)


def test_truncated_ply_is_a_clear_error(scene, tmp_path):
    scene_dir, _, _ = scene
    data = (scene_dir / 'scene0000_00_vh_clean_2.ply').read_bytes()
    end = data.index(b'end_header\n') + len(b'end_header\n')
    truncated = tmp_path / 't.ply'
    truncated.write_bytes(data[:end + 16 * 5])   # 5 of 28 vertices
    with pytest.raises(scannet.PlyFormatError, match='declares 28 vertices, file holds 5'):
        scannet.read_ply_vertices(truncated)


def test_missing_aggregation_is_a_clear_error(scene):
    scene_dir, label_map, _ = scene
    (scene_dir / 'scene0000_00.aggregation.json').unlink()
    with pytest.raises(FileNotFoundError, match='aggregation'):
        scannet.load_scene(scene_dir, label_map)


def test_segment_count_mismatch_is_a_clear_error(scene):
    scene_dir, label_map, _ = scene
    (scene_dir / 'scene0000_00_vh_clean_2.0.010000.segs.json').write_text('{"segIndices": [1, 2]}')
    with pytest.raises(ValueError, match='2 segIndices for 28 mesh vertices'):
        scannet.load_scene(scene_dir, label_map)
