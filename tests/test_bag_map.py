"""`mpnet-bag --map`: offline mapping of a simulated drive's bag (`mpnet-synth` frames written as a rosbag2 with
the true poses on /tf), its clouds put into the fixed frame by tf2 from the bag itself; the map file is written
atomically and holds the drive's points in the map frame."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('tf2_ros')
pytest.importorskip('trimesh')

from ros_helpers import labeled_records, read_bag, tiny_checkpoint  # noqa: E402

from mpnet_model.data.synthetic.bags import write_sequence_bag  # noqa: E402
from mpnet_model.data.synthetic.frames import generate_frames, read_sequence  # noqa: E402
from mpnet_model.infer.scene import SceneSegmenter  # noqa: E402
from mpnet_model.mapping import MapConfig, SemanticMapper  # noqa: E402
from mpnet_ros import bag_tool  # noqa: E402
from mpnet_ros.transforms import bag_transforms  # noqa: E402


@pytest.fixture(scope='module')
def drive(tmp_path_factory):
    root = tmp_path_factory.mktemp('drive')
    summary = generate_frames(root / 'frames', {1: 1}, sensors=('os1-64',), scenes=('room',), frames=3, spacing=0.5,
                              columns=512, seed=3, progress=False)
    seq_dir = next((root / 'frames').glob('Area_1/*'))
    bag = write_sequence_bag(seq_dir, root / 'bag')
    assert summary['sequences'][0]['frames'] == 3
    return seq_dir, bag, tiny_checkpoint(root / 'tiny.pt')


def world_points(seq_dir, index: int, max_range: float) -> np.ndarray:
    meta = read_sequence(seq_dir)
    entry = meta['frames'][index]
    with np.load(seq_dir / entry['file']) as data:
        xyz = data['xyz'][np.linalg.norm(data['xyz'], axis=1) <= max_range].astype(np.float64)
    pose = np.asarray(entry['world_from_sensor'])
    return xyz @ pose[:3, :3].T + pose[:3, 3]


def test_bag_transforms_are_the_drive_poses(drive):
    seq_dir, bag, _ = drive
    transforms = bag_transforms(bag)
    meta = read_sequence(seq_dir)
    for entry in meta['frames']:
        np.testing.assert_allclose(transforms.lookup('map', 'os_lidar', entry['stamp_ns']),
                                   entry['world_from_sensor'], atol=1e-5)


def test_map_a_bag_offline(drive, tmp_path, capsys):
    seq_dir, bag, checkpoint = drive
    out_map, out_bag = tmp_path / 'drive.ply', tmp_path / 'labelled'
    code = bag_tool.main([str(bag), str(out_bag), '--map', str(out_map), '--fixed-frame', 'map', '--model',
                          str(checkpoint), '--max-range', '8', '--quiet'])
    assert code == 0
    printed = capsys.readouterr().out
    assert 'mpnet-bag: 3/3 frames segmented (0 skipped)' in printed and str(out_map) in printed
    assert not list(tmp_path.glob('.drive.ply*'))
    mapper = SemanticMapper(SceneSegmenter.from_config('torch', checkpoint), MapConfig())
    mapper.load(out_map)
    assert mapper.frame == 3 and len(mapper) > 1000
    # every frame's points, put in the world frame with the true poses, are in the map's voxels
    for index in range(3):
        rows, found = mapper.voxels.find(world_points(seq_dir, index, 8.0))
        assert found.mean() > 0.99
    # the labelled bag: clouds in the map frame, labels from the map
    clouds = [msg for topic, _, _, msg in read_bag(out_bag) if topic == '/mpnet_segment/labeled_cloud']
    assert len(clouds) == 3 and all(c.header.frame_id == 'map' for c in clouds)
    last = labeled_records(clouds[-1])
    labels, _, _ = mapper.lookup(np.stack([last['x'], last['y'], last['z']], 1))
    np.testing.assert_array_equal(last['label'], np.where(labels >= 0, labels, 255))


def test_map_only_and_bad_arguments(drive, tmp_path, monkeypatch):
    _, bag, checkpoint = drive
    out_map = tmp_path / 'static.npz'
    assert bag_tool.main([str(bag), '--map', str(out_map), '--model', str(checkpoint), '--max-range', '4',
                          '--quiet']) == 0                         # no fixed frame: the sensor's own frame
    assert out_map.is_file()
    errors = []
    monkeypatch.setattr(bag_tool.LOG, 'error', lambda fmt, *args: errors.append(fmt % args))
    assert bag_tool.main([str(bag), '--map', str(tmp_path / 'map.pcd'), '--model', str(checkpoint)]) == 2
    assert errors == [f"parameter 'map_save_path'={str(tmp_path / 'map.pcd')!r}: a map file ends in .npz or .ply"]
    with pytest.raises(SystemExit):
        bag_tool.main([str(bag)])                                  # neither an output bag nor a map
