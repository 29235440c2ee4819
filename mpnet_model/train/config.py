"""Training configuration: YAML file -> validated dataclasses, with `key.sub=value` command-line overrides.

The defaults reproduce the ASIS schedule the paper trains with (§4.2): Adam, lr 1e-3 halved every 300k samples
(floor 1e-5), batch 24, BatchNorm momentum decayed on the same schedule, 100 epochs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpnet_model.config import ABLATIONS, ConfigError, ModelConfig


@dataclass
class DataConfig:
    dataset: str = 's3dis'                   # s3dis | scannet | synthetic (synthetic rooms use the S3DIS layout)
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

    def split(self):
        """The rooms this config trains, validates and tests on (`mpnet_model.data.splits.RoomSplit`)."""
        from mpnet_model.data.splits import split_rooms

        return split_rooms(self.dataset, self.root, self.test_area, self.fold, self.val_fraction, self.label_map,
                           self.train_split, self.val_split, self.max_rooms)


@dataclass
class OptimConfig:
    epochs: int = 100
    batch_size: int = 24
    lr: float = 1e-3
    lr_decay_rate: float = 0.5
    lr_decay_samples: int = 300_000          # halve the lr every this many training samples (blocks)
    lr_min: float = 1e-5
    bn_momentum_init: float = 0.5            # torch momentum = 1 - TF decay; ASIS: decay 0.5 -> 0.99
    bn_momentum_min: float = 0.01
    weight_decay: float = 0.0
    grad_clip: float = 0.0                   # 0 = off
    max_steps: int = 0                       # 0 = no limit; stop after this many optimiser steps (smoke runs)


@dataclass
class RunConfig:
    out_dir: str = 'runs/mpnet'
    seed: int = 0
    device: str = 'auto'                     # auto | cpu | cuda | cuda:N
    amp: bool = True                         # mixed precision on CUDA
    amp_cpu: bool = False                    # mixed precision on CPU too (bf16 is fast on CPUs with bf16 units)
    amp_dtype: str = 'fp16'                  # fp16 (with a GradScaler) | bf16 (CPU; CUDA on Ampere and newer)
    num_workers: int = 2
    val_every: int = 1                       # epochs between validations
    log_every: int = 20                      # steps between TensorBoard scalars
    resume: bool = True                      # continue from out_dir/last.pt when present
    val_blocks: int = 0                      # 0 = all validation blocks
    curve_blocks: int = 64                   # validation blocks clustered for per-class instance curves (0 = off)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ablation: str = ''                       # optional Table-1 row applied on top of `model`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {'data': DataConfig, 'optim': OptimConfig, 'run': RunConfig}


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Cast a YAML/CLI value to the type of the default, with an error naming the key."""
    name = f'{section}.{key}'
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ('true', 'false', '1', '0', 'yes', 'no'):
            return value.lower() in ('true', '1', 'yes')
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            if isinstance(value, (str, float)) and float(value) == int(float(value)):
                return int(float(value))
        except (ValueError, OverflowError):
            pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        return str(value)
    raise ConfigError(f'train config: {name}={value!r}: expected {type(default).__name__}')


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f'train config: section {section!r} must be a mapping, got {values!r}')
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f'train config: unknown key(s) {[f"{section}.{k}" for k in unknown]}; '
                          f'known: {sorted(known)}')
    return cls(**{k: _coerce(section, k, v, getattr(defaults, k)) for k, v in values.items()})


def validate(cfg: TrainConfig) -> TrainConfig:
    def bad(key: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f'train config: {key}={value!r}: {why}')

    if cfg.data.dataset not in ('s3dis', 'scannet', 'synthetic'):
        raise bad('data.dataset', cfg.data.dataset, "choose 's3dis', 'scannet' or 'synthetic'")
    if not 0 <= cfg.data.fold <= 6:
        raise bad('data.fold', cfg.data.fold, 'must be 0 (off) or 1..6')
    if not 0 <= cfg.data.val_fraction < 1:
        raise bad('data.val_fraction', cfg.data.val_fraction, 'must be in [0, 1)')
    if not 0 < cfg.data.stride <= cfg.data.block_size:
        raise bad('data.stride', cfg.data.stride, 'must be in (0, block_size]')
    for key in ('epochs', 'batch_size', 'lr_decay_samples'):
        if getattr(cfg.optim, key) <= 0:
            raise bad(f'optim.{key}', getattr(cfg.optim, key), 'must be > 0')
    if not 0 < cfg.optim.lr_min <= cfg.optim.lr:
        raise bad('optim.lr', cfg.optim.lr, 'need 0 < lr_min <= lr')
    if not 0 < cfg.optim.lr_decay_rate <= 1:
        raise bad('optim.lr_decay_rate', cfg.optim.lr_decay_rate, 'must be in (0, 1]')
    if cfg.run.device != 'auto' and not (cfg.run.device == 'cpu' or cfg.run.device.startswith('cuda')):
        raise bad('run.device', cfg.run.device, "use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if cfg.run.amp_dtype not in ('fp16', 'bf16'):
        raise bad('run.amp_dtype', cfg.run.amp_dtype, "choose 'fp16' or 'bf16'")
    if cfg.ablation and cfg.ablation not in ABLATIONS:
        raise bad('ablation', cfg.ablation, f'choose one of {sorted(ABLATIONS)}')
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    if '=' not in text:
        raise ConfigError(f'override {text!r}: expected key.sub=value')
    key, raw = text.split('=', 1)
    return key.strip().split('.'), yaml.safe_load(raw)


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> TrainConfig:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            data[path[0]] = value
        elif len(path) == 2:
            data.setdefault(path[0], {})[path[1]] = value
        else:
            raise ConfigError(f'override {text!r}: use section.key=value')
    unknown = sorted(set(data) - {'model', 'ablation', *_SECTIONS})
    if unknown:
        raise ConfigError(f'train config: unknown section(s) {unknown}')
    ablation = str(data.get('ablation') or '')
    model = ModelConfig.from_dict(data.get('model') or {})
    if ablation:
        model = model.replace(**ABLATIONS.get(ablation, {}))
    sections = {name: _build_section(name, cls, data.get(name) or {}) for name, cls in _SECTIONS.items()}
    return validate(TrainConfig(model=model, ablation=ablation, **sections))


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file gives {}); errors start with `what` and name the file.

    `what` says which kind of file this is, e.g. 'train config' or 'analysis config'.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{what} file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f'{what} {path}: invalid YAML: {err}') from err
    if not isinstance(data, dict):
        raise ConfigError(f'{what} {path}: top level must be a mapping')
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    data = read_yaml_mapping(path, 'train config') if path else {}
    return config_from_dict(data, overrides)
