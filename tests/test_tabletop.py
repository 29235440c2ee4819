"""Manipulation views of `mpnet-synth --scenes tabletop`: camera pose bounds, the table filling the view, objects on
it, determinism, and frames that the trainer's and the benchmark's readers take as they take the drives' frames."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip('trimesh')
pytest.importorskip('embreex')

from mpnet_model.data.classes import S3DIS_CLASSES  # noqa: E402
from mpnet_model.data.synthetic import frames, tabletop  # noqa: E402
from mpnet_model.data.synthetic.layout import CLASS_INDEX  # noqa: E402
from mpnet_model.data.synthetic.raycast import RayCaster  # noqa: E402
from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL, camera_preset  # noqa: E402
from mpnet_model.data.synthetic.trajectory import rot_x, rot_y, rot_z  # noqa: E402

TABLE = CLASS_INDEX['table']
H_LO, H_HI = tabletop.HEIGHT_RANGE
P_LO, P_HI = tabletop.PITCH_RANGE


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """Both cameras, 2 areas x 1 sequence x 2 views, written by the CLI with bags and previews."""
    from mpnet_model.data.synthetic import main

    root = tmp_path_factory.mktemp('tabletop')
    assert main(['--out', str(root), '--sensor', 'kinect,realsense', '--scenes', 'tabletop', '--areas', '2',
                 '--sequences-per-area', '1', '--frames', '2', '--bags', '--preview', '--quiet']) == 0
    return root


def test_view_geometry_of_a_hand_made_pose():
    # optical frame pitched 45 deg down about the body y axis, rolled 4 deg, 0.5 m above a top at z = 0.75
    pose = np.eye(4)
    pose[:3, :3] = rot_z(1.0) @ rot_y(np.radians(45.0)) @ rot_x(np.radians(4.0)) @ BODY_FROM_OPTICAL
    pose[:3, 3] = [1.0, 2.0, 1.25]
    height, pitch, roll = tabletop.view_geometry(pose, 0.75)
    assert height == pytest.approx(0.5) and pitch == pytest.approx(45.0) and abs(roll) == pytest.approx(4.0)
    level = np.eye(4)
    level[:3, :3] = rot_z(-2.0) @ BODY_FROM_OPTICAL                     # looking at the horizon
    assert tabletop.view_geometry(level, 0.0)[1:] == pytest.approx((0.0, 0.0), abs=1e-9)


@pytest.mark.parametrize('sensor', ['kinect', 'realsense'])
def test_sampled_views_keep_height_pitch_roll_and_see_mostly_table(sensor):
    preset = camera_preset(sensor)
    seen = []
    for seed in range(5):
        rng = np.random.default_rng([seed, 22])
        scene = tabletop.tabletop_scene(rng)
        table = scene.table
        assert len(table.objects) >= 3
        assert all(scene.instances[i].cls == 'clutter' for i in table.objects)
        assert scene.instances[table.instance].cls == 'table'
        # every object stands on the top (as the layout's desk clutter does), inside the table's footprint
        mesh = scene.mesh
        for i in table.objects:
            v = mesh.vertices[mesh.triangles[mesh.instance == i]].reshape(-1, 3)
            assert v[:, 2].min() == pytest.approx(table.top_z, abs=1e-6)
            local = (v[:, :2] - table.trans[:2]) @ table.rot[:2, :2]
            assert np.all(np.abs(local) <= np.array([table.width, table.depth]) / 2 + 1e-6)
        caster = RayCaster(mesh)
        rig, poses = tabletop.plan_views(caster, preset, scene, 3, rng)
        for pose in poses:
            height, pitch, roll = tabletop.view_geometry(pose, table.top_z)
            assert H_LO <= height <= H_HI and P_LO <= pitch <= P_HI
            assert abs(roll) <= tabletop.ROLL_MAX + tabletop.TILT_CLIP + 0.5
            assert np.all(pose[:3, 3] > scene.bounds[0] + 0.15) and np.all(pose[:3, 3] < scene.bounds[1] - 0.15)
            on_table, on_objects = tabletop.probe(caster, preset, pose, table)
            assert on_table >= tabletop.MIN_TABLE_SHARE and on_objects >= tabletop.MIN_OBJECT_SHARE
            assert on_table + on_objects >= tabletop.MIN_TOP_SHARE
            seen.append((height, pitch))
    seen = np.array(seen)
    assert np.ptp(seen[:, 0]) > 0.2 and np.ptp(seen[:, 1]) > 10.0     # the views do vary


def test_lidar_gets_a_clear_error_for_tabletop(tmp_path, capsys):
    from mpnet_model.data.synthetic import main

    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path / 'x'), '--sensor', 'os1-64,kinect', '--scenes', 'tabletop', '--quiet'])
    err = capsys.readouterr().err
    assert 'tabletop' in err and 'os1-64' in err
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path / 'y'), '--sensor', 'kinect', '--scenes', 'table', '--quiet'])
    assert "unknown scene kind 'table'" in capsys.readouterr().err
    with pytest.raises(ValueError, match='not a tabletop scene'):
        from mpnet_model.data.synthetic.floors import room_scene
        rng = np.random.default_rng(0)
        frames.simulate_sequence(room_scene(rng), frames.SequenceSpec('kinect', 'tabletop', 1), rng)


def test_cli_writes_tabletop_frames_in_the_camera_format(written):
    summary = json.loads((written / frames.SUMMARY_FILENAME).read_text())
    assert [s['sequence'] for s in summary['sequences']] == ['kinect_tabletop_1_1', 'realsense_tabletop_1_1',
                                                             'kinect_tabletop_2_1', 'realsense_tabletop_2_1']
    assert summary['scenes'] == ['tabletop']
    shares = []
    for seq in summary['sequences']:
        seq_dir = written / f"Area_{seq['area']}" / seq['sequence']
        meta = frames.read_sequence(seq_dir)
        assert meta['sensor']['kind'] == 'rgbd' and meta['classes'] == list(S3DIS_CLASSES)
        table = meta['scene']['rooms'][0]['table']
        assert meta['scene']['instances'][table['instance']]['class'] == 'table'
        assert len(meta['frames']) == 2 and (seq_dir / 'preview.png').stat().st_size > 10_000
        assert (written / 'bags' / seq['sequence'] / 'metadata.yaml').is_file()
        level = np.asarray(meta['level_from_sensor'])
        for entry in meta['frames']:
            pose = np.asarray(entry['world_from_sensor'])
            height, pitch, _ = tabletop.view_geometry(pose, table['top_z'])
            assert H_LO - 1e-5 <= height <= H_HI + 1e-5 and P_LO - 1e-3 <= pitch <= P_HI + 1e-3
            with np.load(seq_dir / entry['file']) as data:         # the drives' camera frame layout
                assert sorted(data.files) == ['ins', 'pixel', 'rgb', 'sem', 'xyz']
                assert data['rgb'].shape == (480, 640, 3) and data['rgb'].dtype == np.uint8
                assert data['xyz'].dtype == np.float32 and np.isfinite(data['xyz']).all()
                assert np.all(np.diff(data['pixel']) > 0) and data['sem'].dtype == np.int16
                assert np.all(data['xyz'][:, 2] > 0)                      # optical frame: z forward
                n = len(data['pixel'])
            room = frames.load_frame(seq_dir / entry['file'])              # what training and mpnet-eval read
            assert room.num_points == n == entry['points'] and 0.3 * 640 * 480 < n < 640 * 480
            share = float(np.mean(room.sem == TABLE))
            objects = np.isin(room.ins, table['objects'])
            assert share >= 0.4, (seq['sequence'], entry['file'], share)
            assert objects.mean() >= 0.01 and len(np.unique(room.ins[objects])) >= 1
            shares.append(share)
            # the level frame (tf: pitch and roll of the mounting) puts the table top flat, `height` below
            top = room.xyz[room.sem == TABLE]
            assert np.median(top[:, 2]) == pytest.approx(-height, abs=0.03)
            assert np.percentile(top[:, 2], 95) - np.percentile(top[:, 2], 5) < 0.08
            assert np.allclose(level, frames.read_sequence(seq_dir)['level_from_sensor'])
    assert np.mean(shares) >= 0.5


def test_tabletop_frames_feed_the_training_and_evaluation_readers(written, tmp_path):
    from pathlib import Path

    from mpnet_model.data.config import load_data_config
    from mpnet_model.data.dataset import BlockDataset, build_cache
    from mpnet_model.eval.frames import evaluate_clouds, frame_items

    config = Path(__file__).resolve().parents[1] / 'config' / 'eval_sim_tabletop.yaml'   # the benchmark's config
    split = load_data_config(config, [f'data.root={written}', 'data.test_area=2', 'data.val_fraction=0']).split()
    assert [p.parent.name for p in split.train] == ['kinect_tabletop_1_1'] * 2 + ['realsense_tabletop_1_1'] * 2
    assert len(split.test) == 4
    cache = build_cache(split.train[:1], tmp_path / 'cache', loader=split.loader, progress=False)
    blocks = BlockDataset(cache, num_points=512, progress=False)
    points, sem, _ = blocks[0]
    assert len(blocks) > 0 and points.shape == (512, 9) and int(sem.max()) < len(S3DIS_CLASSES)
    for window in (1, 2):                               # single views and the 2-view window (true poses)
        items = frame_items(split.test, window)
        result = evaluate_clouds(lambda room: (room.sem.copy(), room.ins.copy()), items, len(S3DIS_CLASSES),
                                 progress=False)
        assert len(items) == 4 // window and result['mIoU'] == pytest.approx(1.0)


def test_same_seed_same_views_and_pixels():
    def run(seed):
        rng = frames.sequence_rng(seed, 1, 0, 'realsense')
        scene = tabletop.tabletop_scene(rng, 'tabletop_1_1')
        return scene, frames.simulate_sequence(scene, frames.SequenceSpec('realsense', 'tabletop', 1), rng)

    (scene_a, a), (scene_b, b) = run(4), run(4)
    for key in ('xyz', 'rgb', 'sem', 'ins', 'world_from_sensor'):
        np.testing.assert_array_equal(getattr(a[0][0], key), getattr(b[0][0], key))
    assert a[1] == b[1] and scene_a.rooms == scene_b.rooms
    other = tabletop.tabletop_scene(frames.sequence_rng(5, 1, 0, 'realsense'), 'tabletop_1_1')
    assert other.rooms != scene_a.rooms
