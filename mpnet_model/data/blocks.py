"""Room -> overlapping 1 m x 1 m blocks of fixed size, ASIS `room2blocks_plus_normalized` convention.

The room is shifted so its minimum xyz is 0. Block (i, j) covers x in [i*stride, i*stride + block_size] and y in
[j*stride, j*stride + block_size] (both ends inclusive, as in ASIS), for i < ceil((max_x - block_size) / stride) + 1
(at least one block per axis). Blocks with fewer than `min_points` points are dropped; `num_points` are sampled
per block (without replacement; when short, every point once plus random repeats).

The 9 channels per point: [x - block_center_x, y - block_center_y, z, r, g, b, x / max_x, y / max_y, z / max_z]
with room-relative (min-shifted) coordinates. Deviation from ASIS: the centre is the centre of the block's grid cell
rather than (min of the sampled x, y) + block_size / 2, so a block's frame does not depend on the sample.

Point-to-block assignment is vectorised: each point lies in at most m = ceil(block_size / stride) + 1 blocks per
axis, so its candidate blocks are enumerated in m * m vectorised passes, filtered, and grouped by one stable argsort.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpnet_model.data.classes import IGNORE_LABEL

NUM_CHANNELS = 9


@dataclass
class Blocks:
    points: np.ndarray       # (K, P, 9) float32, channels as in the module docstring
    sem: np.ndarray          # (K, P) int64, -1 where unannotated or when no labels were given
    ins: np.ndarray          # (K, P) int64, room instance ids, -1 = none
    indices: np.ndarray      # (K, P) int64 into the room's points (repeats when a block has < P points)
    origins: np.ndarray      # (K, 2) float64, block min corner (x, y) in the input coordinate frame
    room_min: np.ndarray | None = None    # (3,) float64, the shift applied before blocking (extension)

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass
class BlockPartition:
    """Which points fall in which kept block: CSR layout, block k owns `point_order[offsets[k]:offsets[k+1]]`."""

    point_order: np.ndarray   # (M,) int64, point indices grouped by block (deterministic order within one)
    offsets: np.ndarray       # (K + 1,) int64
    origins: np.ndarray       # (K, 2) float64, block min corner in the room-relative (min-shifted) frame
    room_min: np.ndarray      # (3,) float64
    room_extent: np.ndarray   # (3,) float64, max of the min-shifted coordinates
    block_size: float
    stride: float

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)   # (K,)

    def block_points(self, k: int) -> np.ndarray:
        return self.point_order[self.offsets[k]:self.offsets[k + 1]]


def _check_block_params(block_size: float, stride: float, num_points: int | None, min_points: int) -> None:
    if not block_size > 0 or not stride > 0:
        raise ValueError(f'block_size={block_size!r} and stride={stride!r} must be > 0')
    if stride > block_size:
        raise ValueError(f'stride={stride} > block_size={block_size} would leave points outside every block')
    if num_points is not None and (not isinstance(num_points, (int, np.integer)) or num_points <= 0):
        raise ValueError(f'num_points={num_points!r} must be a positive integer')
    if not isinstance(min_points, (int, np.integer)) or min_points < 1:
        raise ValueError(f'min_points={min_points!r} must be an integer >= 1')


def lattice_origin(xy_min, pitch: float | None, block_size: float = 1.0):
    """The grid's x/y origin: the cloud's minimum (ASIS), or with `pitch` a multiple of `pitch` at least a block
    below that minimum (a fixed lattice of the cloud's frame: the grid does not move when a point is added or
    cropped, and every lattice block that holds a point starts inside it)."""
    if pitch is None:
        return xy_min
    return np.floor((np.asarray(xy_min, np.float64) - block_size) / pitch) * pitch


def grid_size(extent: float, block_size: float, stride: float, anchored: bool) -> int:
    """Blocks along one axis: ASIS's count (the last block starts within a block of the far edge), or on an
    anchored lattice every block starting at or before the far edge (the grid's end must not depend on the
    extent either)."""
    if anchored:
        return int(math.floor(extent / stride)) + 1
    return max(1, int(math.ceil((extent - block_size) / stride)) + 1)


def partition_blocks(xyz: np.ndarray, block_size: float = 1.0, stride: float = 0.5,
                     min_points: int = 100, lattice: float | None = None) -> BlockPartition:
    """Assign the points of `xyz` (N, 3) to the overlapping block grid; keep blocks with >= `min_points` points.
    `lattice`: anchor the grid's x/y origin to multiples of this pitch (`lattice_origin`) instead of the minimum."""
    _check_block_params(block_size, stride, None, min_points)
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f'xyz must have shape (N, 3), got {xyz.shape}')
    if xyz.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return BlockPartition(empty, np.zeros(1, dtype=np.int64), np.zeros((0, 2)), np.zeros(3), np.zeros(3),
                              block_size, stride)
    if not np.isfinite(xyz).all():
        raise ValueError(f'xyz contains {int((~np.isfinite(xyz)).any(axis=1).sum())} non-finite point(s)')

    room_min = xyz.min(axis=0).astype(np.float64)
    room_min[:2] = lattice_origin(room_min[:2], lattice, block_size)
    shifted_xy = xyz[:, :2].astype(np.float64) - room_min[:2]          # (N, 2)
    room_extent = xyz.max(axis=0).astype(np.float64) - room_min
    # ASIS grid size; at least one block for rooms smaller than a block.
    grid = [grid_size(room_extent[a], block_size, stride, lattice is not None) for a in (0, 1)]
    span = int(math.ceil(block_size / stride)) + 1        # max number of blocks covering a point, per axis

    # Per axis: a point's highest candidate block index `top` and whether block `top - k` really contains it.
    top, inside = [], []
    for axis in (0, 1):
        coord = shifted_xy[:, axis]                                       # (N,)
        highest = np.floor(coord / stride).astype(np.int64)               # (N,)
        ok = np.empty((span, coord.shape[0]), dtype=bool)                 # (span, N)
        for k in range(span):
            cell = highest - k
            begin = cell * stride                                         # same arithmetic as ASIS: i * stride
            ok[k] = (cell >= 0) & (cell < grid[axis]) & (coord >= begin) & (coord <= begin + block_size)
        top.append(highest)
        inside.append(ok)
    # (point, block) pairs, one vectorised pass per (kx, ky) offset combination.
    pair_points, pair_blocks = [], []
    for kx in range(span):
        for ky in range(span):
            members = np.flatnonzero(inside[0][kx] & inside[1][ky])
            pair_points.append(members)
            pair_blocks.append((top[0][members] - kx) * grid[1] + (top[1][members] - ky))   # ASIS order: x-major
    point_ids = np.concatenate(pair_points)
    block_ids = np.concatenate(pair_blocks)

    counts = np.bincount(block_ids, minlength=grid[0] * grid[1])                      # (nx * ny,)
    keep = counts >= min_points
    kept = np.flatnonzero(keep)
    # Group pairs by block with one stable sort; on uint16 keys numpy uses radix sort (~4x faster than int64).
    sort_keys = block_ids.astype(np.uint16) if grid[0] * grid[1] <= np.iinfo(np.uint16).max + 1 else block_ids
    order = np.argsort(sort_keys, kind='stable')
    point_order = point_ids[order[keep[sort_keys[order]]]]
    offsets = np.concatenate([[0], np.cumsum(counts[kept])]).astype(np.int64)
    origins = np.stack([kept // grid[1], kept % grid[1]], axis=1) * float(stride)     # (K, 2)
    return BlockPartition(point_order.astype(np.int64), offsets, origins.astype(np.float64), room_min,
                          room_extent, float(block_size), float(stride))


def sample_block_indices(partition: BlockPartition, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """(K, P) point indices: P distinct points of each block, or all of them plus random repeats when short.

    Vectorised over blocks (no per-block loop), with the semantics of the per-block draw the training dataset
    makes (`BlockDataset.sample`): a block with >= P points gives a uniform P-subset in random order; a shorter
    block gives every point once plus P - count uniform repeats, randomly permuted. Deterministic for a given
    `rng`; the draws are made for all blocks at once (one uniform key per member of a large block, one repeat
    index per slot of a short block, one row shuffle), so the stream differs from a per-block loop.
    """
    num_blocks = len(partition)
    counts, offsets = partition.counts, partition.offsets
    indices = np.empty((num_blocks, num_points), dtype=np.int64)
    if num_blocks == 0:
        return indices
    large = np.flatnonzero(counts >= num_points)
    if large.size:
        # A uniform random P-subset per block, in random order: sort the members of each large block by a
        # uniform key (block rank + U[0,1) keeps blocks apart in one argsort), take the first P of each block.
        large_counts = counts[large]
        starts = np.cumsum(large_counts) - large_counts                                 # (L,) among the pairs
        pair_block = np.repeat(np.arange(large.size), large_counts)                      # (M_large,)
        position = np.arange(pair_block.size) + np.repeat(offsets[large] - starts, large_counts)  # in point_order
        order = np.argsort(pair_block + rng.random(pair_block.size))                     # by block, shuffled
        indices[large] = partition.point_order[position[order[starts[:, None] + np.arange(num_points)]]]
    short = np.flatnonzero(counts < num_points)
    if short.size:
        short_counts = counts[short][:, None]                                           # (S, 1)
        slot = np.broadcast_to(np.arange(num_points), (short.size, num_points))
        repeat = rng.integers(0, short_counts, size=(short.size, num_points))           # uniform member per slot
        member = np.where(slot < short_counts, slot, repeat)                            # each member once + repeats
        rows = partition.point_order[offsets[short][:, None] + member]
        indices[short] = rng.permuted(rows, axis=1)
    return indices


def sample_block_indices_keyed(partition: BlockPartition, xyz: np.ndarray, num_points: int, seed: int = 0
                               ) -> np.ndarray:
    """(K, P) point indices with the semantics of `sample_block_indices`, drawn from keys of each point's
    coordinates and its block's absolute lattice cell (`mpnet_model.data.point_keys`) instead of one random
    stream: a block's sample depends on its own points only. A block of >= P points keeps the P members of smallest
    key, in key order; a shorter one every member once plus repeats, both drawn from keys of (cell, slot)."""
    from mpnet_model.data.point_keys import (
        cell_keys_np,
        hash_fields_np,
        order_key_np,
        point_keys_np,
        sort_key_np,
        unit_np,
    )

    num_blocks = len(partition)
    counts, offsets = partition.counts, partition.offsets
    indices = np.empty((num_blocks, num_points), dtype=np.int64)
    if num_blocks == 0:
        return indices
    cells = np.rint((partition.origins + partition.room_min[:2]) / partition.stride).astype(np.int64)   # (K, 2)
    pair_block = np.repeat(np.arange(num_blocks), counts)                                      # (M,)
    keys = cell_keys_np(point_keys_np(xyz[partition.point_order], seed), cells[pair_block, 0], cells[pair_block, 1])
    ranked = partition.point_order[np.argsort(sort_key_np(pair_block, keys), kind='stable')]  # key order per block
    large = counts >= num_points
    indices[large] = ranked[offsets[:-1][large][:, None] + np.arange(num_points)]
    short = np.flatnonzero(~large)
    if short.size:
        short_counts = counts[short][:, None]                                                # (S, 1)
        slot = np.arange(num_points)[None, :]
        cell_i, cell_j = cells[short, 0][:, None], cells[short, 1][:, None]
        repeat = np.minimum((unit_np(hash_fields_np([seed, cell_i, cell_j, slot, 1])) * short_counts).astype(
            np.int64), short_counts - 1)
        rows = ranked[offsets[short][:, None] + np.where(slot < short_counts, slot, repeat)]
        shuffle = np.argsort(order_key_np(hash_fields_np([seed, cell_i, cell_j, slot, 2])), axis=1, kind='stable')
        indices[short] = np.take_along_axis(rows, shuffle, axis=1)
    return indices


def block_features(xyz: np.ndarray, rgb: np.ndarray | None, indices: np.ndarray, origins: np.ndarray,
                   partition: BlockPartition, encoding: str = 'room', floor: float | None = None) -> np.ndarray:
    """The 9 channels (K, P, 9) float32 for `indices` (K, P) of blocks with room-relative `origins` (K, 2), in
    `encoding` (`mpnet_model.data.encoding`; ``floor`` needs the `floor` height)."""
    from mpnet_model.data.encoding import fill_location_channels, finish_block_channels

    shifted = xyz[indices].astype(np.float64) - partition.room_min                    # (K, P, 3)
    centers = origins + partition.block_size / 2.0                                   # (K, 2)
    extent = np.where(partition.room_extent > 0, partition.room_extent, 1.0)         # flat rooms: avoid 0-division
    points = np.empty(indices.shape + (NUM_CHANNELS,), dtype=np.float32)
    points[..., 0:2] = shifted[..., :2] - centers[:, None, :]
    points[..., 3:6] = 0.0 if rgb is None else rgb[indices]
    fill_location_channels(points, shifted, encoding, extent, floor, float(partition.room_min[2]))
    finish_block_channels(points, encoding, partition.block_size)
    return points


def room_to_blocks(xyz: np.ndarray, rgb: np.ndarray | None, sem: np.ndarray | None = None,
                   ins: np.ndarray | None = None, block_size: float = 1.0, stride: float = 0.5,
                   num_points: int = 4096, min_points: int = 100,
                   rng: np.random.Generator | None = None) -> Blocks:
    """Cut a room (xyz (N, 3), rgb (N, 3) in [0, 1] or None -> zeros, optional sem/ins (N,)) into `Blocks`.

    Deterministic for a given `rng` (default: `np.random.default_rng(0)`). Returns K = 0 blocks when no block
    has `min_points` points.
    """
    _check_block_params(block_size, stride, num_points, min_points)
    xyz = np.asarray(xyz)
    n = xyz.shape[0] if xyz.ndim == 2 else -1
    for name, array, shape in (('rgb', rgb, (n, 3)), ('sem', sem, (n,)), ('ins', ins, (n,))):
        if array is not None and np.shape(array) != shape:
            raise ValueError(f'{name} has shape {np.shape(array)}, expected {shape} to match xyz {xyz.shape}')
    rng = np.random.default_rng(0) if rng is None else rng

    partition = partition_blocks(xyz, block_size, stride, min_points)
    indices = sample_block_indices(partition, num_points, rng)                        # (K, P)
    points = block_features(xyz, None if rgb is None else np.asarray(rgb), indices, partition.origins, partition)

    def gather(labels: np.ndarray | None) -> np.ndarray:
        if labels is None:
            return np.full(indices.shape, IGNORE_LABEL, dtype=np.int64)
        return np.asarray(labels, dtype=np.int64)[indices]

    return Blocks(points=points, sem=gather(sem), ins=gather(ins), indices=indices,
                  origins=partition.origins + partition.room_min[:2], room_min=partition.room_min)
