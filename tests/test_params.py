"""params: validation names the bad key and value; YAML defaults equal the specs; descriptors carry ranges."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mpnet_ros.params import SPECS, ParamError, SegmentParams, defaults, validate_params

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_without_files():
    params = validate_params({}, check_files=False)
    assert isinstance(params, SegmentParams)
    assert params.backend == 'onnxruntime' and params.window_frames == 1 and not params.crop_enabled
    with pytest.raises(AttributeError):
        params.voxel_size = 1.0  # frozen


def test_yaml_defaults_equal_specs():
    data = yaml.safe_load((REPO / 'config' / 'segment.yaml').read_text())
    assert data['/**']['ros__parameters'] == defaults()


@pytest.mark.parametrize('key, value, why', [
    ('voxel_size', -0.1, r'must be in \[0.0, 10.0\]'),
    ('window_frames', 0, 'must be in'),
    ('window_frames', 2.5, 'must be an integer'),
    ('backend', 'caffe', 'must be one of'),
    ('precision', 'int8', 'must be one of'),
    ('device', 'gpu0', "'cpu', 'cuda' or 'cuda:N'"),
    ('cluster_bandwidth', float('nan'), 'must be finite'),
    ('drop_zero_points', 'yes', 'must be a bool'),
    ('crop_box', [0, 0, 0, 1, 1], 'list of 6 numbers'),
    ('crop_box', [0, 0, 0, -1, 1, 1], 'xmin < xmax'),
    ('max_range', 1.0, 'must be > min_range'),
    ('input_topic', '', 'must not be empty'),
    ('no_such_key', 1, 'unknown parameter'),
])
def test_bad_value_names_key_and_value(key, value, why):
    values = {key: value}
    if key == 'max_range':
        values['min_range'] = 2.0
    with pytest.raises(ParamError, match=why) as info:
        validate_params(values, check_files=False)
    assert info.value.key == key and repr(key) in str(info.value)


def test_empty_model_path_selects_the_shipped_model():
    from mpnet_model.default_model import DEFAULT_CHECKPOINT, DEFAULT_ONNX

    assert validate_params({'backend': 'torch'}).model_path == str(DEFAULT_CHECKPOINT)
    assert validate_params({}).model_path == str(DEFAULT_ONNX)                       # onnxruntime


def test_model_files_checked(tmp_path):
    missing = str(tmp_path / 'nope.pt')
    with pytest.raises(ParamError, match='file does not exist') as info:
        validate_params({'model_path': missing})
    assert missing in str(info.value)
    checkpoint = tmp_path / 'm.pt'
    checkpoint.write_bytes(b'x')
    onnx = tmp_path / 'm.onnx'
    onnx.write_bytes(b'x')
    assert validate_params({'model_path': str(checkpoint), 'backend': 'torch'}).model_path == str(checkpoint)
    with pytest.raises(ParamError, match='needs an ONNX model'):
        validate_params({'model_path': str(checkpoint), 'backend': 'onnxruntime'})
    with pytest.raises(ParamError, match="backend 'torch' needs a checkpoint"):
        validate_params({'model_path': str(onnx), 'backend': 'torch'})
    engine = str(tmp_path / 'm.engine')  # a cache the backend builds: need not exist yet
    params = validate_params({'backend': 'tensorrt', 'model_path': str(onnx), 'engine_path': engine})
    assert params.engine_path == engine
    assert validate_params({'backend': 'tensorrt', 'engine_path': engine}).model_path.endswith('.onnx')


def test_descriptors_declared_with_ranges():
    rclpy = pytest.importorskip('rclpy')
    from rclpy.exceptions import InvalidParameterValueException
    from rclpy.parameter import Parameter

    from mpnet_ros.params import declare_and_read

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ['ROS_DOMAIN_ID']))
    try:
        node = rclpy.create_node('params_test', context=context)
        params = declare_and_read(node, check_files=False)
        assert params == validate_params({}, check_files=False)
        descriptor = node.describe_parameter('voxel_size')
        assert descriptor.description == SPECS['voxel_size'].description
        assert descriptor.floating_point_range[0].to_value == 10.0
        assert node.describe_parameter('window_frames').integer_range[0].from_value == 1
        assert 'torch' in node.describe_parameter('backend').description
        result = node.set_parameters([Parameter('voxel_size', value=-1.0)])[0]
        assert not result.successful
        node.destroy_node()

        # An override outside the range is refused at declaration, naming the parameter.
        bad = rclpy.create_node('params_test_bad', context=context,
                                parameter_overrides=[Parameter('window_frames', value=0)])
        with pytest.raises(InvalidParameterValueException, match='window_frames'):
            declare_and_read(bad, check_files=False)
        bad.destroy_node()
    finally:
        rclpy.shutdown(context=context)
