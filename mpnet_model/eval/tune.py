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

The metric size filter (issue 23, `mpnet_model.infer.instances`) is tuned per sensor kind by `tune_size_filter`:
for each mean-shift bandwidth tried (`bandwidths`, default the model's; `mpnet-eval --tune --kind-bandwidths`,
e.g. DEFAULT_KIND_BANDWIDTHS: single sensor frames hold instances smaller and sparser than whole rooms), each
validation cloud of that kind is segmented once with no per-class filter and no size floor (the network once per
cloud), then for every fragment-join distance the touching same-class pieces are joined, every point floor
(`min_instance_points`) applied, and every fraction of the area filter (and, for comparison, of the point filter
without a join at the caller's floor: the filter before issue 23) applied; the best (bandwidth, join, floor, area
fraction) by F1 (near ties, within RECALL_TIE_F1 of the best F1, go to the higher mRec: a robot would rather keep
an object than drop it for a marginal precision gain) is stored as extra['fragment_join'][kind],
extra['instance_min_points'][kind], extra['min_instance_area_fraction'][kind] and, when several bandwidths were
tried, extra['cluster_bandwidth_by_kind'][kind], next to the training set's class mean areas
extra['class_mean_instance_area'] and their voxel extra['instance_area_voxel'].
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from mpnet_model.data.room import Room
from mpnet_model.eval.metrics import InstanceEvaluator
from mpnet_model.infer.backends.base import Backend

log = logging.getLogger(__name__)

DEFAULT_BANDWIDTHS = (0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5)
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
DEFAULT_AREA_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
DEFAULT_KIND_BANDWIDTHS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)   # a grid for --kind-bandwidths (opt-in)
DEFAULT_JOINS = (0.0, 0.2, 0.3)              # fragment join distances [m] (0 = off)
DEFAULT_FLOORS = (10, 25, 50)                # point floors (min_instance_points) tried with the area filter
RECALL_TIE_F1 = 0.01                         # size filter: settings within this F1 of the best count as tied
BANDWIDTH_KEY = 'cluster_bandwidth'          # checkpoint extra keys (the contract with the runtimes)
FRACTION_KEY = 'min_instance_fraction'
SIZES_KEY = 'class_mean_instance_points'
TUNING_KEY = 'postprocess_tuning'            # how the values were chosen (grid, rooms, scores)
AREA_SIZES_KEY = 'class_mean_instance_area'  # the metric size filter (issue 23)
AREA_VOXEL_KEY = 'instance_area_voxel'
AREA_FRACTION_KEY = 'min_instance_area_fraction'    # {sensor kind: fraction}
AREA_TUNING_KEY = 'size_filter_tuning'              # {sensor kind: how it was chosen}
JOIN_KEY = 'fragment_join'                          # {sensor kind: join distance [m]}
FLOOR_KEY = 'instance_min_points'                   # {sensor kind: point floor}
KIND_BANDWIDTH_KEY = 'cluster_bandwidth_by_kind'    # {sensor kind: mean-shift bandwidth}


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


@dataclass
class SizeFilterTuning:
    """Scores of every (filter, join, floor, fraction) on one sensor kind's validation clouds and the chosen area
    fraction, fragment join and point floor."""
    sensor_kind: str
    fraction: float
    join: float
    floor: int
    grid: list[dict]                        # one entry per row: filter, fragment_join, min_instance_points, ...
    clouds: list[str] = field(default_factory=list)
    bandwidth: float | None = None          # the mean-shift bandwidth chosen with them (None: one was tried)

    @property
    def best(self) -> dict:
        return next(g for g in self.grid if g['filter'] == 'area' and g['fraction'] == self.fraction
                    and g['fragment_join'] == self.join and g['min_instance_points'] == self.floor
                    and (self.bandwidth is None or g['bandwidth'] == self.bandwidth))

    def best_of(self, size_filter: str) -> dict | None:
        rows = [g for g in self.grid if g['filter'] == size_filter]
        return _choose(rows) if rows else None

    def to_extra(self, previous: dict, areas: Sequence[float], voxel: float) -> dict:
        """The checkpoint `extra` entries: the class mean areas, their voxel, this kind's fraction / join / floor
        merged into those of other kinds (`previous`: the checkpoint's extra), and the record of the grid."""
        merged = {}
        values = [(AREA_FRACTION_KEY, float(self.fraction)), (JOIN_KEY, float(self.join)), (FLOOR_KEY, int(self.floor))]
        if self.bandwidth is not None:
            values.append((KIND_BANDWIDTH_KEY, float(self.bandwidth)))
        for key, value in values:
            merged[key] = {**dict(previous.get(key) or {}), self.sensor_kind: value}
        records = dict(previous.get(AREA_TUNING_KEY) or {})
        records[self.sensor_kind] = {'criterion': 'F1(mPrec, mRec)', 'split': 'val', 'clouds': list(self.clouds),
                                     'grid': [{k: (v if isinstance(v, str) else float(v)) for k, v in g.items()}
                                              for g in self.grid]}
        return {AREA_SIZES_KEY: [float(v) for v in areas], AREA_VOXEL_KEY: float(voxel), **merged,
                AREA_TUNING_KEY: records}

    def markdown(self) -> str:
        lines = ['| bandwidth | filter | fragment join [m] | point floor | fraction | mPrec | mRec | F1 | mCov |',
                 '|---|---|---|---|---|---|---|---|---|']
        best = self.best
        for g in sorted(self.grid, key=lambda g: (g['bandwidth'], g['filter'], g['fragment_join'],
                                                   g['min_instance_points'], g['fraction'])):
            cells = [f"{g['bandwidth']:g}", g['filter'], f"{g['fragment_join']:g}", f"{g['min_instance_points']:g}",
                     f"{g['fraction']:g}", *(f'{g[k]:.3f}' for k in ('mPrec', 'mRec', 'F1', 'mCov'))]
            lines.append('| ' + ' | '.join(f'**{c}**' if g is best else c for c in cells) + ' |')
        points = self.best_of('points')
        return '\n'.join([
            f'Size filter tuned for {self.sensor_kind} on {len(self.clouds)} validation cloud(s). IoU 0.5; the point '
            'filter rows (no join, the caller\'s floor) are the filter before issue 23, for comparison.', '', *lines,
            '', f'Chosen: bandwidth {best["bandwidth"]:g}, area fraction {self.fraction:g}, fragment join '
            f'{self.join:g} m, point floor {self.floor} '
            f'(mPrec {best["mPrec"]:.3f}, mRec {best["mRec"]:.3f}, F1 {best["F1"]:.3f})' + (
                f'; the best point fraction {points["fraction"]:g} gives mPrec {points["mPrec"]:.3f}, mRec '
                f'{points["mRec"]:.3f}, F1 {points["F1"]:.3f}.' if points else '.'), ''])


def tune_size_filter(backend: Backend, clouds: Iterable[Room], sensor_kind: str, class_mean_area: Sequence[float],
                     class_mean_points: Sequence[float] | None = None,
                     area_fractions: Sequence[float] = DEFAULT_AREA_FRACTIONS,
                     point_fractions: Sequence[float] = DEFAULT_FRACTIONS, joins: Sequence[float] = DEFAULT_JOINS,
                     floors: Sequence[int] = DEFAULT_FLOORS, voxel: float | None = None,
                     segment: Callable | None = None, progress: bool = True,
                     bandwidths: Sequence[float] | None = None, **segmenter_options) -> SizeFilterTuning:
    """Choose the area fraction, fragment join and point floor for `sensor_kind` on `clouds` (module docstring).
    `class_mean_area` (C,) [m^2] at `voxel` (default `instances.DEFAULT_AREA_VOXEL`); `class_mean_points` (C,)
    adds the point filter's rows (with segmenter_options' min_instance_points, default 50, as the floor).
    `segment(segmenter, cloud) -> SceneResult` (default `segmenter.segment(xyz, rgb, origin=...)`);
    `segmenter_options` go to `SceneSegmenter` (bandwidth, block_size, min_instance_points, ...). `bandwidths`: the
    mean-shift bandwidths to try with every row (default: segmenter_options' bandwidth, else the model's); the
    network runs once per cloud (`CachingBackend`), mean shift once per bandwidth."""
    import torch

    from mpnet_model.infer.instances import DEFAULT_AREA_VOXEL, SENSOR_KINDS, instance_table, join_fragments
    from mpnet_model.infer.scene import (
        DEFAULT_MIN_INSTANCE_POINTS,
        POSTPROCESS_CPU_THREADS,
        SceneSegmenter,
        _cpu_threads,
    )

    if sensor_kind not in SENSOR_KINDS:
        raise ValueError(f'sensor_kind={sensor_kind!r}: choose one of {SENSOR_KINDS}')
    voxel = DEFAULT_AREA_VOXEL if voxel is None else float(voxel)
    areas = np.asarray(class_mean_area, dtype=np.float64)
    if areas.shape != (len(backend.class_names),) or not np.isfinite(areas).all():
        raise ValueError(f'class_mean_area must hold {len(backend.class_names)} finite areas, got {areas.shape}')
    area_fractions = sorted({float(f) for f in area_fractions})
    point_fractions = sorted({float(f) for f in point_fractions}) if class_mean_points is not None else []
    joins = sorted({float(j) for j in joins})
    floors = sorted({int(f) for f in floors})
    if not area_fractions or not joins or not floors or min(area_fractions + point_fractions + joins) < 0 \
            or min(floors) < 1:
        raise ValueError(f'fractions and joins must be >= 0, floors >= 1, none empty: area {area_fractions}, points '
                         f'{point_fractions}, joins {joins}, floors {floors}')
    points = None if class_mean_points is None else np.asarray(class_mean_points, dtype=np.float64)
    segmenter_options.setdefault('block_size', backend.metadata.block_size)
    segmenter_options.setdefault('stride', backend.metadata.stride)
    default_bandwidth = float(segmenter_options.pop('bandwidth', backend.metadata.cluster_bandwidth))
    bandwidths = sorted({float(b) for b in (bandwidths or (default_bandwidth,))})
    if min(bandwidths) <= 0:
        raise ValueError(f'bandwidths must be > 0, got {bandwidths}')
    points_floor = int(segmenter_options.pop('min_instance_points', DEFAULT_MIN_INSTANCE_POINTS))
    cached = backend if isinstance(backend, CachingBackend) or len(bandwidths) == 1 else CachingBackend(backend)
    segmenters = {b: SceneSegmenter(cached, size_filter='off', min_instance_points=1, bandwidth=b,
                                    **segmenter_options) for b in bandwidths}
    segment = segment or (lambda s, cloud: s.segment(cloud.xyz, cloud.rgb, origin=cloud.origin))
    rows = [('area', j, floor, f) for j in joins for floor in floors for f in area_fractions]
    rows += [('points', 0.0, points_floor, f) for f in point_fractions]
    evaluators = {(b, row): InstanceEvaluator(len(backend.class_names)) for b in bandwidths for row in rows}
    names = []
    for cloud in tqdm(list(clouds), desc=f'tuning the size filter ({sensor_kind})', unit='cloud',
                      disable=not progress):
        for bandwidth, segmenter in segmenters.items():
            result = segment(segmenter, cloud)
            labels = np.where(result.labels < 0, 0, result.labels)
            with _cpu_threads(torch.device('cpu'), POSTPROCESS_CPU_THREADS):
                for join in joins:
                    joined = result.instances
                    if join > 0:
                        joined = join_fragments(torch.from_numpy(np.ascontiguousarray(cloud.xyz)),
                                                torch.from_numpy(result.instances.astype(np.int64)),
                                                torch.from_numpy(labels.astype(np.int64)), join, len(areas)).numpy()
                    table = instance_table(cloud.xyz, joined, labels, len(areas), voxel)
                    for row in (r for r in rows if r[1] == join):
                        index = table['inverse'][table['inverse'] >= 0]
                        instances = np.full(len(labels), -1, dtype=np.int64)
                        instances[table['inverse'] >= 0] = np.where(_size_rule(table, row, areas, points)[index],
                                                                    table['ids'][index], -1)
                        evaluators[bandwidth, row].add(labels, instances, cloud.sem, cloud.ins, room_id=cloud.name)
        if cached is not backend:
            cached.clear()
        names.append(cloud.name)
    if not names:
        raise ValueError(f'no {sensor_kind} clouds to tune the size filter on')
    grid = []
    for (bandwidth, (kind, join, floor, fraction)), evaluator in evaluators.items():
        scores = evaluator.compute()
        grid.append({'filter': kind, 'fragment_join': join, 'min_instance_points': float(floor), 'fraction': fraction,
                     'bandwidth': bandwidth, 'F1': f1(scores['mPrec'], scores['mRec']),
                     **{k: float(scores[k]) for k in ('mPrec', 'mRec', 'mCov', 'mWCov', 'mFrag', 'mSplit')}})
    best = choose_size_filter([g for g in grid if g['filter'] == 'area'])
    log.info('tuned the area size filter for %s on %d cloud(s): bandwidth %g, fraction %g, fragment join %g m, '
             'point floor %d (F1 %.3f)', sensor_kind, len(names), best['bandwidth'], best['fraction'],
             best['fragment_join'], best['min_instance_points'], best['F1'])
    return SizeFilterTuning(sensor_kind, best['fraction'], best['fragment_join'], int(best['min_instance_points']),
                            grid, names, bandwidth=best['bandwidth'] if len(bandwidths) > 1 else None)


def choose_size_filter(rows: list[dict]) -> dict:
    """The size-filter row to store: among the rows within RECALL_TIE_F1 of the best F1, the one with the highest
    mRec (then F1, then `_choose`'s order)."""
    valid = [g for g in rows if not math.isnan(g['F1'])]
    if not valid:
        return _choose(rows)
    best = max(g['F1'] for g in valid)
    tied = [g for g in valid if g['F1'] >= best - RECALL_TIE_F1]
    top = max(g['mRec'] for g in tied)
    return _choose([g for g in tied if g['mRec'] == top])


def _size_rule(table: dict, row: tuple, class_mean_area: np.ndarray, class_mean_points: np.ndarray | None
               ) -> np.ndarray:
    """(K,) bool: the instances of `table` (`instances.instance_table`) that pass the floor and filter of `row`
    (kind, join, floor, fraction): the rule of `SceneSegmenter._finalise_instances` (floor, then the class filter)."""
    kind, _, floor, fraction = row
    keep = table['points'] >= floor
    if fraction > 0 and kind == 'area':
        keep &= table['area'] >= fraction * class_mean_area[table['classes']] * (1 - 1e-9)   # as SizeFilter
    elif fraction > 0:
        keep &= table['points'] >= fraction * class_mean_points[table['classes']]
    return keep
