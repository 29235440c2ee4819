"""Training configuration: YAML file -> validated dataclasses, with `key.sub=value` command-line overrides.

The defaults reproduce the ASIS schedule the paper trains with (§4.2): Adam, lr 1e-3 halved every 300k samples
(floor 1e-5), batch 24, BatchNorm momentum decayed on the same schedule, 100 epochs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpnet_model.config import ABLATIONS, ConfigError, ModelConfig
from mpnet_model.data.config import DataConfig
from mpnet_model.io.yaml_config import apply_overrides, build_section, parse_override, read_yaml_mapping

# parse_override and read_yaml_mapping are re-exported for the analysis config.
__all__ = ['DataConfig', 'OptimConfig', 'RunConfig', 'TrainConfig', 'config_from_dict', 'load_config',
           'parse_override', 'read_yaml_mapping', 'validate']


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
    init_from: str = ''                      # start from these weights (e.g. the shipped model) unless resuming


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


def validate(cfg: TrainConfig) -> TrainConfig:
    def bad(key: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f'train config: {key}={value!r}: {why}')

    cfg.data.validate()
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


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> TrainConfig:
    data = apply_overrides(data, overrides)
    unknown = sorted(set(data) - {'model', 'ablation', *_SECTIONS})
    if unknown:
        raise ConfigError(f'train config: unknown section(s) {unknown}')
    ablation = str(data.get('ablation') or '')
    model = ModelConfig.from_dict(data.get('model') or {})
    if ablation:
        model = model.replace(**ABLATIONS.get(ablation, {}))
    sections = {name: build_section(name, cls, data.get(name) or {}) for name, cls in _SECTIONS.items()}
    return validate(TrainConfig(model=model, ablation=ablation, **sections))


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    data = read_yaml_mapping(path, 'train config') if path else {}
    return config_from_dict(data, overrides)
