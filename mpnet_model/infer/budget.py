"""Bounded work per frame (ROS-free): a frame's block count, the measured cost of a frame, the crop that keeps a
frame within its time budget, and a sane-extent check that runs before anything is allocated from coordinates.

The cost model (`BlockCost`): a frame costs fixed_ms + ms_per_block * load, where load = its blocks, each weighted by
the points it is sampled to (the segmenter's point buckets: a sparse lidar block of 30 points is sampled to the
smallest bucket and costs a fraction of a full one) and by the share of such blocks the layout segments
(`LAYOUT_THINNING`), plus point_weight * its points (blocking, merging and the
projection back to every point grow with the points, not the blocks). The shape (fixed, per block, per point) is
calibrated at start on the real segmenter (whatever backend and device it runs on) with three clouds that differ in
blocks and in points per block; the level then follows the frames actually processed as the MEDIAN of
measured / predicted over the last frames, so one odd frame (a degenerate cloud, a hiccup of a busy machine) moves
the estimate by at most one rank instead of capping the next frames to a few blocks, while a lasting change (the
machine got busier, the frame path got faster) takes over within half the window.

Counting is sparse (unique occupied cells of the block stride, then the blocks covering them), so a cloud spread
over a huge area costs O(N log N) here instead of a dense grid the size of its extent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_GRID_CELLS = 4_000_000      # block-grid cells one frame may span (1 km x 1 km at a 0.5 m stride)
DEFAULT_COST_WINDOW = 9                # frames in the running median of the cost level
CALIBRATION_SAMPLES = 2                # the calibration counts as this many frames in that median: one odd
                                       # frame right after start cannot move it, a lasting change takes 3 frames


class ExtentError(ValueError):
    """Coordinates outside the sane extent (corrupt or unscaled data)."""


def check_extent(xyz: np.ndarray, max_coordinate: float) -> None:
    """Raise ExtentError when any |coordinate| of `xyz` (N, 3) exceeds `max_coordinate` (one pass, no copies
    beyond a boolean per point when it fails)."""
    if xyz.size == 0:
        return
    largest = float(np.abs(xyz).max())
    if largest > max_coordinate:
        outside = int((np.abs(xyz) > max_coordinate).any(axis=1).sum())
        raise ExtentError(f'{outside} of {len(xyz)} points lie outside the sane extent of +-{max_coordinate:g} m '
                          f'(largest |coordinate| {largest:.3g} m): corrupt or unscaled data')


def _span(block_size: float, stride: float) -> int:
    """How many stride cells a block covers per axis."""
    return max(1, int(math.ceil(block_size / stride - 1e-9)))


def _occupied_cells(xy: np.ndarray, stride: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> cells (M, 2) int64 (stride grid from the cloud's minimum), counts (M,), inverse (N,) point -> cell row.

    A grid of at most a few cells per point is counted densely (bincount, ~10x faster than sorting 2M points);
    a larger one (a sparse cloud over a huge extent) by sorting the occupied cells."""
    low = xy.min(axis=0)
    cells = np.floor((xy - low) / stride).astype(np.int64)
    height = int(cells[:, 1].max()) + 1
    linear = cells[:, 0] * height + cells[:, 1]
    size = (int(cells[:, 0].max()) + 1) * height
    if size <= 4 * len(linear) + 1_000_000:
        counts = np.bincount(linear, minlength=size)
        unique = np.flatnonzero(counts)
        row = np.cumsum(counts > 0) - 1                  # grid cell -> row of the occupied cell
        return np.stack([unique // height, unique % height], axis=1), counts[unique], row[linear]
    unique, inverse, counts = np.unique(linear, return_inverse=True, return_counts=True)
    return np.stack([unique // height, unique % height], axis=1), counts, inverse.reshape(-1)


# Fraction of the grid's blocks a layout segments, (dense blocks, sparse blocks): 'adaptive' keeps every dense
# block (at least the model's points per block) and covers sparse areas with about a third of theirs (measured on
# the shipped model: 8 x 8 m at 30 and 100 points/m2, 63 and 64 of ~220 grid blocks; 5 x 5 m at 400/m2, 25 of 81);
# 'cover' thins everywhere, 'staggered' keeps half, 'tile' (stride = block size) a quarter of the 0.5 m grid's.
LAYOUT_THINNING = {'grid': (1.0, 1.0), 'adaptive': (1.0, 0.3), 'cover': (0.3, 0.3), 'staggered': (0.5, 0.5),
                   'tile': (0.25, 0.25)}


def bucket_weights(points: np.ndarray, buckets: tuple[int, ...], thinning: tuple[float, float] = (1.0, 1.0)
                   ) -> np.ndarray:
    """Cost weight of grid blocks holding `points` points: the bucket each is sampled to (the smallest >= its
    points, the largest when it has more) over the largest bucket (1 for every block when `buckets` is empty),
    times the fraction of such blocks the layout keeps (`thinning`: dense, sparse; dense = the largest bucket)."""
    points = np.asarray(points)
    if not buckets:
        weights = np.ones(len(points))
        dense = np.ones(len(points), dtype=bool)
    else:
        sizes = np.asarray(sorted(buckets), dtype=np.float64)
        level = np.minimum(np.searchsorted(sizes, points), len(sizes) - 1)
        weights = sizes[level] / sizes[-1]
        dense = points >= sizes[-1]
    return weights * np.where(dense, thinning[0], thinning[1])


def segmenter_weights(segmenter) -> dict:
    """The `buckets` and `thinning` of a segmenter (its point buckets and block layout), for `plan_frame`,
    `estimate_load` and `calibrate`."""
    return {'buckets': tuple(getattr(segmenter, 'point_buckets', ()) or ()),
            'thinning': LAYOUT_THINNING.get(getattr(segmenter, 'layout', 'grid'), (1.0, 1.0))}


def _block_sums(cells: np.ndarray, counts: np.ndarray, span: int) -> np.ndarray:
    """Points of every block (origin on the stride grid, `span` cells wide) that the given cells put points in."""
    low = cells.min(axis=0)
    shifted = cells - low
    height = int(shifted[:, 1].max()) + span + 1
    offsets = [(dx, dy) for dx in range(span) for dy in range(span)]
    # Block (bx, by) covers cells bx..bx+span-1 (per axis): each cell adds its points to span^2 blocks.
    origins = np.concatenate([(shifted[:, 0] - dx + span) * height + (shifted[:, 1] - dy + span)
                              for dx, dy in offsets])
    weights = np.tile(counts, len(offsets))
    unique, inverse = np.unique(origins, return_inverse=True)
    sums = np.bincount(inverse.reshape(-1), weights=weights, minlength=len(unique))
    # The segmenter's grid starts at the cloud's minimum and ends with the last block that still starts inside it
    # (ceil((extent - block) / stride) + 1 blocks per axis): other candidate origins do not exist.
    last = np.maximum(shifted.max(axis=0) + 1 - span, 0)
    bx, by = unique // height - span, unique % height - span
    exists = (bx >= 0) & (by >= 0) & (bx <= last[0]) & (by <= last[1])
    return sums[exists]


def _blocks_of_cells(cells: np.ndarray, counts: np.ndarray, span: int, min_points: int) -> int:
    """Blocks (origin on the stride grid, `span` cells wide) holding >= min_points points of the given cells."""
    if len(cells) == 0:
        return 0
    return int((_block_sums(cells, counts, span) >= min_points).sum())


def _load_of_cells(cells: np.ndarray, counts: np.ndarray, span: int, min_points: int, buckets: tuple[int, ...],
                   point_weight: float, thinning: tuple[float, float] = (1.0, 1.0)) -> tuple[int, float]:
    """(blocks, load) of the given cells: load = the blocks weighted by their bucket + point_weight * points."""
    if len(cells) == 0:
        return 0, 0.0
    sums = _block_sums(cells, counts, span)
    sums = sums[sums >= min_points]
    return len(sums), float(bucket_weights(sums, buckets, thinning).sum() + point_weight * counts.sum())


def _grid_cells(cells: np.ndarray, span: int) -> int:
    extent = cells.max(axis=0) - cells.min(axis=0) + 1
    return int(np.prod(np.maximum(extent - span + 1, 1)))


@dataclass(frozen=True)
class FramePlan:
    """What a frame costs and, when it is over the cap, the nearest part of it that is not."""
    blocks: int                      # estimated blocks of the whole frame
    grid_cells: int                  # block-grid cells its extent spans
    keep: np.ndarray | None = None   # (N,) bool: the points within `radius` (None: the frame fits)
    kept_blocks: int = 0
    radius: float = 0.0              # horizontal range from the sensor kept [m]
    load: float = 0.0                # cost units of the whole frame (see BlockCost); = blocks without weights
    kept_load: float = 0.0
    nearest_cell_points: int = 0     # points in the cell nearest the sensor (when cropped: what a crop cannot split)

    @property
    def fits(self) -> bool:
        return self.keep is None


def estimate_blocks(xyz: np.ndarray, block_size: float, stride: float, min_points: int) -> int:
    """Blocks of >= min_points points that the segmenter's block grid puts on `xyz` (a close upper estimate)."""
    if len(xyz) == 0:
        return 0
    cells, counts, _ = _occupied_cells(np.asarray(xyz)[:, :2].astype(np.float64), stride)
    return _blocks_of_cells(cells, counts, _span(block_size, stride), min_points)


def estimate_load(xyz: np.ndarray, block_size: float, stride: float, min_points: int,
                  buckets: tuple[int, ...] = (), point_weight: float = 0.0,
                  thinning: tuple[float, float] = (1.0, 1.0)) -> tuple[int, float]:
    """(blocks, load) of `xyz`: its blocks weighted by the point bucket each is sampled to, + point_weight per
    point (the units `BlockCost` prices)."""
    if len(xyz) == 0:
        return 0, 0.0
    cells, counts, _ = _occupied_cells(np.asarray(xyz)[:, :2].astype(np.float64), stride)
    return _load_of_cells(cells, counts, _span(block_size, stride), min_points, buckets, point_weight, thinning)


def plan_frame(xyz: np.ndarray, origin: np.ndarray, max_blocks: float, block_size: float, stride: float,
               min_points: int, max_grid_cells: int = DEFAULT_MAX_GRID_CELLS, buckets: tuple[int, ...] = (),
               point_weight: float = 0.0, thinning: tuple[float, float] = (1.0, 1.0),
               keep_nearest: bool = False) -> FramePlan:
    """The frame's block count and, when its load is over `max_blocks` (or it spans more than `max_grid_cells`
    grid cells), the largest set of cells nearest to the sensor `origin` (horizontal range) that fits both.

    Without `buckets`, `thinning` and `point_weight` the load is the block count; with them it is the cost units
    of `BlockCost` (blocks weighted by the points they are sampled to and the share of them the layout keeps, plus
    point_weight per point). `keep_nearest`: keep at least the cell nearest the sensor, even when it alone is over
    `max_blocks` (then kept_load > max_blocks; the caller decides whether that cell is worth its cost)."""
    if len(xyz) == 0:
        return FramePlan(0, 0)
    xy = np.asarray(xyz)[:, :2].astype(np.float64)
    span = _span(block_size, stride)
    cells, counts, inverse = _occupied_cells(xy, stride)
    blocks, load = _load_of_cells(cells, counts, span, min_points, buckets, point_weight, thinning)
    grid = _grid_cells(cells, span)
    if load <= max_blocks and grid <= max_grid_cells:
        return FramePlan(blocks, grid, load=load)
    # Cells by range of their centre from the sensor; keep the nearest k, k found by bisection (both costs only
    # grow with k).
    centres = (cells + 0.5) * stride + xy.min(axis=0)
    distance = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    order = np.argsort(distance, kind='stable')

    def fits(k: int) -> bool:
        chosen = order[:k]
        return (_load_of_cells(cells[chosen], counts[chosen], span, min_points, buckets, point_weight, thinning)[1]
                <= max_blocks and _grid_cells(cells[chosen], span) <= max_grid_cells)

    low, high = 0, len(order)            # fits(low) holds (nothing kept), fits(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    if keep_nearest and low == 0:
        low = 1
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    keep = rank[inverse] < low
    kept_blocks, kept_load = (_load_of_cells(cells[order[:low]], counts[order[:low]], span, min_points, buckets,
                                             point_weight, thinning) if low else (0, 0.0))
    radius = float(distance[order[low - 1]]) if low else 0.0
    return FramePlan(blocks, grid, keep, kept_blocks, radius, load, kept_load, int(counts[order[0]]))


class RunningMedian:
    """The median of the last `window` values: a robust running estimate (one outlier moves it by one rank)."""

    def __init__(self, window: int = DEFAULT_COST_WINDOW):
        self._values: deque[float] = deque(maxlen=max(1, window))

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self._values.append(float(value))

    def clear(self) -> None:
        self._values.clear()

    @property
    def value(self) -> float | None:
        return float(np.median(self._values)) if self._values else None

    def __len__(self) -> int:
        return len(self._values)


class BlockCost:
    """What a frame costs to segment [ms]: fixed_ms + ms_per_block * load (load: see `plan_frame`, the blocks
    weighted by their point bucket plus point_weight per point).

    The shape (fixed, per block, per point) comes from `calibrate` (or the first frame: all per block); the level
    is the median of measured / predicted over the last `window` frames (the calibration counting as
    CALIBRATION_SAMPLES of them). Setting `ms_per_block` fixes a plain per-block cost (no fixed or point part)."""

    def __init__(self, ms_per_block: float | None = None, ms_per_point: float = 0.0, fixed_ms: float = 0.0,
                 window: int = DEFAULT_COST_WINDOW):
        self._base: tuple[float, float, float] | None = None        # per block, per point, fixed [ms]
        self._ratios = RunningMedian(window)
        self.samples = 0
        if ms_per_block is not None:
            self.prime(ms_per_block, ms_per_point, fixed_ms)

    def prime(self, ms_per_block: float, ms_per_point: float = 0.0, fixed_ms: float = 0.0,
              weight: int = 1) -> None:
        """Set the shape (measured on the real segmenter); the running level starts over at it, counted as
        `weight` frames."""
        if not ms_per_block > 0:
            raise ValueError(f'ms_per_block must be > 0, got {ms_per_block}')
        self._base = (float(ms_per_block), max(0.0, float(ms_per_point)), max(0.0, float(fixed_ms)))
        self._ratios.clear()
        for _ in range(max(1, weight)):
            self._ratios.add(1.0)

    @property
    def scale(self) -> float:
        """Measured over predicted-by-the-shape, median of the recent frames."""
        return self._ratios.value or 1.0

    @property
    def ms_per_block(self) -> float | None:
        return None if self._base is None else self._base[0] * self.scale

    @ms_per_block.setter
    def ms_per_block(self, value: float) -> None:
        self.prime(value)

    @property
    def ms_per_point(self) -> float:
        return 0.0 if self._base is None else self._base[1] * self.scale

    @property
    def fixed_ms(self) -> float:
        return 0.0 if self._base is None else self._base[2] * self.scale

    @property
    def point_weight(self) -> float:
        """Cost of one point in blocks (the per-point term of a frame's load)."""
        return 0.0 if self._base is None else self._base[1] / self._base[0]

    def predict_ms(self, load: float) -> float:
        return self.fixed_ms + (self.ms_per_block or 0.0) * load

    def update(self, load: float, elapsed_ms: float) -> None:
        """A frame of `load` (blocks, or the load `plan_frame` reports) took `elapsed_ms` to segment."""
        if load <= 0 or not math.isfinite(elapsed_ms) or elapsed_ms <= 0:
            return
        if self._base is None:
            self.prime(elapsed_ms / load)
        else:
            per_block, _, fixed = self._base
            self._ratios.add(elapsed_ms / (fixed + per_block * load))
        self.samples += 1

    def cap(self, budget_ms: float) -> int:
        """Load (blocks) that fits in `budget_ms` (at least 1; unlimited while nothing was measured)."""
        if not self.ms_per_block:
            return 2**62
        return max(1, int((budget_ms - self.fixed_ms) // self.ms_per_block))


def calibration_cloud(num_points: int, side: float = 2.0, seed: int = 0, density: float = 1.0) -> np.ndarray:
    """A `side` x `side` x 1 m box of points, about `density` x `num_points` per square metre (1: the model's
    block density)."""
    rng = np.random.default_rng(seed)
    count = max(64, int(num_points * density * side * side))
    return rng.uniform((0.0, 0.0, 0.0), (side, side, 1.0), (count, 3)).astype(np.float32)


# (side [m], density): 4 dense blocks, 16 dense blocks, 4 blocks with 20x the points (density 2: every block
# clearly over the model's points per block, so every layout keeps them all). Few blocks vs many separates the
# fixed part from the per-block part, the same blocks with more points the per-point part (~1.3 us per point on
# this CPU, which a 500,000-point frame in one block confirms).
CALIBRATION_CLOUDS = ((1.5, 2.0), (2.5, 2.0), (1.5, 20.0))


def calibrate(segmenter, cost: BlockCost | None = None, runs: int = 2) -> BlockCost:
    """Time the segmenter (after a one-block warm-up) on the CALIBRATION_CLOUDS and prime `cost` with the fixed,
    per-block and per-point costs that explain them (non-negative least squares); each cloud's time is the
    fastest of `runs`, since on a shared machine other work only ever adds time."""
    from scipy.optimize import nnls

    cost = cost or BlockCost()
    segmenter.segment(calibration_cloud(segmenter.num_points, side=0.9, seed=1))     # warm-up: lazy inits
    weights = segmenter_weights(segmenter)
    rows, times = [], []
    for side, density in CALIBRATION_CLOUDS:
        xyz = calibration_cloud(segmenter.num_points, side=side, density=density)
        _, load = estimate_load(xyz, segmenter.block_size, segmenter.stride, segmenter.min_block_points, **weights)
        timings = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            segmenter.segment(xyz)
            timings.append((time.perf_counter() - start) * 1e3)
        rows.append((1.0, load, float(len(xyz))))
        times.append(min(timings))
    (fixed, per_block, per_point), _ = nnls(np.asarray(rows), np.asarray(times))
    if per_block <= 0:          # timing noise put everything elsewhere: price it all per block
        fixed, per_point = 0.0, 0.0
        per_block = max(t / row[1] for t, row in zip(times, rows))
    cost.prime(per_block, per_point, fixed, weight=CALIBRATION_SAMPLES)
    cost.samples += len(rows)
    return cost


def release_memory() -> bool:
    """Hand freed heap memory back to the OS after a large frame (glibc's malloc_trim; a no-op elsewhere).

    glibc raises its mmap threshold after large arrays are freed, so the next frames' arrays come from the heap,
    and that heap stays mapped (resident) after them; trimming returns it. True when trimming ran."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False
