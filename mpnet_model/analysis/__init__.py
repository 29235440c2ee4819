"""The paper's analyses (§4.3 ablation and memory size, §4.4 dominance tiers and rare cases, Figs. 3-5), one
command each (`mpnet-analyse`, see docs/analyses.md), on any dataset the loaders read.

An analysis config is a training config (sections model / data / optim / run, see `mpnet_model.train.config`)
plus an `analysis:` section (`AnalysisConfig`). `{out}` in data.root, data.cache_dir and run.out_dir is replaced
by the output folder, so a synthetic benchmark can be generated into it on the fly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpnet_model.config import ABLATIONS, ConfigError
from mpnet_model.train.config import TrainConfig, config_from_dict, parse_override, read_yaml_mapping


@dataclass
class SyntheticConfig:
    """Rooms generated into data.root when data.dataset is 'synthetic' and the folder holds no Area_* yet."""
    generate: bool = True
    areas: dict[int, int] = field(default_factory=lambda: {1: 4, 2: 4, 5: 3})   # area -> number of rooms
    density: float = 300.0                  # points per m^2 before occlusion (the generator's default is 1500)
    seed: int = 0
    rare_prob: float = 0.5                  # share of rooms with planted rare arrangements


@dataclass
class AnalysisConfig:
    rows: list[str] = field(default_factory=lambda: list(ABLATIONS))   # Table-1 rows to train and compare
    seeds: list[int] = field(default_factory=lambda: [0])             # every run is repeated per seed
    split: str = 'test'                     # rooms evaluated: test | val | train
    # Whole-scene inference for evaluation (SceneSegmenter options).
    eval_batch_size: int = 8
    bandwidth: float = 0.6
    min_instance_points: int = 50
    # Also evaluate every ablation run with bandwidth / size fraction tuned on the validation rooms (eval_tuned/).
    tune_postprocess: bool = False
    tune_bandwidths: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5])
    tune_fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    # Memory-size sweep (§4.3 "Memory Size"): Mc values, trained as `sweep_row`.
    sweep_mem_per_class: list[int] = field(default_factory=lambda: [5, 10, 20, 40])
    sweep_row: str = 'full'
    # Memory addressing sharpness (eq. 2): softmax(scale * cos) for every scale, trained as `sweep_row`, with
    # entropy / largest weight / spread of the read feature measured on `addressing_blocks` evaluated blocks.
    sweep_memory_scale: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0])
    addressing_blocks: int = 64
    # Rare cases (§4.4): the `rare_fraction` of gt instances with the lowest IoU under `rare_reference`.
    rare_fraction: float = 0.2
    rare_reference: str = 'baseline'
    rare_per_class: bool = False
    # Per-class training curves (Fig. 5): per-epoch block-level instance metrics on this many validation blocks
    # (0 = do not compute them; the trainer itself logs only val/oacc, val/miou, val/loss).
    curve_val_blocks: int = 64
    curve_classes: list[str] = field(default_factory=lambda: ['wall', 'sofa'])
    # Pictures (Figs. 3 and 4).
    vis_row: str = 'full'                   # model whose memory slots are shown
    vis_compare_row: str = 'baseline'       # t-SNE: embeddings without memory
    vis_scenes: int = 2
    vis_slots: int = 4
    tsne_blocks: int = 4                    # blocks of a scene whose point embeddings are projected
    tsne_points: int = 2000
    tsne_iter: int = 500
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self, class_names: tuple[str, ...]) -> AnalysisConfig:
        def bad(key: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f'analysis config: analysis.{key}={value!r}: {why}')

        for key in ('rows',):
            unknown = [r for r in getattr(self, key) if r not in ABLATIONS]
            if unknown or not getattr(self, key):
                raise bad(key, getattr(self, key), f'need a non-empty list of {sorted(ABLATIONS)}')
        for key in ('sweep_row', 'rare_reference', 'vis_row', 'vis_compare_row'):
            if getattr(self, key) not in ABLATIONS:
                raise bad(key, getattr(self, key), f'choose one of {sorted(ABLATIONS)}')
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise bad('seeds', self.seeds, 'need a non-empty list of integers')
        if self.split not in ('test', 'val', 'train'):
            raise bad('split', self.split, "choose 'test', 'val' or 'train'")
        if not self.sweep_mem_per_class or any(not isinstance(m, int) or m < 1 for m in self.sweep_mem_per_class):
            raise bad('sweep_mem_per_class', self.sweep_mem_per_class, 'need a non-empty list of integers >= 1')
        if not 0 < self.rare_fraction <= 1:
            raise bad('rare_fraction', self.rare_fraction, 'must be in (0, 1]')
        unknown = [c for c in self.curve_classes if c not in class_names]
        if unknown:
            raise bad('curve_classes', self.curve_classes, f'unknown class(es) {unknown}; classes: {class_names}')
        if not self.sweep_memory_scale or any(not s > 0 for s in self.sweep_memory_scale):
            raise bad('sweep_memory_scale', self.sweep_memory_scale, 'need a non-empty list of numbers > 0')
        for key in ('eval_batch_size', 'min_instance_points', 'vis_scenes', 'vis_slots', 'tsne_blocks',
                    'tsne_points', 'tsne_iter', 'addressing_blocks'):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), 'must be >= 1')
        if self.bandwidth <= 0 or self.curve_val_blocks < 0:
            raise bad('bandwidth', self.bandwidth, 'bandwidth must be > 0 and curve_val_blocks >= 0')
        return self


def _typed(cls: type, section: str, values: Any) -> Any:
    """Dataclass from a mapping, casting each value to the type of its default; errors name the key."""
    if not isinstance(values, dict):
        raise ConfigError(f'analysis config: {section} must be a mapping, got {values!r}')
    defaults = cls()
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f'analysis config: unknown key(s) {[f"{section}.{k}" for k in unknown]}; '
                          f'known: {sorted(known)}')
    kwargs = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        try:
            if dataclasses.is_dataclass(default):
                value = _typed(type(default), f'{section}.{key}', value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError
            elif isinstance(default, dict):
                value = {int(k): int(v) for k, v in dict(value).items()}
            elif isinstance(default, list):
                if not isinstance(value, (list, tuple)):
                    value = [value]
                value = [type(default[0])(v) for v in value] if default else list(value)
            else:
                value = type(default)(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f'analysis config: {section}.{key}={value!r}: expected '
                              f'{type(default).__name__}') from error
        kwargs[key] = value
    return cls(**kwargs)


def _fill_out(value: str, out_dir: Path) -> str:
    return value.replace('{out}', str(out_dir))


def load_analysis_config(path: str | Path | None, out_dir: str | Path, overrides: list[str] = ()
                         ) -> tuple[TrainConfig, AnalysisConfig]:
    """YAML + `section.key=value` overrides -> (base training config, analysis config).

    Overrides starting with `analysis.` (e.g. `analysis.seeds=[0,1]`, `analysis.synthetic.density=100`) go to
    the analysis section, all others to the training config.
    """
    data = read_yaml_mapping(path, 'analysis config') if path else {}
    analysis = dict(data.pop('analysis', None) or {})
    train_overrides = []
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != 'analysis':
            train_overrides.append(text)
            continue
        if len(keys) < 2:
            raise ConfigError(f'override {text!r}: use analysis.key=value')
        target = analysis
        for key in keys[1:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f'override {text!r}: analysis.{key} is not a section')
        target[keys[-1]] = value
    out_dir = Path(out_dir)
    base = config_from_dict(data, train_overrides)
    base.data.root = _fill_out(base.data.root, out_dir)
    base.data.cache_dir = _fill_out(base.data.cache_dir, out_dir)
    base.run.out_dir = _fill_out(base.run.out_dir, out_dir)
    return base, _typed(AnalysisConfig, 'analysis', analysis).validate(base.model.class_names)
