"""Trainer: config parsing, ASIS schedule, a real short run, resume (also after kill -9), DDP on gloo."""
import os
import signal
import subprocess
import sys
import time
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
from mpnet_model.train.trainer import Trainer, bn_momentum, learning_rate

SMALL_MODEL = dict(num_points=256, feature_dim=32, sa_npoints=[128, 32, 8, 4],
                   sa_mlps=[[16, 16, 32], [32, 32, 64], [64, 64, 64], [64, 64, 128]],
                   fp_mlps=[[64, 64], [64, 64], [64, 32], [32, 32, 32]], mem_per_class=4)


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic')
    generate_dataset(root, areas={1: 2, 5: 1}, seed=3, density=150, progress=False)
    return root


def write_config(path: Path, root: Path, out: Path, **optim) -> Path:
    cfg = {'ablation': 'full', 'model': SMALL_MODEL,
           # stride = block size: 4x fewer blocks keeps each epoch short on a shared 2-core CI machine.
           'data': {'dataset': 'synthetic', 'root': str(root), 'cache_dir': str(out / 'cache'), 'test_area': 5,
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


def test_resume_after_kill_9_keeps_finished_epochs(synthetic_root, tmp_path):
    config = write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path, epochs=3)
    last = tmp_path / 'run' / 'last.pt'
    proc = subprocess.Popen(_cli(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), 'no epoch finished before the deadline'
        time.sleep(0.1)                        # inside the next epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = read_checkpoint(last)['extra']['epoch']      # still readable: writes are atomic
    assert 1 <= done_before < 3, 'the run was not interrupted'
    assert train_main(['--config', str(config)]) == 0
    extra = read_checkpoint(last)['extra']
    assert extra['epoch'] == 3
    assert [h['epoch'] for h in extra['history']] == [1, 2, 3]


def test_ddp_two_cpu_processes_gloo(synthetic_root, tmp_path):
    config = write_config(tmp_path / 'c.yaml', synthetic_root, tmp_path, epochs=10, max_steps=3, batch_size=4)
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29533',
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
