"""Model configuration: one dataclass shared by the model, losses, trainer, export and runtimes.

Ablation rows of the paper's Table 1 are presets of this config (see `ABLATIONS`), not forks of the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mpnet_model.data.classes import S3DIS_CLASSES


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""


@dataclass
class ModelConfig:
    class_names: tuple[str, ...] = S3DIS_CLASSES
    in_channels: int = 9                     # xyz (block-centred) + rgb + normalised room xyz (ASIS)
    # What channels 2 and 6..8 encode (mpnet_model/data/encoding.py): 'room' (ASIS: z over the cloud's lowest z,
    # xyz over the cloud's extent; paper-faithful S3DIS / ScanNet) or 'floor' (height above the estimated floor,
    # no x/y location; robot frames).
    input_encoding: str = 'room'
    # Level-0 point features of the first SA level and the last FP skip. 'non_xyz' (ASIS): the channels after
    # xyz (rgb + room xyz, 6 of 9), xyz only as coordinates; 'all': every input channel, xyz included.
    level0_features: str = 'non_xyz'
    num_points: int = 4096                   # points per 1 m x 1 m block
    feature_dim: int = 128                   # D: width of F_seg / F_ins and of the memory rows
    embed_dim: int = 5                       # c': instance embedding dimension
    embed_dropout: float = 0.5               # dropout before the last embedding layer (ASIS: keep_prob 0.5)
    # PointNet++ SSG backbone (paper: vanilla PointNet++ as in ASIS).
    sa_npoints: tuple[int, ...] = (1024, 256, 64, 16)
    sa_radii: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    sa_nsample: int = 32
    sa_mlps: tuple[tuple[int, ...], ...] = ((32, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 512))
    fp_mlps: tuple[tuple[int, ...], ...] = ((256, 256), (256, 256), (256, 128), (128, 128, 128))
    # Prototype memory (paper §3.2): M = mem_per_class * C rows of width feature_dim.
    mem_per_class: int = 150                 # Mc
    use_ins_memory: bool = True              # InsMem: instance branch reads M
    use_seg_memory: bool = True              # SegMem: semantic branch reads C (derived from M, eq. 1)
    use_regularization: bool = True          # Regul: R_seg (eq. 4) and R_ins (eq. 3)
    use_focal_loss: bool = False             # FL row of Table 1
    focal_gamma: float = 2.0
    # Softmax over cosine similarities (eq. 2). 1.0 is the paper-literal form; a larger scale sharpens it.
    memory_scale: float = 1.0
    # Losses (paper §3.5).
    delta_v: float = 0.5
    delta_d: float = 1.5
    dis_reg_weight: float = 0.001
    dis_norm: str = 'l1'                     # norm in L_dis's pull / push / regulariser: 'l1' (ASIS's code) | 'l2'
    rseg_margin: float = 5.0
    rseg_form: str = 'per_negative'          # 'literal' (eq. 4 as printed, sum over negatives) | 'per_negative'
    lambda_ins: float = 1.0                  # λ for R_ins in eq. 6
    dropout: float = 0.5

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def memory_slots(self) -> int:
        return self.mem_per_class * self.num_classes

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.sa_npoints = tuple(self.sa_npoints)
        self.sa_radii = tuple(float(r) for r in self.sa_radii)
        self.sa_mlps = tuple(tuple(m) for m in self.sa_mlps)
        self.fp_mlps = tuple(tuple(m) for m in self.fp_mlps)
        self.validate()

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f'model config: {key}={getattr(self, key)!r}: {why}')

        if self.num_classes < 2:
            raise bad('class_names', 'need at least 2 classes')
        for key in ('in_channels', 'num_points', 'feature_dim', 'embed_dim', 'mem_per_class', 'sa_nsample'):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(key, 'must be a positive integer')
        if self.in_channels < 3:
            raise bad('in_channels', 'the first 3 channels must be xyz')
        if not (len(self.sa_npoints) == len(self.sa_radii) == len(self.sa_mlps) == len(self.fp_mlps)):
            raise bad('sa_npoints', 'sa_npoints, sa_radii, sa_mlps and fp_mlps must have the same length')
        if list(self.sa_npoints) != sorted(self.sa_npoints, reverse=True) or self.sa_npoints[0] > self.num_points:
            raise bad('sa_npoints', 'must decrease and not exceed num_points')
        if self.fp_mlps[-1][-1] != self.feature_dim:
            raise bad('fp_mlps', f'last FP layer must output feature_dim={self.feature_dim}')
        if self.rseg_form not in ('literal', 'per_negative'):
            raise bad('rseg_form', "must be 'literal' or 'per_negative'")
        if self.dis_norm not in ('l1', 'l2'):
            raise bad('dis_norm', "must be 'l1' or 'l2'")
        from mpnet_model.data.encoding import ENCODINGS

        if self.input_encoding not in ENCODINGS:
            raise bad('input_encoding', f'choose one of {ENCODINGS}')
        if self.input_encoding != 'room' and self.in_channels != 9:
            raise bad('in_channels', f"input_encoding {self.input_encoding!r} defines the 9 channels")
        if self.level0_features not in ('all', 'non_xyz'):
            raise bad('level0_features', "must be 'all' or 'non_xyz'")
        for key in ('memory_scale', 'delta_v', 'delta_d', 'rseg_margin', 'focal_gamma'):
            if not float(getattr(self, key)) > 0:
                raise bad(key, 'must be > 0')
        if self.lambda_ins < 0 or self.dis_reg_weight < 0 or not 0 <= self.dropout < 1:
            raise bad('lambda_ins', 'lambda_ins and dis_reg_weight must be >= 0, dropout in [0, 1)')
        if not 0 <= self.embed_dropout < 1:
            raise bad('embed_dropout', 'must be in [0, 1)')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f'model config: unknown key(s) {unknown}; known keys: {sorted(known)}')
        return cls(**data)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> ModelConfig:
        """A config stored in a checkpoint: keys it lacks predate them and take their value of that time
        (`STORED_LEGACY`), not today's default, so that older checkpoints rebuild the model they were trained as."""
        return cls.from_dict({**STORED_LEGACY, **data})

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# Values of keys added after checkpoints were first written, as those checkpoints were trained.
STORED_LEGACY: dict[str, Any] = {'level0_features': 'all', 'embed_dropout': 0.0, 'dis_norm': 'l2',
                                 'input_encoding': 'room'}


# Table 1 rows as config presets (applied on top of any base config).
ABLATIONS: dict[str, dict[str, Any]] = {
    'baseline': dict(use_ins_memory=False, use_seg_memory=False, use_regularization=False, use_focal_loss=False),
    'focal': dict(use_ins_memory=False, use_seg_memory=False, use_regularization=False, use_focal_loss=True),
    'insmem': dict(use_ins_memory=True, use_seg_memory=False, use_regularization=False, use_focal_loss=False),
    'segmem': dict(use_ins_memory=True, use_seg_memory=True, use_regularization=False, use_focal_loss=False),
    'full': dict(use_ins_memory=True, use_seg_memory=True, use_regularization=True, use_focal_loss=False),
}


def ablation_config(name: str, base: ModelConfig | None = None) -> ModelConfig:
    if name not in ABLATIONS:
        raise ConfigError(f'ablation={name!r}: choose one of {sorted(ABLATIONS)}')
    return (base or ModelConfig()).replace(**ABLATIONS[name])


# A small config for tests and the CPU-trained shipped default (same architecture, narrower and fewer points).
def small_config(**overrides: Any) -> ModelConfig:
    base = dict(num_points=1024, feature_dim=64, sa_npoints=(256, 64, 16, 4),
                sa_mlps=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128, 256)),
                fp_mlps=((128, 128), (128, 128), (128, 64), (64, 64, 64)), mem_per_class=20)
    base.update(overrides)
    return ModelConfig(**base)
