"""The data section of a config: which dataset, where, how it is split and cut into blocks.

Its own module (below training and evaluation, both read it): `mpnet-train` builds its datasets from it and
`mpnet-eval` picks its test rooms or frames from it, from the same YAML file.

Mixing sources: `mix` adds more datasets to the training and validation splits, e.g.
`mix: frames:data/sim_lidar,frames:data/sim_rgbd@2` trains on the static rooms of `root` plus simulated sensor frames
(each source split by the same `test_area`); the test split stays the main dataset's. `@k` (and `repeat` for the main
dataset) lists a source's training rooms k times, to balance the sources' shares of the blocks in an epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpnet_model.config import ConfigError
from mpnet_model.io.yaml_config import apply_overrides, build_section, read_yaml_mapping

DATASETS = ('s3dis', 'scannet', 'synthetic', 'frames')
LIDAR_COLOURS = ('intensity', 'grey')


@dataclass
class DataConfig:
    dataset: str = 's3dis'                   # s3dis | scannet | synthetic (S3DIS layout) | frames (sensor frames)
    root: str = 'data/s3dis'                 # dataset root (S3DIS: folder holding Area_1 ... Area_6)
    cache_dir: str = 'cache'                 # per-room numpy cache
    test_area: int = 5                       # S3DIS/synthetic: hold-out area (ignored when fold is set)
    fold: int = 0                            # 1..6: S3DIS 6-fold cross-validation fold (0 = use test_area)
    val_fraction: float = 0.1                # share of training rooms held out for best-model selection
    label_map: str = ''                      # ScanNet: scannetv2-labels.combined.tsv
    train_split: str = ''                    # ScanNet: scannetv2_train.txt (list of scene names)
    val_split: str = ''                      # ScanNet: scannetv2_val.txt
    block_size: float = 1.0
    stride: float = 0.5
    min_points: int = 100
    max_rooms: int = 0                       # 0 = all; a small number for smoke runs
    lidar_colour: str = 'intensity'          # frames: lidar colour channels as the runtime makes them (or 'grey')
    mix: str = ''                            # extra training sources 'dataset:root[@k],...' (module docstring)
    repeat: int = 1                          # with mix: list the main dataset's training rooms this many times
    # Training-only augmentations for robot clouds, 'name=value,...' (mpnet_model/data/transforms.py), e.g.
    # 'stray_points=0.3,partial_view=0.3,floor_error=0.1,tall_walls=0.2'; '' = none.
    augment: str = ''

    def split(self):
        """The rooms this config trains, validates and tests on (`mpnet_model.data.splits.RoomSplit`)."""
        from mpnet_model.data.splits import mixed_split, split_rooms

        main = split_rooms(self.dataset, self.root, self.test_area, self.fold, self.val_fraction, self.label_map,
                           self.train_split, self.val_split, self.max_rooms, self.lidar_colour)
        if not self.mix:
            return main
        extra = [split_rooms(dataset, root, self.test_area, self.fold, self.val_fraction,
                             max_rooms=self.max_rooms, lidar_colour=self.lidar_colour)
                 for dataset, root, _ in self.mix_sources()]
        return mixed_split([(self.root, main, self.repeat)]
                           + [(root, s, k) for (_, root, k), s in zip(self.mix_sources(), extra)])

    def mix_sources(self) -> list[tuple[str, str, int]]:
        """[(dataset, root, repeat)] of `mix`."""
        sources = []
        for item in (s.strip() for s in self.mix.split(',')):
            if not item:
                continue
            dataset, sep, root = item.partition(':')
            root, _, repeat = root.partition('@')
            if not sep or dataset not in DATASETS or dataset == 'scannet' or not root or \
                    (repeat and not (repeat.isdigit() and int(repeat) >= 1)):
                raise ConfigError(f"data.mix item {item!r}: expected 'dataset:root' or 'dataset:root@k' (k >= 1) "
                                  f'with dataset one of {[d for d in DATASETS if d != "scannet"]}')
            sources.append((dataset, root, int(repeat or 1)))
        return sources

    def validate(self) -> DataConfig:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f'data config: data.{key}={getattr(self, key)!r}: {why}')

        if self.dataset not in DATASETS:
            raise bad('dataset', f'choose one of {list(DATASETS)}')
        if not 0 <= self.fold <= 6:
            raise bad('fold', 'must be 0 (off) or 1..6')
        if not 0 <= self.val_fraction < 1:
            raise bad('val_fraction', 'must be in [0, 1)')
        if not 0 < self.stride <= self.block_size:
            raise bad('stride', 'must be in (0, block_size]')
        if self.lidar_colour not in LIDAR_COLOURS:
            raise bad('lidar_colour', f'choose one of {list(LIDAR_COLOURS)}')
        if self.repeat < 1:
            raise bad('repeat', 'must be >= 1')
        from mpnet_model.data.transforms import parse_augment

        parse_augment(self.augment)
        self.mix_sources()
        return self




def data_config_from_dict(section: dict[str, Any]) -> DataConfig:
    return build_section('data', DataConfig, section or {}).validate()


def load_data_config(path: str | Path | None, overrides=()) -> DataConfig:
    """The `data` section of a YAML config file (other sections are ignored), with `data.key=value` overrides."""
    data = read_yaml_mapping(path, 'config') if path else {}
    data = apply_overrides(data, [o for o in overrides if o.split('=', 1)[0].strip().startswith('data.')])
    return data_config_from_dict(data.get('data') or {})
