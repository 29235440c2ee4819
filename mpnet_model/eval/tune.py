"""Post-processing chosen by validation: the mean-shift bandwidth and the per-class size filter.

A grid of bandwidths x size fractions is scored on the validation rooms through the robot's path
(`SceneSegmenter`: blocks -> backend -> mean shift -> BlockMerging -> every point). The network runs once per room
(`CachingBackend` replays its outputs); mean shift and merging run once per bandwidth; the size filter is applied
to the merged result for every fraction (`apply_size_filter`, the rule of `SceneSegmenter`: an instance is dropped
when it holds fewer points than fraction x the training set's mean instance size of its majority class).

The chosen pair maximises F1 = 2 mPrec mRec / (mPrec + mRec) (IoU 0.5; ties: higher mCov, then the smaller
bandwidth and fraction) and is stored in the checkpoint's `extra` as `cluster_bandwidth` (float) and
`min_instance_fraction` (float), which the runtimes read (per-class filter = fraction x
extra['class_mean_instance_points']).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from mpnet_model.data.room import Room
from mpnet_model.eval.metrics import InstanceEvaluator
from mpnet_model.infer.backends.base import Backend

log = logging.getLogger(__name__)

DEFAULT_BANDWIDTHS = (0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5)
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
BANDWIDTH_KEY = 'cluster_bandwidth'          # checkpoint extra keys (the contract with the runtimes)
FRACTION_KEY = 'min_instance_fraction'
SIZES_KEY = 'class_mean_instance_points'
TUNING_KEY = 'postprocess_tuning'            # how the values were chosen (grid, rooms, scores)


class CachingBackend(Backend):
    """Replays another backend's outputs for batches it has seen (keyed by the bytes of the batch), so that a
    room segmented again with other post-processing settings runs the network only once."""

    name = 'cached'

    def __init__(self, inner: Backend):
        super().__init__(inner.metadata, inner.device, inner.source)
        self.inner = inner
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self.misses = 0

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = hashlib.blake2b(blocks.tobytes(), digest_size=16).digest() + repr(blocks.shape).encode()
        if key not in self._cache:
            self.misses += 1
            self._cache[key] = self.inner.run(blocks)
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()


def apply_size_filter(instances: np.ndarray, labels: np.ndarray, class_min_points: np.ndarray | None
                      ) -> np.ndarray:
    """Instances (N,) with those under `class_min_points` of their majority class set to -1 (ids kept).

    The rule of `SceneSegmenter`'s per-class filter: size and majority class over the instance's points."""
    instances = np.asarray(instances)
    if class_min_points is None:
        return instances
    valid = instances >= 0
    if not valid.any():
        return instances
    ids, inverse, sizes = np.unique(instances[valid], return_inverse=True, return_counts=True)
    num_classes = len(class_min_points)
    votes = np.zeros((ids.size, num_classes), dtype=np.int64)
    np.add.at(votes, (inverse, np.asarray(labels)[valid]), 1)
    keep = sizes >= np.asarray(class_min_points, dtype=np.float64)[votes.argmax(axis=1)]
    out = instances.copy()
    out[np.flatnonzero(valid)[~keep[inverse]]] = -1
    return out


def f1(precision: float, recall: float) -> float:
    """Harmonic mean of mPrec and mRec (0 when both are 0, NaN when either is undefined)."""
    if math.isnan(precision) or math.isnan(recall):
        return float('nan')
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class TuningResult:
    """Scores of every (bandwidth, fraction) on the tuning rooms and the chosen pair."""
    bandwidth: float
    fraction: float
    grid: list[dict[str, float]]                 # one entry per pair: bandwidth, fraction, mPrec, mRec, mCov, ...
    rooms: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, float]:
        return next(g for g in self.grid if g['bandwidth'] == self.bandwidth and g['fraction'] == self.fraction)

    def to_extra(self, split: str = 'val') -> dict:
        """The checkpoint `extra` entries: the two contract keys and the record of how they were chosen."""
        return {BANDWIDTH_KEY: float(self.bandwidth), FRACTION_KEY: float(self.fraction),
                TUNING_KEY: {'criterion': 'F1(mPrec, mRec)', 'split': split, 'rooms': list(self.rooms),
                             'grid': [{k: float(v) for k, v in g.items()} for g in self.grid]}}

    def markdown(self) -> str:
        bandwidths = sorted({g['bandwidth'] for g in self.grid})
        fractions = sorted({g['fraction'] for g in self.grid})
        lookup = {(g['bandwidth'], g['fraction']): g for g in self.grid}

        def cell(b, f):
            g = lookup[(b, f)]
            text = f'{100 * g["F1"]:.1f} ({100 * g["mPrec"]:.0f}/{100 * g["mRec"]:.0f})'
            return f'**{text}**' if (b, f) == (self.bandwidth, self.fraction) else text

        header = '| bandwidth \\ fraction | ' + ' | '.join(f'{f:g}' for f in fractions) + ' |'
        lines = [header, '|' + '---|' * (len(fractions) + 1)]
        lines += [f'| {b:g} | ' + ' | '.join(cell(b, f) for f in fractions) + ' |' for b in bandwidths]
        best = self.best
        return '\n'.join([
            f'Tuned on {len(self.rooms)} room(s): {", ".join(self.rooms)}. Cells: F1 of mPrec / mRec in % '
            '(mPrec / mRec), IoU 0.5.', '', *lines, '',
            f'Chosen: bandwidth {self.bandwidth:g}, size fraction {self.fraction:g} (F1 {100 * best["F1"]:.1f}, '
            f'mPrec {100 * best["mPrec"]:.1f}, mRec {100 * best["mRec"]:.1f}, mCov {100 * best["mCov"]:.1f}, '
            f'fragments per gt instance {best["mFrag"]:.2f}, split share {100 * best["mSplit"]:.1f} %).', ''])


def _choose(grid: list[dict[str, float]]) -> dict[str, float]:
    def key(g):
        score = g['F1'] if not math.isnan(g['F1']) else -1.0
        cov = g['mCov'] if not math.isnan(g['mCov']) else -1.0
        return (-score, -cov, g['bandwidth'], g['fraction'])

    return min(grid, key=key)


def tune_postprocessing(backend: Backend, rooms: Iterable[Room], mean_instance_points: Sequence[float] | None,
                        bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, progress: bool = True,
                        **segmenter_options) -> TuningResult:
    """Score every (bandwidth, fraction) on `rooms` and choose the best (module docstring).

    `mean_instance_points` (C,) is the training set's mean instance size per class (checkpoint extra
    'class_mean_instance_points'); without it only fraction 0 (no per-class filter) can be scored.
    `segmenter_options` go to `SceneSegmenter` (block_size, stride, batch_size, min_instance_points, ...).
    """
    from mpnet_model.infer.scene import SceneSegmenter

    bandwidths = sorted({float(b) for b in bandwidths})
    fractions = sorted({float(f) for f in fractions})
    if not bandwidths or not fractions or min(bandwidths) <= 0 or min(fractions) < 0:
        raise ValueError(f'bandwidths {bandwidths} must be > 0 and fractions {fractions} >= 0, both non-empty')
    if mean_instance_points is None and any(f > 0 for f in fractions):
        raise ValueError('size fractions > 0 need the training set\'s mean instance size per class '
                         f'(checkpoint extra {SIZES_KEY!r})')
    sizes = None if mean_instance_points is None else np.asarray(mean_instance_points, dtype=np.float64)
    cached = CachingBackend(backend)
    segmenter_options.setdefault('block_size', backend.metadata.block_size)
    segmenter_options.setdefault('stride', backend.metadata.stride)
    evaluators = {(b, f): InstanceEvaluator(len(backend.class_names)) for b in bandwidths for f in fractions}
    names = []
    for room in tqdm(list(rooms), desc='tuning post-processing', unit='room', disable=not progress):
        for bandwidth in bandwidths:
            segmenter = SceneSegmenter(cached, bandwidth=bandwidth, class_min_points=None, **segmenter_options)
            result = segmenter.segment(room.xyz, room.rgb, origin=room.origin)
            labels = np.where(result.labels < 0, 0, result.labels)
            for fraction in fractions:
                thresholds = None if fraction == 0 else fraction * sizes
                instances = apply_size_filter(result.instances, labels, thresholds)
                evaluators[(bandwidth, fraction)].add(labels, instances, room.sem, room.ins, room_id=room.name)
        cached.clear()
        names.append(room.name)
    if not names:
        raise ValueError('no rooms to tune on')
    grid = []
    for (bandwidth, fraction), evaluator in evaluators.items():
        scores = evaluator.compute()
        grid.append({'bandwidth': bandwidth, 'fraction': fraction, 'F1': f1(scores['mPrec'], scores['mRec']),
                     **{k: float(scores[k]) for k in ('mPrec', 'mRec', 'mCov', 'mWCov', 'mFrag', 'mSplit')}})
    best = _choose(grid)
    log.info('tuned post-processing on %d room(s): bandwidth %g, size fraction %g (F1 %.3f)', len(names),
             best['bandwidth'], best['fraction'], best['F1'])
    return TuningResult(best['bandwidth'], best['fraction'], grid, names)
