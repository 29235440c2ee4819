"""Bounded work per frame (ROS-free): a frame's block count, the measured cost of a block, the crop that keeps a
frame within its time budget, and a sane-extent check that runs before anything is allocated from coordinates.

The segmenter's work grows with its blocks (each is one fixed-size network input and one mean-shift problem), so
a frame's cost is capped in blocks: cap = processing budget / measured milliseconds per block. The cost is primed
by a short calibration on the real segmenter (whatever backend and device it runs on) and then follows the frames
actually processed (an exponential moving average), so it stays true when the frame path gets faster or the
machine gets busier.

Counting is sparse (unique occupied cells of the block stride, then the blocks covering them), so a cloud spread
over a huge area costs O(N log N) here instead of a dense grid the size of its extent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_GRID_CELLS = 4_000_000      # block-grid cells one frame may span (1 km x 1 km at a 0.5 m stride)


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
    """-> cells (M, 2) int64 (stride grid from the cloud's minimum), counts (M,), inverse (N,) point -> cell row."""
    low = xy.min(axis=0)
    cells = np.floor((xy - low) / stride).astype(np.int64)
    height = int(cells[:, 1].max()) + 1
    linear = cells[:, 0] * height + cells[:, 1]
    unique, inverse, counts = np.unique(linear, return_inverse=True, return_counts=True)
    return np.stack([unique // height, unique % height], axis=1), counts, inverse.reshape(-1)


def _blocks_of_cells(cells: np.ndarray, counts: np.ndarray, span: int, min_points: int) -> int:
    """Blocks (origin on the stride grid, `span` cells wide) holding >= min_points points of the given cells."""
    if len(cells) == 0:
        return 0
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
    return int(((sums >= min_points) & exists).sum())


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

    @property
    def fits(self) -> bool:
        return self.keep is None


def estimate_blocks(xyz: np.ndarray, block_size: float, stride: float, min_points: int) -> int:
    """Blocks of >= min_points points that the segmenter's block grid puts on `xyz` (a close upper estimate)."""
    if len(xyz) == 0:
        return 0
    cells, counts, _ = _occupied_cells(np.asarray(xyz)[:, :2].astype(np.float64), stride)
    return _blocks_of_cells(cells, counts, _span(block_size, stride), min_points)


def plan_frame(xyz: np.ndarray, origin: np.ndarray, max_blocks: int, block_size: float, stride: float,
               min_points: int, max_grid_cells: int = DEFAULT_MAX_GRID_CELLS) -> FramePlan:
    """The frame's block count and, when over `max_blocks` (or spanning more than `max_grid_cells` grid cells),
    the largest set of cells nearest to the sensor `origin` (horizontal range) that fits both."""
    if len(xyz) == 0:
        return FramePlan(0, 0)
    xy = np.asarray(xyz)[:, :2].astype(np.float64)
    span = _span(block_size, stride)
    cells, counts, inverse = _occupied_cells(xy, stride)
    blocks = _blocks_of_cells(cells, counts, span, min_points)
    grid = _grid_cells(cells, span)
    if blocks <= max_blocks and grid <= max_grid_cells:
        return FramePlan(blocks, grid)
    # Cells by range of their centre from the sensor; keep the nearest k, k found by bisection (both costs only
    # grow with k).
    centres = (cells + 0.5) * stride + xy.min(axis=0)
    distance = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    order = np.argsort(distance, kind='stable')

    def fits(k: int) -> bool:
        chosen = order[:k]
        return (_blocks_of_cells(cells[chosen], counts[chosen], span, min_points) <= max_blocks
                and _grid_cells(cells[chosen], span) <= max_grid_cells)

    low, high = 0, len(order)            # fits(low) holds (nothing kept), fits(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    keep = rank[inverse] < low
    kept_blocks = _blocks_of_cells(cells[order[:low]], counts[order[:low]], span, min_points) if low else 0
    radius = float(distance[order[low - 1]]) if low else 0.0
    return FramePlan(blocks, grid, keep, kept_blocks, radius)


class BlockCost:
    """Milliseconds per block: primed by `calibrate` on the real segmenter, then an exponential moving average
    over the frames actually processed."""

    def __init__(self, ms_per_block: float | None = None, smoothing: float = 0.3):
        self.ms_per_block = ms_per_block
        self.smoothing = smoothing
        self.samples = 0

    def update(self, blocks: int, elapsed_ms: float) -> None:
        if blocks <= 0 or not math.isfinite(elapsed_ms) or elapsed_ms <= 0:
            return
        cost = elapsed_ms / blocks
        if self.ms_per_block is None:
            self.ms_per_block = cost
        else:
            self.ms_per_block += self.smoothing * (cost - self.ms_per_block)
        self.samples += 1

    def cap(self, budget_ms: float) -> int:
        """Blocks that fit in `budget_ms` (at least 1; unlimited while nothing was measured)."""
        if not self.ms_per_block:
            return 2**62
        return max(1, int(budget_ms // self.ms_per_block))


def calibration_cloud(num_points: int, side: float = 2.0, seed: int = 0) -> np.ndarray:
    """A `side` x `side` x 1 m box of points, about `num_points` per square metre (the model's block density)."""
    rng = np.random.default_rng(seed)
    count = max(64, int(num_points * side * side))
    return rng.uniform((0.0, 0.0, 0.0), (side, side, 1.0), (count, 3)).astype(np.float32)


def calibrate(segmenter, cost: BlockCost | None = None, runs: int = 2) -> BlockCost:
    """Time the segmenter on a small cloud (after a one-block warm-up) and prime `cost` with ms per block: the
    fastest of `runs` runs, since on a shared machine other work only ever adds time."""
    cost = cost or BlockCost()
    segmenter.segment(calibration_cloud(segmenter.num_points, side=0.9, seed=1))     # warm-up: lazy inits
    xyz = calibration_cloud(segmenter.num_points, side=1.5)                          # 2 x 2 = 4 blocks
    blocks = estimate_blocks(xyz, segmenter.block_size, segmenter.stride, segmenter.min_block_points)
    timings = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        segmenter.segment(xyz)
        timings.append((time.perf_counter() - start) * 1e3)
    cost.update(blocks, min(timings))
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
