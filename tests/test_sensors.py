"""Virtual sensors of `mpnet-synth`: analytic checks in an empty box room, presets, frames on disk, bags."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip('trimesh')
pytest.importorskip('embreex')

from mpnet_model.data.synthetic import bags, frames  # noqa: E402
from mpnet_model.data.synthetic.layout import CLASS_INDEX, _Scene, _structure  # noqa: E402
from mpnet_model.data.synthetic.lidar import lidar_preset, simulate_lidar  # noqa: E402
from mpnet_model.data.synthetic.raycast import RayCaster, SceneMesh  # noqa: E402
from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL, camera_preset, simulate_camera  # noqa: E402
from mpnet_model.data.synthetic.shading import StainField  # noqa: E402
from mpnet_model.data.synthetic.trajectory import rot_y  # noqa: E402

SIZE = np.array([6.0, 4.0, 3.0])          # empty room: floor z=0, ceiling z=3, walls x=0, x=6, y=0, y=4


def _box_room() -> tuple[_Scene, RayCaster]:
    scene = _Scene(np.random.default_rng(0), SIZE.copy())
    _structure(scene)
    return scene, RayCaster(SceneMesh.from_scene(scene))


def _static(pose: np.ndarray):
    return lambda t: np.repeat(pose[None], len(np.atleast_1d(t)), axis=0)


def _box_distance(origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance along each ray (origin inside the room) to the room's inner faces."""
    with np.errstate(divide='ignore'):
        t = np.where(direction > 0, (SIZE - origin) / direction, -origin / direction)
    return np.where(np.abs(direction) < 1e-12, np.inf, t).min(axis=1)


def test_lidar_hits_box_room_at_analytic_ranges_and_beam_angles():
    _, caster = _box_room()
    preset = lidar_preset('os1-128', 1024)
    pose = np.eye(4)
    pose[:3, 3] = [2.5, 1.7, 1.1]
    frame = simulate_lidar(caster, preset, _static(pose), np.random.default_rng(0), ideal=True)
    origin_l, direction_l, _ = preset.beams()
    expected = _box_distance(origin_l.reshape(-1, 3) + pose[:3, 3], direction_l.reshape(-1, 3)) + preset.beam_origin_m
    valid = frame.valid.reshape(-1)
    assert valid.mean() > 0.99                       # a closed room returns (almost) every beam
    got = frame.range_mm.reshape(-1)[valid] / 1e3
    np.testing.assert_allclose(got, expected[valid], atol=1.5e-3)   # mm rounding + float32
    # each point lies on its beam: elevation seen from the beam origin is the calibrated altitude of its ring
    rel = frame.xyz.reshape(-1, 3)[valid] - origin_l.reshape(-1, 3)[valid]
    elevation = np.degrees(np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1])))
    rings = np.repeat(np.arange(preset.rows), preset.columns)[valid]
    np.testing.assert_allclose(elevation, preset.altitude_deg[rings], atol=0.05)
    # and its azimuth is the encoder angle of its firing column plus the beam's azimuth offset (destaggered image)
    azimuth = np.arctan2(rel[:, 1], rel[:, 0])
    m = preset.measurement_ids().reshape(-1)[valid]
    want = 2 * np.pi * (1 - m / preset.columns) - np.radians(preset.azimuth_deg[rings])
    np.testing.assert_allclose(np.angle(np.exp(1j * (azimuth - want))), 0.0, atol=1e-3)
    # the labels name the surfaces hit: 1.9 m under the ceiling the top beam (+21 deg) reaches it only 4.9 m away,
    # beyond the far corner (4.2 m): walls and floor only, the floor only below the horizon
    assert set(np.unique(frame.sem[frame.valid])) == {CLASS_INDEX['floor'], CLASS_INDEX['wall']}
    assert np.all(frame.sem[preset.altitude_deg > 0] != CLASS_INDEX['floor'])


@pytest.mark.parametrize('name, columns, rows, vfov', [('os1-64', 1024, 64, 33.2), ('os1-128', 2048, 128, 42.77),
                                                       ('os0-128', 1024, 128, 90.0)])
def test_point_count_and_ring_structure_match_the_preset(name, columns, rows, vfov):
    _, caster = _box_room()
    preset = lidar_preset(name, columns)
    assert (preset.rows, preset.columns) == (rows, columns)
    assert preset.altitude_deg[0] - preset.altitude_deg[-1] == pytest.approx(vfov, abs=0.01)
    pose = np.eye(4)
    pose[:3, 3] = [3.0, 2.0, 1.2]
    frame = simulate_lidar(caster, preset, _static(pose), np.random.default_rng(1))
    assert frame.xyz.shape == (rows, columns, 3) and frame.range_mm.shape == (rows, columns)
    # with noise and dropouts: still ~all beams return in a closed room, no return is 0,0,0 with range 0
    assert 0.95 * rows * columns < frame.valid.sum() <= rows * columns
    assert np.all(frame.xyz[~frame.valid] == 0)
    # rings are rows: the median elevation of each row follows the calibration, top beam first
    origin_l, _, _ = preset.beams()                       # elevation as seen from each beam's origin
    rel = np.where(frame.valid[..., None], frame.xyz - origin_l, np.nan)
    row_elevation = np.nanmedian(np.degrees(np.arctan2(rel[..., 2], np.hypot(rel[..., 0], rel[..., 1]))), axis=1)
    np.testing.assert_allclose(row_elevation, preset.altitude_deg, atol=0.3)
    # firing times span one 10 Hz sweep
    assert frame.t_ns.min() == 0 and frame.t_ns.max() < 100_000_000


def test_rgbd_frustum_and_intrinsics_are_respected():
    scene, caster = _box_room()
    preset = camera_preset('kinect')
    pose = np.eye(4)
    pose[:3, :3] = rot_y(np.radians(20)) @ BODY_FROM_OPTICAL       # body x along world x, pitched 20 deg down
    pose[:3, 3] = [0.8, 2.0, 1.0]
    frame = simulate_camera(caster, preset, pose, StainField.draw(np.random.default_rng(0)),
                            np.random.default_rng(0), ideal=True)
    assert frame.xyz.shape == (preset.height, preset.width, 3) and frame.rgb.shape == (480, 640, 3)
    valid = frame.valid
    assert valid.mean() > 0.99
    xyz = frame.xyz[valid].astype(np.float64)
    rows, cols = np.nonzero(valid)
    assert np.all(xyz[:, 2] >= preset.min_depth) and np.all(xyz[:, 2] <= preset.max_depth)
    # every point projects back onto its own pixel with the preset's intrinsics
    np.testing.assert_allclose(preset.fx * xyz[:, 0] / xyz[:, 2] + preset.cx, cols, atol=1e-3)
    np.testing.assert_allclose(preset.fy * xyz[:, 1] / xyz[:, 2] + preset.cy, rows, atol=1e-3)
    # and depth is the analytic distance to the room's faces along the pixel's ray (z-unit rays)
    rays = preset.rays()[valid] @ pose[:3, :3].T
    np.testing.assert_allclose(xyz[:, 2], _box_distance(np.broadcast_to(pose[:3, 3], rays.shape), rays), atol=1e-4)
    # looking 20 deg down from 1 m: the bottom rows see the floor, the top rows the far wall
    assert np.all(frame.sem[-1][valid[-1]] == CLASS_INDEX['floor'])
    assert np.all(frame.sem[0][valid[0]] == CLASS_INDEX['wall'])


def test_rgbd_noise_and_holes_grow_with_range():
    _, caster = _box_room()
    preset = camera_preset('kinect')
    assert preset.depth_sigma(np.array([1.0]))[0] < preset.depth_sigma(np.array([4.0]))[0] / 5
    pose = np.eye(4)
    pose[:3, :3] = BODY_FROM_OPTICAL
    pose[:3, 3] = [0.8, 2.0, 1.5]
    stains = StainField.draw(np.random.default_rng(0))
    ideal = simulate_camera(caster, preset, pose, stains, np.random.default_rng(2), ideal=True)
    real = simulate_camera(caster, preset, pose, stains, np.random.default_rng(2))
    both = ideal.valid & real.valid
    assert real.valid.sum() < ideal.valid.sum()                               # holes (edges at least)
    assert np.all(np.isnan(real.xyz[~real.valid])) and np.all(real.sem[~real.valid] == -1)
    err = np.abs(real.xyz[..., 2] - ideal.xyz[..., 2])[both]
    assert 0 < np.median(err) < 0.05


def _sequence(tmp_path, sensor, frames_count=2, columns=512):
    from mpnet_model.data.synthetic.floors import room_scene

    rng = np.random.default_rng(3)
    scene = room_scene(rng, 'room_test', room_type='office')
    result = frames.simulate_sequence(scene, frames.SequenceSpec(sensor, 'room', frames_count, 1.0, columns), rng)
    return frames.write_sequence(tmp_path / 'Area_1' / f'{sensor}_room', scene, *result), result


def test_frames_load_in_the_level_frame_with_runtime_colours(tmp_path):
    from mpnet_model.infer.scene import intensity_to_grey

    seq_dir, (sim, stamps, level, sensor) = _sequence(tmp_path, 'os1-64')
    meta = frames.read_sequence(seq_dir)
    assert [f['stamp_ns'] for f in meta['frames']] == stamps and sensor['preset'] == 'OS-1-64'
    room = frames.load_frame(seq_dir / 'frame_0000.npz')
    assert room.num_points == int(sim[0].valid.sum())
    np.testing.assert_array_equal(room.sem, sim[0].sem[sim[0].valid])
    np.testing.assert_allclose(room.rgb, intensity_to_grey(sim[0].intensity[sim[0].valid]))
    grey = frames.load_frame(seq_dir / 'frame_0000.npz', lidar_colour='grey')
    assert np.all(grey.rgb == 0.5)
    # in the level frame the floor lies flat below the sensor, within the robot's small tilt
    floor = room.xyz[room.sem == CLASS_INDEX['floor']]
    pose = np.asarray(meta['frames'][0]['world_from_sensor'])
    assert abs(np.median(floor[:, 2]) + pose[2, 3]) < 0.1
    assert np.percentile(floor[:, 2], 95) - np.percentile(floor[:, 2], 5) < 0.4
    window = frames.load_window(seq_dir, 1, 2)
    assert window.num_points == int(sim[0].valid.sum() + sim[1].valid.sum())


def test_simulated_bag_round_trips_through_mpnet_bag_with_stamps(tmp_path):
    from mpnet_ros.bag_tool import read_bag_clouds, segment_bag
    from mpnet_ros.params import validate_params

    seq_dir, (sim, stamps, _, _) = _sequence(tmp_path, 'os1-64')
    bag = bags.write_sequence_bag(seq_dir, tmp_path / 'bag')
    clouds = list(read_bag_clouds(bag, '/ouster/points'))
    assert [c.stamp_ns for c in clouds] == stamps and clouds[0].frame_id == 'os_lidar'
    stored = np.load(seq_dir / 'frame_0000.npz')
    np.testing.assert_array_equal(clouds[0].xyz, stored['xyz'])               # parse == what was simulated
    np.testing.assert_array_equal(clouds[0].intensity, stored['intensity'])
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        conn = [c for c in reader.connections if c.topic == '/ouster/points'][0]
        msg = reader.deserialize(next(reader.messages(connections=[conn]))[2], conn.msgtype)
    layout = [(f.name, f.offset, f.datatype) for f in msg.fields]
    assert layout == [('x', 0, 7), ('y', 4, 7), ('z', 8, 7), ('intensity', 16, 7), ('t', 20, 6),
                      ('reflectivity', 24, 4), ('ring', 26, 4), ('ambient', 28, 4), ('range', 32, 6)]
    assert (msg.height, msg.width, msg.point_step) == (64, 512, 48)
    out = tmp_path / 'labelled'
    params = validate_params({}, check_files=True)
    summary = segment_bag(bag, out, params, topic='/ouster/points', progress=False)
    assert summary.frames_out == 2 and summary.bad_frames == 0
    labelled = list(read_bag_clouds(out, '/mpnet_segment/labeled_cloud'))
    assert [c.stamp_ns for c in labelled] == stamps
    assert len(labelled[0].xyz) == len(clouds[0].xyz)


def test_camera_bag_is_organised_xyzrgb_with_nan_holes(tmp_path):
    seq_dir, (sim, stamps, _, _) = _sequence(tmp_path, 'kinect', frames_count=1)
    bag = bags.write_sequence_bag(seq_dir, tmp_path / 'bag')
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        conn = [c for c in reader.connections if c.topic == '/camera/depth_registered/points'][0]
        _, log_time, raw = next(reader.messages(connections=[conn]))
        msg = reader.deserialize(raw, conn.msgtype)
    assert log_time == stamps[0] and msg.header.frame_id == 'camera_rgb_optical_frame'
    assert (msg.height, msg.width, msg.point_step, msg.is_dense) == (480, 640, 16, False)
    assert [(f.name, f.offset) for f in msg.fields] == [('x', 0), ('y', 4), ('z', 8), ('rgb', 12)]
    xyz = np.frombuffer(msg.data, np.float32).reshape(480, 640, 4)[..., :3]
    np.testing.assert_array_equal(np.isfinite(xyz[..., 2]), sim[0].valid)


def test_cli_writes_sensor_frames_and_bags(tmp_path, capsys):
    from mpnet_model.data.synthetic import main

    assert main(['--out', str(tmp_path / 'd'), '--sensor', 'realsense', '--areas', '1', '--sequences-per-area',
                 '1', '--frames', '1', '--scenes', 'room', '--bags', '--quiet']) == 0
    summary = json.loads((tmp_path / 'd' / frames.SUMMARY_FILENAME).read_text())
    assert [s['sequence'] for s in summary['sequences']] == ['realsense_room_1_1']
    assert (tmp_path / 'd' / 'bags' / 'realsense_room_1_1' / 'metadata.yaml').is_file()
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path / 'e'), '--sensor', 'velodyne', '--quiet'])
