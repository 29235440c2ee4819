"""Training augmentations that prepare a model for robot clouds (issue 22), chosen by name from the data config.

`data.augment` is a comma-separated list of ``name=value`` items (Pointcept's config-driven transforms, in one
string so that `--set data.augment=...` can change it), e.g.
``stray_points=0.3,partial_view=0.3,floor_error=0.1,tall_walls=0.2``. Each transform acts on the members of one
training block before its points are sampled (`BlockSample`), in the order of `TRANSFORMS`:

* ``tall_walls=p``: with probability p, a block that is mostly wall becomes part of a façade: its wall points are
  stacked upwards to a height drawn in [5, 20] m and its ceiling points dropped (outdoor-scale heights: the ``floor``
  encoding's z channel then reaches values a room never gives);
* ``raised_ground=p``: with probability p, a block with floor in it gets a step in the ground: the points on one side
  of a random vertical line (20-80 % of them, the ceiling excepted) are lifted by 5-20 cm (lowered, one time in
  four), their labels unchanged: kerbs, raised pavement, platforms and thresholds, which put the ground of a real
  lidar scan a few cm off the one floor estimate (issue 22: such ground was read as ``table``);
* ``partial_view=p``: with probability p, the block keeps only the points on one side of a random vertical plane
  (30-90 % of them): the block at the edge of a range crop, or a partly occluded view;
* ``stray_points=p``: with probability p, 1-3 stray returns (multipath, rain, birds) at random places in the block's
  column between 5 m below the floor and 15 m above it, unlabelled (ignored by every loss);
* ``floor_error=e``: the floor the encoding measures height from is off by a uniform error in [-e, e] m (the floor
  estimate of a robot frame is).

The block's own sampling, rotation and jitter (`BlockDataset`) follow.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mpnet_model.config import ConfigError
from mpnet_model.data.classes import IGNORE_LABEL


@dataclass
class BlockSample:
    """The members of one training block (before sampling to P points)."""

    xyz: np.ndarray          # (M, 3) float64, the room's frame
    rgb: np.ndarray          # (M, 3) float32 in [0, 1]
    sem: np.ndarray          # (M,) int64, -1 = unlabelled
    ins: np.ndarray          # (M,) int64, -1 = none
    index: np.ndarray        # (M,) int64 room point index, -1 for added points
    floor: float             # height the location channels measure from
    centre: np.ndarray       # (2,) block centre (x, y), the room's frame
    block_size: float

    def subset(self, keep: np.ndarray) -> BlockSample:
        return replace(self, xyz=self.xyz[keep], rgb=self.rgb[keep], sem=self.sem[keep], ins=self.ins[keep],
                       index=self.index[keep])


def tall_walls(sample: BlockSample, rng: np.random.Generator, probability: float, wall: int, ceiling: int
               ) -> BlockSample:
    labelled = sample.sem >= 0
    if not labelled.any() or rng.random() >= probability or np.mean(sample.sem[labelled] == wall) < 0.6:
        return sample
    body = sample.subset(sample.sem != ceiling)
    walls = body.subset(body.sem == wall)
    low, high = float(walls.xyz[:, 2].min()), float(walls.xyz[:, 2].max())
    span = high - low
    target = rng.uniform(5.0, 20.0)                          # façade height above the floor [m]
    if span < 0.5 or target <= high - sample.floor:
        return sample
    copies = int(np.ceil((target - (high - sample.floor)) / span))      # wall copies stacked above the wall
    lifted = np.tile(walls.xyz, (copies, 1))
    lifted[:, 2] += np.repeat(np.arange(1, copies + 1) * span, len(walls.xyz))
    keep = lifted[:, 2] <= sample.floor + target
    added = int(keep.sum())
    return replace(body, xyz=np.concatenate([body.xyz, lifted[keep]]),
                   rgb=np.concatenate([body.rgb, np.tile(walls.rgb, (copies, 1))[keep]]),
                   sem=np.concatenate([body.sem, np.tile(walls.sem, copies)[keep]]),
                   ins=np.concatenate([body.ins, np.tile(walls.ins, copies)[keep]]),
                   index=np.concatenate([body.index, np.full(added, -1, np.int64)]))


def _along_random_line(sample: BlockSample, rng: np.random.Generator) -> np.ndarray:
    """(M,) each point's offset from the block centre along a random horizontal direction."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return (sample.xyz[:, :2] - sample.centre) @ np.array([np.cos(angle), np.sin(angle)])


def raised_ground(sample: BlockSample, rng: np.random.Generator, probability: float, floor: int, ceiling: int
                  ) -> BlockSample:
    if len(sample.xyz) < 20 or rng.random() >= probability or not np.any(sample.sem == floor):
        return sample
    along = _along_random_line(sample, rng)
    side = (along >= np.quantile(along, rng.uniform(0.2, 0.8))) & (sample.sem != ceiling)
    step = rng.uniform(0.05, 0.2) * (1.0 if rng.random() < 0.75 else -1.0)
    xyz = sample.xyz.copy()
    xyz[side, 2] += step
    return replace(sample, xyz=xyz)


def partial_view(sample: BlockSample, rng: np.random.Generator, probability: float) -> BlockSample:
    if len(sample.xyz) < 20 or rng.random() >= probability:
        return sample
    along = _along_random_line(sample, rng)
    keep = along >= np.quantile(along, 1.0 - rng.uniform(0.3, 0.9))
    return sample.subset(keep) if keep.sum() >= 10 else sample


def stray_points(sample: BlockSample, rng: np.random.Generator, probability: float) -> BlockSample:
    if rng.random() >= probability:
        return sample
    count = int(rng.integers(1, 4))
    xy = sample.centre + rng.uniform(-0.5, 0.5, (count, 2)) * sample.block_size
    z = sample.floor + rng.uniform(-5.0, 15.0, count)
    ignore = np.full(count, IGNORE_LABEL, np.int64)
    return replace(sample, xyz=np.concatenate([sample.xyz, np.column_stack([xy, z])]),
                   rgb=np.concatenate([sample.rgb, rng.random((count, 3)).astype(np.float32)]),
                   sem=np.concatenate([sample.sem, ignore]), ins=np.concatenate([sample.ins, np.full(count, -1)]),
                   index=np.concatenate([sample.index, np.full(count, -1, np.int64)]))


def floor_error(sample: BlockSample, rng: np.random.Generator, error: float) -> BlockSample:
    return replace(sample, floor=sample.floor + float(rng.uniform(-error, error)))


# name -> (function, the classes it needs: None, or the names whose ids follow `value`); applied in this order.
TRANSFORMS: dict[str, tuple[Callable, tuple[str, ...] | None]] = {
    'tall_walls': (tall_walls, ('wall', 'ceiling')),
    'raised_ground': (raised_ground, ('floor', 'ceiling')),
    'partial_view': (partial_view, None),
    'stray_points': (stray_points, None),
    'floor_error': (floor_error, None),
}


def parse_augment(text: str) -> dict[str, float]:
    """'name=value,...' -> {name: value} in `TRANSFORMS` order; ConfigError naming the bad item."""
    values: dict[str, float] = {}
    for item in (part.strip() for part in (text or '').split(',')):
        if not item:
            continue
        name, sep, raw = item.partition('=')
        name = name.strip()
        if name not in TRANSFORMS or not sep:
            raise ConfigError(f'data.augment item {item!r}: expected name=value with name one of {list(TRANSFORMS)}')
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f'data.augment item {item!r}: {raw!r} is not a number') from None
        if not 0 <= value <= (1 if name != 'floor_error' else 5):
            raise ConfigError(f'data.augment item {item!r}: a probability in [0, 1] (floor_error: metres, <= 5)')
        values[name] = value
    return {name: values[name] for name in TRANSFORMS if name in values}


class RobotAugment:
    """The configured transforms, applied in order; `class_names` locate the classes a transform needs (wall,
    ceiling, floor; a class the data does not have matches no point)."""

    def __init__(self, spec: str | dict[str, float], class_names: tuple[str, ...]):
        self.values = parse_augment(spec) if isinstance(spec, str) else dict(spec)
        self.names = tuple(class_names)

    def class_id(self, name: str) -> int:
        return self.names.index(name) if name in self.names else -2

    def __bool__(self) -> bool:
        return any(value > 0 for value in self.values.values())

    def __call__(self, sample: BlockSample, rng: np.random.Generator) -> BlockSample:
        for name, value in self.values.items():
            function, classes = TRANSFORMS[name]
            if value <= 0:
                continue
            sample = function(sample, rng, value, *(self.class_id(c) for c in classes or ()))
        return sample
