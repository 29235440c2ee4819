"""params, value by value: every ordering check on every axis, every bound at both ends, and a valid non-default
value of every parameter coming through `validate_params` unchanged (a new parameter must be added here)."""
from __future__ import annotations

import pytest

from mpnet_ros.params import SPECS, ParamError, validate_params

# A valid value different from the default, for every parameter.
NON_DEFAULT = {
    'input_topic': '/ouster/points',
    'window_frames': 7,
    'window_seconds': 2.5,
    'fixed_frame': 'odom',
    'fallback_frame_id': 'base_link',
    'min_range': 0.4,
    'max_range': 35.0,
    'max_coordinate': 250.0,
    'crop_box': [-1.5, -2.5, -0.5, 3.5, 4.5, 2.25],
    'gravity_align': 'off',
    'floor_source': 'sensor_height',
    'floor_z': -0.35,
    'sensor_height': 1.8,
    'voxel_size': 0.03,
    'drop_zero_points': False,
    'backend': 'torch',
    'model_path': '/models/room.pt',
    'engine_path': '/models/room.engine',
    'engine_cache_dir': '/var/cache/mpnet_ros',
    'precision': 'fp16',
    'device': 'cuda:1',
    'cluster_bandwidth': 0.45,
    'min_instance_points': 120,
    'min_instance_fraction': 0.0,
    'size_filter': 'points',
    'sensor_kind': 'rgbd',
    'fragment_join': 0.25,
    'block_layout': 'grid',
    'border_join': 0.0,
    'tracking': False,
    'track_max_distance': 2.5,
    'track_min_iou': 0.3,
    'track_max_misses': 9,
    'max_points': 300_000,
    'processing_budget_ms': 95.0,
    'oversize_action': 'refuse',
    'marker_lifetime': 2.0,
    'diagnostics_period': 0.5,
    'warn_throttle_sec': 12.0,
    'mapping': True,
    'map_voxel_size': 0.1,
    'map_radius': 12.5,
    'map_max_voxels': 250_000,
    'map_dirty_fraction': 0.75,
    'map_min_changed': 80,
    'map_change_cell': 0.5,
    'map_publish_rate': 0.5,
    'map_load_path': '/maps/floor.npz',
    'map_save_path': '/maps/floor.ply',
}
# Values that are only valid together with another parameter: what they need.
NEEDS = {('floor_source', 'sensor_height'): {'sensor_height': 1.8},
         ('floor_source', 'fixed_frame'): {'fixed_frame': 'odom'}, ('backend', 'tensorrt'): {'device': 'cuda'}}


def test_the_table_covers_every_parameter():
    assert set(NON_DEFAULT) == set(SPECS)
    assert all(NON_DEFAULT[key] != spec.default for key, spec in SPECS.items())


@pytest.mark.parametrize('key', sorted(NON_DEFAULT))
def test_non_default_value_comes_through_unchanged(key):
    value = NON_DEFAULT[key]
    needs = {} if isinstance(value, list) else NEEDS.get((key, value), {})
    params = validate_params({key: value, **needs}, check_files=False)
    assert getattr(params, key) == (tuple(value) if isinstance(value, list) else value)
    assert type(getattr(params, key)) is (tuple if isinstance(value, list) else type(value))


def test_all_non_default_values_together():
    params = validate_params(NON_DEFAULT, check_files=False)
    for key, value in NON_DEFAULT.items():
        assert getattr(params, key) == (tuple(value) if isinstance(value, list) else value), key


@pytest.mark.parametrize('axis', [0, 1, 2], ids=['x', 'y', 'z'])
@pytest.mark.parametrize('upper', ['below', 'equal'])
def test_crop_box_ordering_checked_on_every_axis(axis, upper):
    box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    box[axis + 3] = box[axis] - 0.5 if upper == 'below' else box[axis]
    with pytest.raises(ParamError, match='xmin < xmax, ymin < ymax, zmin < zmax') as info:
        validate_params({'crop_box': box}, check_files=False)
    assert info.value.key == 'crop_box' and info.value.value == box
    box[axis + 3] = box[axis] + 1e-3                                      # just ordered: accepted
    assert validate_params({'crop_box': box}, check_files=False).crop_enabled


def test_crop_box_all_zeros_is_off_and_one_nonzero_is_checked():
    assert not validate_params({'crop_box': [0.0] * 6}, check_files=False).crop_enabled
    with pytest.raises(ParamError, match='crop_box'):
        validate_params({'crop_box': [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]}, check_files=False)


@pytest.mark.parametrize('max_range', [1.0, 2.0])
def test_range_ordering(max_range):
    with pytest.raises(ParamError, match='must be > min_range 2.0') as info:
        validate_params({'min_range': 2.0, 'max_range': max_range}, check_files=False)
    assert info.value.key == 'max_range'
    params = validate_params({'min_range': 2.0, 'max_range': 2.001}, check_files=False)
    assert (params.min_range, params.max_range) == (2.0, 2.001)
    assert validate_params({'min_range': 5.0, 'max_range': 0.0}, check_files=False).max_range == 0.0   # 0 = off


BOUNDED = sorted(key for key, spec in SPECS.items() if spec.low is not None)


@pytest.mark.parametrize('key', BOUNDED)
def test_bounds_are_inclusive_at_both_ends(key):
    spec = SPECS[key]
    step = 1 if isinstance(spec.default, int) else 1e-6
    for edge in (spec.low, spec.high):
        value = type(spec.default)(edge)
        assert getattr(validate_params({key: value}, check_files=False), key) == value
    for outside in (spec.low - step, spec.high + step):
        with pytest.raises(ParamError, match=r'must be in \[') as info:
            validate_params({key: type(spec.default)(outside)}, check_files=False)
        assert info.value.key == key


def test_every_choice_accepted():
    for key, spec in SPECS.items():
        for choice in spec.choices:
            needs = NEEDS.get((key, choice), {})                 # e.g. TensorRT: GPU only
            assert getattr(validate_params({key: choice, **needs}, check_files=False), key) == choice


# Every error path: the key, the offending value and the problem, exactly (the node's refusal message).
ERRORS = [
    ({'drop_zero_points': 'yes'}, 'drop_zero_points', 'yes', 'must be a bool'),
    ({'window_frames': 2.5}, 'window_frames', 2.5, 'must be an integer'),
    ({'window_frames': True}, 'window_frames', True, 'must be an integer'),
    ({'voxel_size': 'abc'}, 'voxel_size', 'abc', 'must be a number'),
    ({'voxel_size': True}, 'voxel_size', True, 'must be a number'),
    ({'voxel_size': float('inf')}, 'voxel_size', float('inf'), 'must be finite'),
    ({'model_path': 3}, 'model_path', 3, 'must be a string'),
    ({'crop_box': 'abcdef'}, 'crop_box', 'abcdef', 'must be a list of 6 numbers'),
    ({'crop_box': [0, 0, 0, 1, 1]}, 'crop_box', [0, 0, 0, 1, 1], 'must be a list of 6 numbers'),
    ({'crop_box': [0, 0, 0, 1, 1, 'x']}, 'crop_box', 'x', 'must be a number'),
    ({'backend': 'caffe'}, 'backend', 'caffe', "must be one of ['torch', 'onnxruntime', 'tensorrt']"),
    ({'voxel_size': 11.0}, 'voxel_size', 11.0, r'must be in [0.0, 10.0]'),
    ({'device': 'gpu0'}, 'device', 'gpu0', "must be 'cpu', 'cuda' or 'cuda:N'"),
    ({'input_topic': ''}, 'input_topic', '', 'must not be empty'),
    ({'min_range': 2.0, 'max_range': 1.0}, 'max_range', 1.0, 'must be > min_range 2.0 (or 0 = off)'),
    ({'crop_box': [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]}, 'crop_box', [0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
     'needs xmin < xmax, ymin < ymax, zmin < zmax (or all zeros = off)'),
    ({'no_such_key': 1}, 'no_such_key', 1, 'unknown parameter; known: ['),
    ({'map_load_path': 'map.pcd'}, 'map_load_path', 'map.pcd', 'a map file ends in .npz or .ply'),
    ({'map_save_path': 'map'}, 'map_save_path', 'map', 'a map file ends in .npz or .ply'),
]


@pytest.mark.parametrize('values, key, value, why', ERRORS, ids=[e[3][:24] for e in ERRORS])
def test_errors_name_key_value_and_problem(values, key, value, why):
    with pytest.raises(ParamError) as info:
        validate_params(values, check_files=False)
    assert (info.value.key, info.value.value) == (key, value)
    assert str(info.value).startswith(f'parameter {key!r}={value!r}: {why}'), str(info.value)


def test_model_file_errors_name_the_file(tmp_path):
    checkpoint, onnx_file = tmp_path / 'm.pt', tmp_path / 'm.onnx'
    checkpoint.write_bytes(b'x')
    onnx_file.write_bytes(b'x')
    cases = [({'model_path': str(tmp_path / 'no.pt'), 'backend': 'torch'}, str(tmp_path / 'no.pt'),
              'file does not exist'),
             ({'model_path': str(onnx_file), 'backend': 'torch'}, str(onnx_file),
              "is an ONNX file; backend 'torch' needs a checkpoint (.pt)"),
             ({'model_path': str(checkpoint), 'backend': 'onnxruntime'}, str(checkpoint),
              "backend 'onnxruntime' needs an ONNX model (.onnx)"),
             ({'model_path': str(checkpoint), 'backend': 'tensorrt', 'device': 'cuda'}, str(checkpoint),
              "backend 'tensorrt' needs an ONNX model (.onnx)")]
    for values, value, why in cases:
        with pytest.raises(ParamError) as info:
            validate_params(values)
        assert (info.value.key, info.value.value) == ('model_path', value)
        assert str(info.value) == f'parameter {"model_path"!r}={value!r}: {why}'


def test_missing_map_file_is_a_param_error(tmp_path):
    missing = str(tmp_path / 'none.npz')
    with pytest.raises(ParamError) as info:
        validate_params({'mapping': True, 'map_load_path': missing}, check_files=True)
    assert str(info.value) == f"parameter 'map_load_path'={missing!r}: file does not exist"


def test_missing_shipped_model_is_a_param_error(monkeypatch):
    import mpnet_ros.params as params_module

    def missing(backend):
        raise FileNotFoundError(f'the shipped default model for {backend} is missing')

    monkeypatch.setattr(params_module, 'default_model_path', missing)
    with pytest.raises(ParamError) as info:
        validate_params({'backend': 'torch'})
    assert (info.value.key, info.value.value) == ('model_path', '')
    assert str(info.value) == "parameter 'model_path'='': the shipped default model for torch is missing"
