"""Checkpoint format: atomic weights_only-safe round trip and clear errors for every way a file can be wrong."""
import numpy as np
import pytest
import torch

from mpnet_model import __version__
from mpnet_model.config import STORED_LEGACY, ablation_config, small_config
from mpnet_model.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mpnet_model.model.mpnet import MPNet

TINY = dict(num_points=256, sa_npoints=(64, 32, 16, 4))


@pytest.fixture(scope='module')
def trained_like():
    """A model whose BN running stats and memory differ from a fresh init, with its config."""
    cfg = small_config(**TINY)
    torch.manual_seed(0)
    model = MPNet(cfg).train()
    with torch.no_grad():
        model(torch.rand(2, cfg.num_points, 9))
        model.memory.memory.mul_(1.5)
    return model.eval(), cfg


def test_round_trip_gives_identical_outputs(tmp_path, trained_like):
    model, cfg = trained_like
    extra = {'epoch': 3, 'metrics': {'miou': np.float32(0.25)}, 'block': (1.0, 0.5), 'weights': np.ones(3)}
    path = save_checkpoint(tmp_path / 'sub' / 'model.pt', model, cfg, extra=extra)
    assert [p.name for p in path.parent.iterdir()] == ['model.pt']   # no temp file left behind
    loaded, loaded_cfg, meta = load_checkpoint(path)
    assert loaded_cfg == cfg and not loaded.training
    assert meta['version'] == __version__ and meta['class_names'] == list(cfg.class_names)
    assert meta['extra']['epoch'] == 3 and meta['extra']['block'] == [1.0, 0.5]
    assert meta['extra']['metrics']['miou'] == pytest.approx(0.25)
    assert torch.equal(meta['extra']['weights'], torch.ones(3, dtype=torch.float64))
    points = torch.rand(2, cfg.num_points, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = model(points), loaded(points)
    for key in ('sem_logits', 'ins_embed', 'centroids', 'ins_weights', 'seg_weights'):
        assert torch.equal(expected[key], got[key]), key


def test_wrapped_model_is_saved_without_prefix(tmp_path, trained_like):
    model, cfg = trained_like
    path = save_checkpoint(tmp_path / 'model.pt', torch.nn.DataParallel(model), cfg)
    assert set(read_checkpoint(path)['state_dict']) == set(model.state_dict())


def test_file_is_plain_weights_only(tmp_path, trained_like):
    model, cfg = trained_like
    path = save_checkpoint(tmp_path / 'model.pt', model, cfg)
    payload = torch.load(path, weights_only=True)
    assert payload['format'] == CHECKPOINT_FORMAT and payload['extra'] == {}
    assert isinstance(payload['config']['sa_mlps'], list) and isinstance(payload['config']['sa_mlps'][0], list)
    assert type(payload['state_dict']) is dict
    assert read_checkpoint(path)['class_names'] == list(cfg.class_names)


def test_overwrite_replaces_existing_file(tmp_path, trained_like):
    model, cfg = trained_like
    path = tmp_path / 'model.pt'
    path.write_bytes(b'old')
    save_checkpoint(path, model, cfg, extra={'epoch': 9})
    assert load_checkpoint(path)[2]['extra']['epoch'] == 9


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r'nope\.pt: checkpoint file not found'):
        load_checkpoint(tmp_path / 'nope.pt')


def test_truncated_and_garbage_files(tmp_path, trained_like):
    model, cfg = trained_like
    good = save_checkpoint(tmp_path / 'good.pt', model, cfg).read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r'truncated\.pt: cannot read checkpoint \(corrupt'):
        load_checkpoint(truncated)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match='garbage.pt: cannot read checkpoint'):
        load_checkpoint(garbage)


def test_wrong_format(tmp_path, trained_like):
    path = tmp_path / 'plain.pt'
    torch.save(trained_like[0].state_dict(), path)   # a bare state_dict is not our format
    with pytest.raises(CheckpointError, match=r"plain\.pt: not an mpnet_ros-checkpoint file \(format=None\)"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="format='list'"):
        load_checkpoint(path)


def test_config_state_dict_mismatch_names_keys_and_shapes(tmp_path, trained_like):
    model, cfg = trained_like
    path = tmp_path / 'mismatch.pt'
    save_checkpoint(path, model, cfg.replace(mem_per_class=cfg.mem_per_class + 1))
    expected_rows = (cfg.mem_per_class + 1) * cfg.num_classes
    with pytest.raises(CheckpointError, match=rf'memory\.memory: checkpoint shape \({cfg.memory_slots}, 64\) != '
                                              rf'model shape \({expected_rows}, 64\)'):
        load_checkpoint(path)
    save_checkpoint(path, model, ablation_config('baseline', cfg))   # config says: no memory
    with pytest.raises(CheckpointError, match=r"not in model: \['memory\.memory'\]"):
        load_checkpoint(path)


def test_invalid_config_in_checkpoint(tmp_path, trained_like):
    model, cfg = trained_like
    path = save_checkpoint(tmp_path / 'model.pt', model, cfg)
    payload = torch.load(path, weights_only=True)
    payload['config']['feature_dim'] = -1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r'invalid model config in checkpoint: .*feature_dim=-1'):
        load_checkpoint(path)
    del payload['extra']
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"lacks key\(s\) \['extra'\]"):
        load_checkpoint(path)


def test_unsafe_extra_is_rejected_before_writing(tmp_path, trained_like):
    model, cfg = trained_like
    with pytest.raises(CheckpointError, match=r"extra\['when'\]: object cannot be stored"):
        save_checkpoint(tmp_path / 'model.pt', model, cfg, extra={'when': object()})
    assert not any(tmp_path.iterdir())


def test_stored_config_without_new_keys_rebuilds_the_legacy_model(tmp_path):
    # Checkpoints written before level0_features / embed_dropout / dis_norm existed were trained with 'all',
    # no embedding dropout and the L2 loss: they must load as that model, not as today's defaults.
    legacy = small_config(**STORED_LEGACY)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / 'old.pt', MPNet(legacy), legacy)
    payload = torch.load(path, weights_only=True)
    for key in STORED_LEGACY:
        del payload['config'][key]
    torch.save(payload, path)
    _, cfg, _ = load_checkpoint(path)
    assert {key: getattr(cfg, key) for key in STORED_LEGACY} == STORED_LEGACY
