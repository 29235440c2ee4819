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
    'min_range': 0.4,
    'max_range': 35.0,
    'crop_box': [-1.5, -2.5, -0.5, 3.5, 4.5, 2.25],
    'voxel_size': 0.03,
    'drop_zero_points': False,
    'backend': 'torch',
    'model_path': '/models/room.pt',
    'engine_path': '/models/room.engine',
    'precision': 'fp16',
    'device': 'cuda:1',
    'cluster_bandwidth': 0.45,
    'min_instance_points': 120,
    'max_points': 300_000,
    'processing_budget_ms': 95.0,
    'diagnostics_period': 0.5,
    'warn_throttle_sec': 12.0,
}


def test_the_table_covers_every_parameter():
    assert set(NON_DEFAULT) == set(SPECS)
    assert all(NON_DEFAULT[key] != spec.default for key, spec in SPECS.items())


@pytest.mark.parametrize('key', sorted(NON_DEFAULT))
def test_non_default_value_comes_through_unchanged(key):
    value = NON_DEFAULT[key]
    params = validate_params({key: value}, check_files=False)
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
            assert getattr(validate_params({key: choice}, check_files=False), key) == choice
