"""cloud_io: every PointCloud2 layout drivers publish, the real shared bags, malformed input, the output builder."""
from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import (
    FLOAT32,
    FLOAT64,
    KINECT_BAG,
    OUSTER_BAG,
    UINT8,
    UINT16,
    UINT32,
    fuzz_clouds,
    make_cloud,
    read_bag,
    to_rclpy,
    xyz_cloud,
)

from mpnet_model.data.classes import class_colour_table
from mpnet_ros import cloud_io
from mpnet_ros.cloud_io import CloudError, parse_cloud

RNG = np.random.default_rng(0)
XYZ = RNG.uniform(-5, 5, size=(40, 3)).astype(np.float32)


def packed_rgb_float(rgb_u8: np.ndarray) -> np.ndarray:
    return cloud_io.pack_rgb(rgb_u8)


def test_packed_xyz_values_and_header():
    parsed = parse_cloud(xyz_cloud(XYZ, frame_id='lidar', stamp_ns=5_000_000_007))
    np.testing.assert_array_equal(parsed.xyz, XYZ)
    assert parsed.rgb is None and parsed.intensity is None
    assert parsed.frame_id == 'lidar' and parsed.stamp_ns == 5_000_000_007
    np.testing.assert_array_equal(parsed.source_index, np.arange(len(XYZ)))


def test_field_order_offsets_padding_float64_and_extra_fields():
    # z first, float64 x, an int ring field, 7 bytes of padding at the end of each point.
    fields = [('z', FLOAT32, 0), ('ring', UINT16, 4), ('x', FLOAT64, 8), ('y', FLOAT32, 16), ('intensity', UINT16, 20)]
    records = {'x': XYZ[:, 0].astype(np.float64), 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'ring': np.arange(40),
               'intensity': np.arange(40) * 10}
    parsed = parse_cloud(make_cloud(fields, records, point_step=29))
    np.testing.assert_array_equal(parsed.xyz, XYZ)
    np.testing.assert_array_equal(parsed.intensity, np.arange(40, dtype=np.float32) * 10)


@pytest.mark.parametrize('big_endian', [False, True])
def test_organised_with_row_padding(big_endian):
    cloud = xyz_cloud(XYZ, height=4, row_padding=6, big_endian=big_endian)
    assert cloud.row_step == 10 * 12 + 6
    parsed = parse_cloud(cloud)
    np.testing.assert_array_equal(parsed.xyz, XYZ)  # row-major order, padding skipped


def test_big_endian_matches_little_endian_with_colour():
    rgb_u8 = RNG.integers(0, 256, size=(40, 3)).astype(np.uint8)
    rgb_u8[0] = (255, 200, 3)  # float bit pattern is a NaN: must survive as colour
    fields = [('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8), ('rgb', FLOAT32, 12)]
    records = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'rgb': packed_rgb_float(rgb_u8)}
    little = parse_cloud(make_cloud(fields, records, 16))
    big = parse_cloud(make_cloud(fields, records, 16, big_endian=True))
    np.testing.assert_array_equal(little.xyz, big.xyz)
    np.testing.assert_array_equal(big.rgb, rgb_u8.astype(np.float32) / 255)
    np.testing.assert_array_equal(little.rgb, big.rgb)


def test_rgba_uint32_and_colour_preferred_over_intensity():
    rgb_u8 = np.array([[255, 0, 0], [0, 128, 255]] * 20, dtype=np.uint8)
    channels = rgb_u8.astype(np.uint32)
    packed = (0xFF << 24) | (channels[:, 0] << 16) | (channels[:, 1] << 8) | channels[:, 2]
    fields = [('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8), ('intensity', FLOAT32, 12), ('rgba', UINT32, 16)]
    records = {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'intensity': np.ones(40), 'rgba': packed}
    parsed = parse_cloud(make_cloud(fields, records, 20))
    assert parsed.intensity is None
    np.testing.assert_allclose(parsed.rgb[:2], [[1, 0, 0], [0, 128 / 255, 1]])


def test_nan_inf_and_zero_returns_removed():
    xyz = XYZ.copy()
    xyz[3] = np.nan
    xyz[5, 1] = np.inf
    xyz[7] = 0.0
    xyz[9, 2] = -np.inf
    parsed = parse_cloud(xyz_cloud(xyz, height=2))
    expected = np.setdiff1d(np.arange(40), [3, 5, 7, 9])
    np.testing.assert_array_equal(parsed.source_index, expected)
    np.testing.assert_array_equal(parsed.xyz, xyz[expected])
    assert 7 in parse_cloud(xyz_cloud(xyz), drop_zero=False).source_index


def test_rclpy_message_parses_like_duck_typed():
    cloud = xyz_cloud(XYZ, height=2, row_padding=4)
    np.testing.assert_array_equal(parse_cloud(to_rclpy(cloud)).xyz, parse_cloud(cloud).xyz)


def test_builtin_datatype_table_equals_sensor_msgs_py():
    pytest.importorskip('sensor_msgs_py')
    assert cloud_io.field_datatypes(True) == cloud_io.field_datatypes(False)
    cloud = make_cloud([('x', FLOAT32, 0), ('y', FLOAT32, 4), ('z', FLOAT32, 8), ('intensity', UINT8, 12)],
                       {'x': XYZ[:, 0], 'y': XYZ[:, 1], 'z': XYZ[:, 2], 'intensity': np.arange(40)}, 16)
    with_smp = parse_cloud(cloud, datatypes=cloud_io.field_datatypes(True))
    builtin = parse_cloud(cloud, datatypes=cloud_io.field_datatypes(False))
    np.testing.assert_array_equal(with_smp.xyz, builtin.xyz)
    np.testing.assert_array_equal(with_smp.intensity, builtin.intensity)


def _valid_cloud():
    return xyz_cloud(XYZ, height=2)


def _set(**changes):
    cloud = _valid_cloud()
    for key, value in changes.items():
        setattr(cloud, key, value)
    return cloud


def _with_fields(fields):
    cloud = _valid_cloud()
    from types import SimpleNamespace
    cloud.fields = [SimpleNamespace(name=n, offset=o, datatype=t, count=c) for n, t, o, c in fields]
    return cloud


MALFORMED = {
    'truncated data': _set(data=_valid_cloud().data[:-5]),
    'wrong point_step': _set(point_step=8, row_step=8 * 20),
    'point_step 0': _set(point_step=0, row_step=0),
    'row_step': _set(row_step=100),
    'missing field': _with_fields([('x', FLOAT32, 0, 1), ('y', FLOAT32, 4, 1)]),
    'non-float xyz': _with_fields([('x', FLOAT32, 0, 1), ('y', FLOAT32, 4, 1), ('z', UINT32, 8, 1)]),
    '0 points': _set(width=0, row_step=0),
    'no valid points': xyz_cloud(np.full((6, 3), np.nan, dtype=np.float32)),
    'too large': _set(height=10_000, width=10_000),
    'unknown datatype': _with_fields([('x', FLOAT32, 0, 1), ('y', FLOAT32, 4, 1), ('z', FLOAT32, 8, 1),
                                      ('w', 42, 8, 1)]),
    'duplicate field': _with_fields([('x', FLOAT32, 0, 1), ('y', FLOAT32, 4, 1), ('z', FLOAT32, 8, 1),
                                     ('y', FLOAT32, 8, 1)]),
    'count 0': _with_fields([('x', FLOAT32, 0, 1), ('y', FLOAT32, 4, 1), ('z', FLOAT32, 8, 1), ('i', FLOAT32, 8, 0)]),
    'not a byte buffer': _set(data=[1.5, 2.5]),
    'negative size': _set(height=-1),
}


@pytest.mark.parametrize('defect', sorted(MALFORMED))
def test_malformed_raises_cloud_error_naming_the_defect(defect):
    with pytest.raises(CloudError, match=defect):
        parse_cloud(MALFORMED[defect], max_points=1_000_000)


# Each defect's short name (`CloudError.defect`, what the node rate-limits its warnings by).
DEFECT_NAMES = {
    'truncated data': 'truncated', 'wrong point_step': 'point_step', 'point_step 0': 'point_step',
    'row_step': 'row_step', 'missing field': 'missing_xyz', 'non-float xyz': 'non_float_xyz', '0 points': 'size',
    'no valid points': 'no_valid_points', 'too large': 'too_large', 'unknown datatype': 'datatype',
    'duplicate field': 'duplicate_field', 'count 0': 'field_count', 'not a byte buffer': 'data',
    'negative size': 'size',
}


@pytest.mark.parametrize('defect', sorted(MALFORMED))
def test_each_defect_has_its_short_name(defect):
    with pytest.raises(CloudError) as info:
        parse_cloud(MALFORMED[defect], max_points=1_000_000)
    assert info.value.defect == DEFECT_NAMES[defect]


def test_garbage_attribute_types_still_raise_cloud_error():
    with pytest.raises(CloudError):
        parse_cloud(_set(width='many'))
    with pytest.raises(CloudError):
        parse_cloud(object())


def test_fuzz_10000_malformed_clouds_only_raise_cloud_error():
    """Every mutation either parses into consistent finite arrays or raises CloudError (nothing else escapes)."""
    rng = np.random.default_rng(1234)
    outcomes = {'parsed': 0, 'rejected': 0}
    for defect, cloud in fuzz_clouds(rng, 10_000):
        try:
            parsed = parse_cloud(cloud, max_points=100_000)
        except CloudError as exc:
            assert str(exc), defect
            outcomes['rejected'] += 1
            continue
        assert parsed.xyz.dtype == np.float32 and np.isfinite(parsed.xyz).all(), defect
        assert len(parsed.source_index) == len(parsed.xyz) and (parsed.rgb is None or len(parsed.rgb) == len(parsed))
        outcomes['parsed'] += 1
    assert outcomes['rejected'] > 5000 and outcomes['parsed'] > 100, outcomes


# --- real sensor data -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ouster_frames():
    if not OUSTER_BAG.exists():
        pytest.skip(f'shared data not found at {OUSTER_BAG}')
    return read_bag(OUSTER_BAG)


@pytest.fixture(scope='module')
def kinect_frames():
    if not KINECT_BAG.exists():
        pytest.skip(f'shared data not found at {KINECT_BAG}')
    return read_bag(KINECT_BAG)


def _reference_points(raw: bytes, names: list[str]) -> np.ndarray:
    """sensor_msgs_py's reading of an rclpy-deserialised copy of the same message."""
    point_cloud2 = pytest.importorskip('sensor_msgs_py.point_cloud2')
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    return point_cloud2.read_points(deserialize_message(raw, PointCloud2), field_names=names)


def test_ouster_bag_parity_with_sensor_msgs_py(ouster_frames):
    from numpy.lib.recfunctions import structured_to_unstructured

    for _topic, _time, raw, msg in ouster_frames:
        parsed = parse_cloud(msg)  # the rosbags message
        reference = _reference_points(raw, ['x', 'y', 'z', 'intensity', 'range'])
        ref_xyz = structured_to_unstructured(reference[['x', 'y', 'z']])
        # Ouster marks "no return" by range 0 and xyz 0,0,0.
        valid = reference['range'] != 0
        np.testing.assert_array_equal(parsed.source_index, np.flatnonzero(valid))
        np.testing.assert_array_equal(parsed.xyz, ref_xyz[valid])
        np.testing.assert_array_equal(parsed.intensity, reference['intensity'][valid])
        assert 100_000 < len(parsed) < 131_072 and parsed.frame_id == 'os_lidar'
        assert parsed.stamp_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_kinect_bag_parity_with_sensor_msgs_py(kinect_frames):
    point_cloud2 = pytest.importorskip('sensor_msgs_py.point_cloud2')
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    _topic, _time, raw, msg = kinect_frames[0]
    parsed = parse_cloud(msg)
    reference_msg = deserialize_message(raw, PointCloud2)
    ref_xyz = point_cloud2.read_points_numpy(reference_msg, field_names=['x', 'y', 'z'], skip_nans=True)
    np.testing.assert_array_equal(parsed.xyz, ref_xyz)
    # Also via the rclpy message (array.array data): identical.
    np.testing.assert_array_equal(parse_cloud(reference_msg).xyz, parsed.xyz)
    rgb_bits = point_cloud2.read_points(reference_msg, field_names=['rgb'])['rgb'].view(np.uint32)[parsed.source_index]
    np.testing.assert_array_equal(np.round(parsed.rgb[:, 0] * 255).astype(np.uint32), (rgb_bits >> 16) & 0xFF)
    np.testing.assert_array_equal(np.round(parsed.rgb[:, 2] * 255).astype(np.uint32), rgb_bits & 0xFF)
    assert 250_000 < len(parsed) < 307_200 and parsed.rgb.min() >= 0 and parsed.rgb.max() <= 1


# --- output builder ---------------------------------------------------------------------------------------------

def test_labeled_cloud_round_trip():
    point_cloud2 = pytest.importorskip('sensor_msgs_py.point_cloud2')
    labels = np.arange(40, dtype=np.int32) % 13
    instances = np.where(labels % 2 == 0, np.arange(40), -1).astype(np.int32)
    scores = np.linspace(0, 1, 40, dtype=np.float32)
    msg = cloud_io.labeled_cloud_msg(to_rclpy(xyz_cloud(XYZ)).header, XYZ, labels, instances, scores, 13)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb', 'label', 'instance', 'score']
    assert msg.point_step == 28 and msg.row_step == 28 * 40 and len(msg.data) == 28 * 40

    parsed = parse_cloud(msg)
    np.testing.assert_array_equal(parsed.xyz, XYZ)
    expected_rgb = class_colour_table(13)[labels].astype(np.float32) / 255
    np.testing.assert_array_equal(parsed.rgb, expected_rgb)

    points = point_cloud2.read_points(msg, field_names=['label', 'instance', 'score'])
    np.testing.assert_array_equal(points['label'], labels)
    expected_instances = np.where(instances < 0, 0xFFFFFFFF, instances.astype(np.int64))
    np.testing.assert_array_equal(points['instance'].astype(np.int64), expected_instances)
    np.testing.assert_array_equal(points['score'], scores)


def test_labeled_cloud_out_of_range_label_is_grey():
    data = cloud_io.labeled_cloud_bytes(XYZ[:2], np.array([99, -1]), np.array([-1, -1]), np.zeros(2), 13)
    records = np.frombuffer(data, dtype=cloud_io.labeled_cloud_dtype())
    grey = cloud_io.pack_rgb(np.array([[128, 128, 128]], dtype=np.uint8)).view(np.uint32)[0]
    assert (records['rgb'].view(np.uint32) == grey).all()
    np.testing.assert_array_equal(records['label'], [cloud_io.UNKNOWN_LABEL] * 2)
