"""Trainer: config parsing, ASIS schedule, a real short run, exact resume after kill -9, DDP on gloo."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mpnet_model.config import ConfigError
from mpnet_model.data.synthetic import generate_dataset
from mpnet_model.model.checkpoint import load_checkpoint, read_checkpoint
from mpnet_model.train.cli import build_datasets, dataset_stats
from mpnet_model.train.cli import main as train_main
from mpnet_model.train.config import load_config
from mpnet_model.train.trainer import Trainer, bn_momentum, default_epoch_end, learning_rate, rng_state

SMALL_MODEL = dict(num_points=256, feature_dim=32, sa_npoints=[128, 32, 8, 4],
                   sa_mlps=[[16, 16, 32], [32, 32, 64], [64, 64, 64], [64, 64, 128]],
                   fp_mlps=[[64, 64], [64, 64], [64, 32], [32, 32, 32]], mem_per_class=4)


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic')
    generate_dataset(root, areas={1: 2, 5: 1}, seed=3, density=150, progress=False)
    return root


def write_config(path: Path, root: Path, out: Path, cache: Path | None = None, **optim) -> Path:
    cfg = {'ablation': 'full', 'model': SMALL_MODEL,
           # stride = block size: 4x fewer blocks keeps each epoch short on a shared 2-core CI machine.
           'data': {'dataset': 'synthetic', 'root': str(root), 'cache_dir': str(cache or out / 'cache'), 'test_area': 5,
                    'val_fraction': 0.5, 'stride': 1.0},
           'optim': {'epochs': 2, 'batch_size': 8, 'lr': 0.005, **optim},
           'run': {'out_dir': str(out / 'run'), 'num_workers': 0, 'device': 'cpu', 'log_every': 1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_overrides_and_errors_name_the_key(tmp_path):
    cfg = load_config(None, ['optim.lr=0.01', 'run.amp=false', 'ablation=baseline', 'data.fold=2'])
    assert cfg.optim.lr == 0.01 and cfg.run.amp is False and cfg.data.fold == 2
    assert cfg.model.use_ins_memory is False and cfg.model.use_seg_memory is False
    with pytest.raises(ConfigError, match='optim.lrr'):
        load_config(None, ['optim.lrr=1'])
    with pytest.raises(ConfigError, match='optim.batch_size'):
        load_config(None, ['optim.batch_size=abc'])
    with pytest.raises(ConfigError, match='data.dataset'):
        load_config(None, ['data.dataset=kitti'])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('optim: [1, 2')
    with pytest.raises(ConfigError, match='invalid YAML'):
        load_config(bad)
    with pytest.raises(ConfigError, match='not found'):
        load_config(tmp_path / 'missing.yaml')


def test_asis_schedule_hand_computed():
    cfg = load_config(None)
    assert learning_rate(cfg, 0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 299_999) == pytest.approx(1e-3)
    assert learning_rate(cfg, 300_000) == pytest.approx(5e-4)
    assert learning_rate(cfg, 900_000) == pytest.approx(1.25e-4)
    assert learning_rate(cfg, 10**8) == pytest.approx(1e-5)          # floor
    assert bn_momentum(cfg, 0) == pytest.approx(0.5)                  # TF decay 0.5
    assert bn_momentum(cfg, 300_000) == pytest.approx(0.25)
    assert bn_momentum(cfg, 10**8) == pytest.approx(0.01)             # TF decay clipped at 0.99


def test_train_writes_checkpoints_logs_and_resumes(synthetic_root, tmp_path):
    cfg = load_config(write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path))
    train_set, val_set = build_datasets(cfg, progress=False)
    assert len(train_set) > 0 and val_set is not None and len(val_set) > 0
    trainer = Trainer(cfg, train_set, val_set, dataset_stats(train_set))
    first = trainer.train_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
    trainer.epoch = 0
    trainer.fit()
    trainer.close()
    run = Path(cfg.run.out_dir)
    assert (run / 'last.pt').is_file() and (run / 'best.pt').is_file()
    assert list((run / 'tb').glob('events.out.tfevents.*'))
    extra = read_checkpoint(run / 'last.pt')['extra']
    assert extra['epoch'] == 2 and len(extra['history']) == 2 and 'val_miou' in extra['history'][-1]
    # Per-class block-level instance precision per epoch (Fig. 5 curves), also in TensorBoard.
    assert any(key.startswith('val_ins_prec/') for key in extra['history'][-1]), extra['history'][-1].keys()
    model, model_cfg, meta = load_checkpoint(run / 'best.pt')
    assert (meta['extra']['block_size'], meta['extra']['stride']) == (cfg.data.block_size, cfg.data.stride)
    assert meta['extra']['class_mean_instance_points'] == train_set.class_mean_instance_points().tolist()
    assert model_cfg == cfg.model

    # Resume: the same run asked for 3 epochs continues after epoch 2 instead of starting again.
    cfg3 = load_config(tmp_path / 'c.yaml', ['optim.epochs=3'])
    resumed = Trainer(cfg3, train_set, val_set)
    assert resumed.epoch == 2 and resumed.samples_seen == extra['samples_seen']
    resumed.fit()
    resumed.close()
    assert read_checkpoint(run / 'last.pt')['extra']['epoch'] == 3


def test_loss_decreases_on_repeated_block(synthetic_root, tmp_path):
    cfg = load_config(write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path), ['run.resume=false'])
    train_set, _ = build_datasets(cfg, progress=False)
    trainer = Trainer(cfg, train_set)
    batch = [torch.stack(t) for t in zip(*[train_set[i] for i in range(8)])]
    losses = [trainer.train_step(*batch)['total'] for _ in range(25)]
    trainer.close()
    assert losses[-1] < 0.7 * losses[0], losses


def _cli(config: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'mpnet_model.train.cli', '--config', str(config), *extra]


# Runs mpnet-train in a child process that kills itself with SIGKILL in the middle of an epoch: after drawing
# `kill_item` training blocks of epoch `kill_epoch` (0-based), i.e. at a known point, not after a sleep.
KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from mpnet_model.data.dataset import BlockDataset
from mpnet_model.train.cli import main
config, kill_epoch, kill_item = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
original, drawn = BlockDataset.__getitem__, [0]
def getitem(self, index):
    if self.augment and self.epoch == kill_epoch:
        drawn[0] += 1
        if drawn[0] > kill_item:
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self, index)
BlockDataset.__getitem__ = getitem
sys.exit(main(['--config', config]))
"""


def _assert_same_tree(found, expected, where: str, exact: bool = True) -> None:
    """Nested dicts / lists / tensors / numbers equal (exactly, or within float tolerance for tensors)."""
    if isinstance(expected, torch.Tensor):
        if exact:
            assert torch.equal(found, expected), where
        else:
            torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-6, msg=where)
    elif isinstance(expected, dict):
        assert set(found) == set(expected), where
        for key in expected:
            _assert_same_tree(found[key], expected[key], f'{where}[{key!r}]', exact)
    elif isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), where
        for index, (a, b) in enumerate(zip(found, expected)):
            _assert_same_tree(a, b, f'{where}[{index}]', exact)
    else:
        assert found == expected, where


def test_kill_9_mid_epoch_then_resume_reaches_the_uninterrupted_weights(synthetic_root, tmp_path):
    cache = tmp_path / 'cache'
    straight = write_config(tmp_path / 'a.yaml', synthetic_root, tmp_path / 'a', cache, epochs=2)
    assert train_main(['--config', str(straight)]) == 0                  # uninterrupted, 2 epochs

    config = write_config(tmp_path / 'b.yaml', synthetic_root, tmp_path / 'b', cache, epochs=2)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    killed = subprocess.run([sys.executable, '-c', KILLED_RUN, str(config), '1', '12'], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / 'b' / 'run' / 'last.pt'
    saved = read_checkpoint(last)                                         # still readable: writes are atomic
    assert saved['extra']['epoch'] == 1, 'the kill was meant to land in epoch 2'

    # Right after resuming, the model, optimiser, grad scaler, progress (LR / BN schedule) and every RNG state
    # equal what was saved.
    cfg = load_config(config)
    train_set, val_set = build_datasets(cfg, progress=False)
    resumed = Trainer(cfg, train_set, val_set, dataset_stats(train_set))
    extra = saved['extra']
    _assert_same_tree(resumed.model.state_dict(), saved['state_dict'], 'model')
    _assert_same_tree(resumed.optimizer.state_dict(), extra['optimizer'], 'optimizer')
    _assert_same_tree(resumed.scaler.state_dict(), extra['scaler'], 'scaler')
    _assert_same_tree(rng_state(), extra['rng'], 'rng')
    assert (resumed.epoch, resumed.samples_seen, resumed.step) == (1, extra['samples_seen'], extra['step'])
    assert extra['optimizer']['param_groups'][0]['lr'] == learning_rate(cfg, extra['samples_seen'] - 8)
    assert resumed.best_miou == extra['best_miou'] and resumed.history == extra['history']
    resumed.fit()
    resumed.close()

    # ... and the finished run has the uninterrupted run's weights and optimiser state (float tolerance).
    expected, found = read_checkpoint(tmp_path / 'a' / 'run' / 'last.pt'), read_checkpoint(last)
    _assert_same_tree(found['state_dict'], expected['state_dict'], 'weights', exact=False)
    _assert_same_tree(found['extra']['optimizer'], expected['extra']['optimizer'], 'optimizer', exact=False)
    assert [h['epoch'] for h in found['extra']['history']] == [1, 2]
    assert found['extra']['samples_seen'] == expected['extra']['samples_seen']


def test_epoch_end_is_a_plain_list_of_callables(synthetic_root, tmp_path):
    cfg = load_config(write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path, epochs=2, max_steps=2))
    train_set, _ = build_datasets(cfg, progress=False)
    seen = []
    trainer = Trainer(cfg, train_set, epoch_end=[lambda t, summary: seen.append((t.epoch, sorted(summary)))])
    trainer.fit()
    trainer.close()
    assert [epoch for epoch, _ in seen] == [1] and 'train_total' in seen[0][1]     # max_steps=2: one epoch
    assert not (tmp_path / 'run' / 'last.pt').exists()                 # no checkpoint callable, no checkpoint
    assert [f.__name__ for f in default_epoch_end()] == ['validate_epoch', 'record_epoch', 'save_checkpoints']


def test_ddp_two_cpu_processes_gloo(synthetic_root, tmp_path):
    config = write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path, epochs=10, max_steps=3, batch_size=4)
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1')
    # --standalone: a local rendezvous on a free port (no fixed port to collide with a parallel run).
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'mpnet_model.train.cli', '--config', str(config)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    extra = read_checkpoint(tmp_path / 'run' / 'last.pt')['extra']
    # Each of the 3 steps consumed one batch per process.
    assert extra['step'] == 3 and extra['samples_seen'] == 3 * 4 * 2


def test_missing_dataset_is_a_clear_cli_error(tmp_path, capsys):
    config = write_config(tmp_path / 'c.yaml', tmp_path / 'nowhere', tmp_path)
    assert train_main(['--config', str(config)]) == 2
    assert 'dataset folder not found' in capsys.readouterr().err
