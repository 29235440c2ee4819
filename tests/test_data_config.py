"""The data config's own module (read by training and evaluation), mixed sources, fine-tuning from weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mpnet_model.config import ConfigError
from mpnet_model.data.config import DataConfig, load_data_config
from mpnet_model.data.synthetic import generate_dataset

SMALL_MODEL = dict(num_points=128, feature_dim=16, sa_npoints=[64, 16, 8, 4],
                   sa_mlps=[[8, 8, 16], [16, 16, 32], [32, 32, 32], [32, 32, 64]],
                   fp_mlps=[[32, 32], [32, 32], [32, 16], [16, 16, 16]], mem_per_class=2)


@pytest.fixture(scope='module')
def roots(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip('embreex')
    from mpnet_model.data.synthetic.frames import generate_frames

    base = tmp_path_factory.mktemp('data')
    generate_dataset(base / 'static', areas={1: 1, 5: 1}, seed=3, density=60, progress=False)
    generate_frames(base / 'frames', {1: 2, 5: 1}, ('os1-64',), ('room',), frames=1, columns=512, progress=False)
    return base / 'static', base / 'frames'


def test_data_section_alone_with_overrides_and_clear_errors(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text(yaml.safe_dump({'model': {'num_points': 64}, 'optim': {'epochs': 3},
                                    'data': {'dataset': 'frames', 'root': 'x', 'lidar_colour': 'grey'}}))
    d = load_data_config(path, ['data.test_area=2', 'optim.epochs=9'])
    assert (d.dataset, d.root, d.test_area, d.lidar_colour) == ('frames', 'x', 2, 'grey')
    with pytest.raises(ConfigError, match='lidar_colour'):
        load_data_config(path, ['data.lidar_colour=rainbow'])
    with pytest.raises(ConfigError, match='data.mix'):
        DataConfig(mix='frames').validate()
    with pytest.raises(ConfigError, match='data.dataset'):
        load_data_config(None, ['data.dataset=kitti'])


def test_mixed_sources_train_on_both_and_load_each_with_its_loader(roots):
    static, frames = roots
    d = DataConfig(dataset='synthetic', root=str(static), test_area=5, val_fraction=0.0,
                   mix=f'frames:{frames}').validate()
    split = d.split()
    balanced = DataConfig(dataset='synthetic', root=str(static), test_area=5, val_fraction=0.0, repeat=3,
                          mix=f'frames:{frames}@2').validate().split()
    assert len(balanced.train) == 3 * 1 + 2 * 2 and len(split.train) == 1 + 2
    with pytest.raises(ConfigError, match='@k'):
        DataConfig(mix=f'frames:{frames}@0').validate()
    rooms = [split.loader(p) for p in split.train]
    names = sorted(r.name for r in rooms)
    assert any(n.startswith('Area_1') for n in names)                      # the static room
    assert sum('frame_0000' in n for n in names) == 2                      # two simulated drives of Area 1
    assert all(p.parent.parent.name != 'Area_5' for p in split.train)
    assert [p.parent.name for p in split.test] == ['Area_5']               # the main dataset's test rooms only
    frame_room = next(r for r in rooms if 'frame_' in r.name)
    assert frame_room.rgb.min() >= 0 and frame_room.rgb.max() <= 1 and frame_room.num_points > 1000


def test_init_from_starts_from_other_weights_and_names_a_bad_file(roots, tmp_path):
    from mpnet_model.model.checkpoint import CheckpointError
    from mpnet_model.train.cli import build_datasets
    from mpnet_model.train.config import config_from_dict
    from mpnet_model.train.trainer import Trainer

    static, _ = roots
    raw = {'model': SMALL_MODEL, 'data': {'dataset': 'synthetic', 'root': str(static), 'test_area': 5,
                                          'cache_dir': str(tmp_path / 'cache'), 'val_fraction': 0.0},
           'run': {'out_dir': str(tmp_path / 'a'), 'device': 'cpu', 'num_workers': 0}}
    cfg = config_from_dict(raw)
    train_set, _ = build_datasets(cfg, progress=False)
    first = Trainer(cfg, train_set)
    first.save(tmp_path / 'source.pt')
    first.close()
    raw['run'].update(out_dir=str(tmp_path / 'b'), init_from=str(tmp_path / 'source.pt'), seed=5)
    second = Trainer(config_from_dict(raw), train_set)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    second.close()
    raw['run'].update(out_dir=str(tmp_path / 'c'), init_from=str(tmp_path / 'missing.pt'))
    with pytest.raises(CheckpointError, match='init_from'):
        Trainer(config_from_dict(raw), train_set)
    # Weights trained without the embedding dropout start a model with it (the dropout layer shifts the head's
    # output conv from index 3 to 4): same weights, same eval outputs; a real mismatch (another width) still fails.
    raw['model'] = {**SMALL_MODEL, 'embed_dropout': 0.0}
    raw['run'].update(out_dir=str(tmp_path / 'd'), init_from='')
    plain = Trainer(config_from_dict(raw), train_set)
    plain.save(tmp_path / 'plain.pt')
    plain.close()
    raw['model'] = {**SMALL_MODEL, 'embed_dropout': 0.5}
    raw['run'].update(out_dir=str(tmp_path / 'e'), init_from=str(tmp_path / 'plain.pt'))
    dropped = Trainer(config_from_dict(raw), train_set)
    assert 'embedding.4.weight' in dropped.model.state_dict() and 'embedding.3.weight' in plain.model.state_dict()
    points = torch.rand(2, SMALL_MODEL['num_points'], 9)
    plain.model.eval()
    dropped.model.eval()
    with torch.no_grad():
        expected, got = plain.model(points), dropped.model(points)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    dropped.close()
    raw['model'] = {**SMALL_MODEL, 'mem_per_class': 3}
    raw['run'].update(out_dir=str(tmp_path / 'f'))
    with pytest.raises(CheckpointError, match='init_from'):
        Trainer(config_from_dict(raw), train_set)


def test_eval_of_sensor_frames_uses_the_asked_block_layout(roots, tmp_path, monkeypatch):
    """`mpnet-eval --layout` reaches the segmenter for sensor frames too (not only for rooms)."""
    import json

    from mpnet_model.default_model import DEFAULT_CHECKPOINT
    from mpnet_model.eval.evaluate import main
    from mpnet_model.infer.scene import SceneSegmenter

    _, frames = roots
    config = tmp_path / 'frames.yaml'
    config.write_text(yaml.safe_dump({'data': {'dataset': 'frames', 'root': str(frames), 'test_area': 5,
                                               'cache_dir': str(tmp_path / 'cache')}}))
    made = []
    real = SceneSegmenter.from_config.__func__

    def spy(cls, *args, **kwargs):
        segmenter = real(cls, *args, **kwargs)
        made.append(segmenter)
        return segmenter

    monkeypatch.setattr(SceneSegmenter, 'from_config', classmethod(spy))
    assert main(['--checkpoint', str(DEFAULT_CHECKPOINT), '--config', str(config), '--layout', 'tile',
                 '--border-join', '0.2', '--window', '1', '--out', str(tmp_path / 'out')]) == 0
    assert [(s.layout, s.border_join) for s in made] == [('tile', 0.2)]
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['window 1']['clouds'] == 1
