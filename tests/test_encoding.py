"""Input encodings (mpnet_model/data/encoding.py), anchored grids and keyed sampling (issue 22).

Channels on a hand-computed case; the keyed draw equal in numpy and torch and local to each block; the setting's
round trip checkpoint -> ONNX metadata -> each backend -> SceneSegmenter; files that predate it read as 'room'.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import FakeTensorRTBuilder
from runtime_fixtures import tiny_config

from mpnet_model.config import STORED_LEGACY, ConfigError, ModelConfig
from mpnet_model.data.blocks import block_features, partition_blocks, sample_block_indices_keyed
from mpnet_model.data.encoding import NOMINAL_STOREY, anchors_grid
from mpnet_model.infer.backends.base import BackendError, ModelMetadata, make_backend
from mpnet_model.infer.blocking import FramePartition, frame_blocks, partition_torch, sample_rows_keyed_torch
from mpnet_model.infer.export import main as export_main
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.model.checkpoint import load_checkpoint, save_checkpoint
from mpnet_model.model.mpnet import random_model


def _cloud(n: int = 3000, seed: int = 0, span=(4.0, 3.0, 2.5), shift=(10.3, -7.1, -1.7)) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(0, 1, (n, 3)) * span + shift).astype(np.float32)


def test_channels_of_a_hand_computed_block():
    xyz = np.array([[0.2, 0.1, 0.0], [0.8, 0.9, 1.5], [1.9, 0.4, 3.0]], np.float32)   # cloud min (0.2, 0.1, 0)
    partition = partition_blocks(xyz, 1.0, 0.5, min_points=1)
    k = int(np.flatnonzero((partition.origins == [0.0, 0.0]).all(1))[0])   # the block at the cloud's corner
    indices = np.array([[0, 1]])
    room = block_features(xyz, None, indices, partition.origins[k:k + 1], partition)[0]
    # ASIS: x, y - block centre (0.5, 0.5 after the shift), z - min z, rgb 0, then shifted xyz / extent (1.7, .8, 3)
    np.testing.assert_allclose(room[1], [0.1, 0.3, 1.5, 0, 0, 0, 0.6 / 1.7, 0.8 / 0.8, 0.5], atol=1e-6)
    floor = block_features(xyz, None, indices, partition.origins[k:k + 1], partition, 'floor', floor=-0.4)[0]
    np.testing.assert_allclose(floor[1], [0.1, 0.3, 1.9, 0, 0, 0, 0.5, 0.5, 1.9 / NOMINAL_STOREY], atol=1e-6)
    local = block_features(xyz, None, indices, partition.origins[k:k + 1], partition, 'floor_local', floor=-0.4)[0]
    np.testing.assert_allclose(local[1], [0.1, 0.3, 1.9, 0, 0, 0, 0.6, 0.8, 1.9 / NOMINAL_STOREY], atol=1e-6)
    with pytest.raises(ValueError, match='needs the floor height'):
        block_features(xyz, None, indices, partition.origins[k:k + 1], partition, 'floor')
    with pytest.raises(ValueError, match="input_encoding='height'"):
        block_features(xyz, None, indices, partition.origins[k:k + 1], partition, 'height', floor=0.0)
    assert not anchors_grid('room') and anchors_grid('floor')


def test_torch_channels_equal_numpy_channels():
    xyz = _cloud()
    cloud = torch.from_numpy(xyz)
    for encoding in ('room', 'floor', 'floor_local'):
        numpy_blocks = frame_blocks(cloud, None, 'grid', num_points=128, min_points=10, sampler='numpy',
                                    encoding=encoding, floor=-1.7)
        torch_blocks = frame_blocks(cloud, None, 'grid', num_points=128, min_points=10, sampler='torch',
                                    encoding=encoding, floor=-1.7)
        if encoding != 'room':      # keyed draws: the same indices on either sampler (room: two random streams)
            torch.testing.assert_close(numpy_blocks.indices, torch_blocks.indices, rtol=0, atol=0)
            torch.testing.assert_close(numpy_blocks.points, torch_blocks.points, rtol=0, atol=0)
        partition = FramePartition.from_numpy(partition_blocks(xyz, 1.0, 0.5, 10, 1.0 if anchors_grid(encoding)
                                                               else None))
        reference = block_features(xyz, None, numpy_blocks.indices.numpy(), partition.origins.numpy(),
                                   partition.to_numpy(), encoding, -1.7)
        np.testing.assert_allclose(numpy_blocks.points.numpy(), reference, atol=1e-6)


def test_anchored_grid_stays_put_when_a_point_is_added_far_away():
    xyz = _cloud()
    base = partition_blocks(xyz, 1.0, 0.5, 10, lattice=1.0)
    assert np.all(np.mod(base.room_min[:2], 1.0) == 0) and np.all(base.room_min[:2] <= xyz.min(0)[:2] - 1.0)
    stray = np.concatenate([xyz, np.float32([[-31.37, 44.2, 9.0]])])
    moved = partition_blocks(stray, 1.0, 0.5, 10, lattice=1.0)
    cells = {tuple(c) for c in np.rint((base.origins + base.room_min[:2]) / 0.5).astype(int)}
    cells_after = {tuple(c) for c in np.rint((moved.origins + moved.room_min[:2]) / 0.5).astype(int)}
    assert cells == cells_after                                           # the same absolute blocks (stray: < 10)
    torch_partition = partition_torch(torch.from_numpy(stray), 1.0, 0.5, 10, lattice=1.0)
    np.testing.assert_array_equal(torch_partition.room_min.numpy(), moved.room_min)
    # without the lattice the grid starts at the new minimum: every block moves
    unanchored = partition_blocks(stray, 1.0, 0.5, 10)
    assert not np.allclose(np.mod(unanchored.room_min[:2] - base.room_min[:2], 0.5), 0)


def _keyed(xyz: np.ndarray, num_points: int, seed: int = 0):
    partition = partition_blocks(xyz, 1.0, 0.5, 5, lattice=1.0)
    cells = np.rint((partition.origins + partition.room_min[:2]) / 0.5).astype(int)
    rows = sample_block_indices_keyed(partition, xyz, num_points, seed)
    return partition, {tuple(c): row for c, row in zip(cells, rows)}


def test_keyed_draw_semantics_and_locality():
    xyz = _cloud(4000)
    partition, rows = _keyed(xyz, 64)
    for k, row in enumerate(rows.values()):
        members = partition.block_points(k)
        if len(members) >= 64:
            assert len(set(row.tolist())) == 64 and set(row.tolist()) <= set(members.tolist())
        else:                                   # every member once, the rest repeats of members
            assert set(row.tolist()) == set(members.tolist())
    _, again = _keyed(xyz, 64)
    assert all(np.array_equal(rows[c], again[c]) for c in rows)           # deterministic
    _, other_seed = _keyed(xyz, 64, seed=1)
    assert any(not np.array_equal(rows[c], other_seed[c]) for c in rows)
    # the points keep their keys in another order: the same points sampled (ids mapped back)
    order = np.random.default_rng(3).permutation(len(xyz))
    _, shuffled = _keyed(xyz[order], 64)
    assert all(set(order[shuffled[c]].tolist()) == set(rows[c].tolist()) for c in rows)
    # one point added inside a dense block changes at most one of that block's samples; other blocks none
    added = np.concatenate([xyz, np.float32([[11.05, -6.55, -0.5]])])
    _, with_point = _keyed(added, 64)
    touched = 0
    for cell, row in rows.items():
        if not np.array_equal(with_point[cell], row):
            touched += 1
            assert len(set(with_point[cell].tolist()) - set(row.tolist())) <= 1
    assert touched <= 4                                                   # the blocks holding the new point


def test_keyed_torch_equals_numpy_on_cpu():
    xyz = _cloud(2500, seed=4)
    partition = partition_blocks(xyz, 1.0, 0.5, 5, lattice=1.0)
    for num_points in (16, 64, 256):
        expected = sample_block_indices_keyed(partition, xyz, num_points, seed=7)
        got = sample_rows_keyed_torch(FramePartition.from_numpy(partition), torch.from_numpy(xyz), num_points, 7)
        np.testing.assert_array_equal(got.numpy(), expected)


# --- the setting travels ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def floor_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp('floor_model')
    cfg = tiny_config().replace(input_encoding='floor')
    checkpoint = save_checkpoint(folder / 'floor.pt', random_model(cfg), cfg)
    assert export_main([str(checkpoint)]) == 0
    return checkpoint, folder / 'floor.onnx'


def test_encoding_round_trip_checkpoint_onnx_backends_segmenter(floor_model, tmp_path):
    checkpoint, onnx_path = floor_model
    _, cfg, _ = load_checkpoint(checkpoint)
    assert cfg.input_encoding == 'floor'
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert props['input_encoding'] == 'floor'
    backends = {'torch': make_backend('torch', checkpoint),
                'onnxruntime': make_backend('onnxruntime', onnx_path, intra_op_threads=1),
                # FAKE TensorRT (tests/fake_tensorrt.py: TensorRT cannot exist here); the metadata path is real
                'tensorrt (fake engine)': make_backend('tensorrt', onnx_path, builder=FakeTensorRTBuilder(),
                                                       engine_path=tmp_path / 'floor.engine')}
    xyz = _cloud(2000, span=(2.0, 2.0, 2.0))
    for name, backend in backends.items():
        assert backend.metadata.input_encoding == 'floor', name
    for name in ('torch', 'onnxruntime'):
        segmenter = SceneSegmenter(backends[name])
        result = segmenter.segment(xyz, None, np.full(len(xyz), 0.3, np.float32))
        assert result.floor is not None and result.floor.method in ('histogram', 'percentile'), name
        assert segmenter.segment(xyz, floor=-2.0).floor.z == -2.0
    # both runtimes see the same channels: their labels agree
    a = SceneSegmenter(backends['torch']).segment(xyz).labels
    b = SceneSegmenter(backends['onnxruntime']).segment(xyz).labels
    assert np.mean(a == b) > 0.99


def test_old_files_are_room_and_bad_values_are_refused(tmp_path):
    assert STORED_LEGACY['input_encoding'] == 'room'
    assert ModelConfig.from_stored({k: v for k, v in ModelConfig().to_dict().items()
                                    if k != 'input_encoding'}).input_encoding == 'room'
    props = ModelMetadata(class_names=('a', 'b'), input_encoding='floor').to_props()
    assert ModelMetadata.from_props(props, 'x').input_encoding == 'floor'
    del props['input_encoding']                                  # an ONNX file exported before the setting
    assert ModelMetadata.from_props(props, 'old.onnx').input_encoding == 'room'
    props['input_encoding'] = 'altitude'
    with pytest.raises(BackendError, match="new.onnx: malformed model metadata.*input_encoding='altitude'"):
        ModelMetadata.from_props(props, 'new.onnx')
    with pytest.raises(ConfigError, match='input_encoding'):
        ModelConfig(input_encoding='altitude')
    shipped = SceneSegmenter.from_config('onnxruntime', '')
    assert shipped.input_encoding in ('room', 'floor', 'floor_local')
