"""`mpnet-train`: train MPNet from a YAML config (see config/train_*.yaml), with `--set section.key=value` overrides.

Example: mpnet-train --config config/train_s3dis.yaml --set data.root=/data/Stanford3dDataset_v1.2 --ablation full
Distributed: torchrun --nproc_per_node 4 -m mpnet_model.train.cli --config ...
"""
from __future__ import annotations

import argparse
import logging
import sys

from mpnet_model.config import ConfigError
from mpnet_model.data.dataset import BlockDataset, build_cache
from mpnet_model.train.config import TrainConfig, load_config
from mpnet_model.train.trainer import Trainer


def class_shares(dataset: BlockDataset) -> list[float]:
    """Share of each class among the training points (for the paper's dominance tiers, §4.4)."""
    counts = dataset.class_point_counts()
    return (counts / max(counts.sum(), 1)).tolist()


def dataset_stats(dataset: BlockDataset) -> dict[str, list[float]]:
    """Training-set statistics stored in every checkpoint: class shares (tiers) and the mean instance size per
    class (the evaluation's small-instance filter, as ASIS)."""
    return {'class_shares': class_shares(dataset),
            'class_mean_instance_points': dataset.class_mean_instance_points().tolist()}


def build_datasets(cfg: TrainConfig, progress: bool = True) -> tuple[BlockDataset, BlockDataset | None]:
    d = cfg.data
    split = d.split()
    kwargs = dict(num_points=cfg.model.num_points, block_size=d.block_size, stride=d.stride,
                  min_points=d.min_points, seed=cfg.run.seed, progress=progress,
                  encoding=cfg.model.input_encoding)
    train = BlockDataset(build_cache(split.train, d.cache_dir, split.loader, progress=progress), augment=True,
                         robot_augment=d.augment, **kwargs)
    val = None
    if split.val:
        val = BlockDataset(build_cache(split.val, d.cache_dir, split.loader, progress=progress), **kwargs)
    if train.class_names != cfg.model.class_names:
        raise ConfigError(f'model.class_names {list(cfg.model.class_names)} differ from the dataset\'s '
                          f'{list(train.class_names)}')
    return train, val


def train(cfg: TrainConfig, progress: bool = True) -> Trainer:
    train_set, val_set = build_datasets(cfg, progress)
    trainer = Trainer(cfg, train_set, val_set, dataset_stats(train_set))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='mpnet-train', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='YAML training config (config/train_*.yaml)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override a config value (repeatable), e.g. --set optim.epochs=10')
    parser.add_argument('--ablation', help='Table-1 row: baseline | focal | insmem | segmem | full')
    parser.add_argument('--out', help='output folder (run.out_dir)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    overrides = list(args.overrides)
    if args.ablation:
        overrides.append(f'ablation={args.ablation}')
    if args.out:
        overrides.append(f'run.out_dir={args.out}')
    try:
        cfg = load_config(args.config, overrides)
        trainer = train(cfg)
    except (ConfigError, FileNotFoundError) as error:
        print(f'mpnet-train: error: {error}', file=sys.stderr)
        return 2
    print(f'mpnet-train: done after {trainer.epoch} epochs; best val mIoU {trainer.best_miou:.4f}; '
          f'checkpoints in {trainer.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
