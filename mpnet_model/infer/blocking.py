"""Frame blocking for inference: partition a cloud into 1 m columns, choose a block layout, sample the points of
every block and build the 9 ASIS channels, all vectorised (no loop over blocks), on the frame's device.

Two variants of the same arithmetic:

* torch (any device; the CUDA path): `partition_torch` mirrors `mpnet_model.data.blocks.partition_blocks`
  (same float64 arithmetic, same member order, tested equal) and `sample_rows_torch` draws with a
  `torch.Generator` on the device;
* numpy (CPU): `partition_blocks` + `sample_block_indices` of `mpnet_model.data.blocks` (numpy's row shuffle
  is ~4x faster than a torch argsort on the CPU).

Layouts (which blocks of the grid are segmented; `LAYOUTS`):

* ``grid``: every block of the configured stride (ASIS; stride 0.5 m = each point in up to 4 blocks). Today's path.
* ``tile``: stride = block size: each point in one block; no overlap, so BlockMerging can only join instances
  across a block edge through points that share a merging voxel.
* ``staggered``: the half-block grid (stride = block size / 2) thinned to a checkerboard (i + j even): each point
  in 2 blocks, half the blocks of ``grid``, every tile edge crossed by an overlapping block.
* ``cover``: the half-block grid thinned greedily: the tiling first, then blocks of the other three parity
  classes only if they hold a point no kept block holds (drops blocks whose points are all covered by others).
* ``adaptive`` (density-adaptive): ``grid`` where the cloud is dense, ``cover`` where it is sparse. Every block
  with at least P points (the model's points per block: it is subsampled, never padded with repeats) is kept, as
  in ``grid``; among the sparse blocks (fewer than P points, every point sampled plus repeats) the tiling and
  then the rescue blocks below. Dense indoor scans keep their 4-fold overlap; a lidar frame, whose blocks are
  mostly a few dozen points, loses most of its redundant blocks.

Every thinned layout costs instances where it thins: BlockMerging chains an object's pieces only through blocks
that overlap earlier ones by half, as the stride-0.5 grid's do (docs/frame_layouts.md has the measurements).

``staggered``, ``cover`` and ``adaptive`` add back the blocks of the remaining parity classes that hold at least
``min_points`` points no kept block holds (the far edge of the grid, points whose tile was dropped for having
fewer than ``min_points``), one vectorised pass per parity class; rarer uncovered points take the labels of their
nearest sampled point, as the points of dropped small blocks always did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mpnet_model.data.blocks import (
    NUM_CHANNELS,
    BlockPartition,
    grid_size,
    partition_blocks,
    sample_block_indices,
    sample_block_indices_keyed,
)
from mpnet_model.data.encoding import anchors_grid, fill_location_channels, finish_block_channels
from mpnet_model.infer.device_ops import compact, read_host
from mpnet_model.infer.device_ops import counts as index_counts

LAYOUTS = ('grid', 'tile', 'staggered', 'cover', 'adaptive')
SAMPLERS = ('auto', 'numpy', 'torch', 'legacy')
# Parity classes (i % 2, j % 2) of the half-block grid: taken in full first, then passes that add only the blocks
# holding a point no kept block holds.
_LAYOUT_CLASSES = {'staggered': ([(0, 0), (1, 1)], [(1, 0), (0, 1)]),
                   'cover': ([(0, 0)], [(1, 1), (1, 0), (0, 1)]),
                   'adaptive': ([(0, 0)], [(1, 1), (1, 0), (0, 1)])}


@dataclass
class FramePartition:
    """Kept blocks of a frame and their members, CSR over `point_order` (torch, on the frame's device)."""

    point_order: Tensor     # (M,) int64 point ids grouped by block
    offsets: Tensor         # (K + 1,) int64
    cells: Tensor           # (K, 2) int64 grid index (i, j) of each block
    room_min: Tensor        # (3,) float64
    room_extent: Tensor     # (3,) float64
    block_size: float
    stride: float

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    @property
    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def origins(self) -> Tensor:
        """(K, 2) float64 block min corners, room-relative (as `BlockPartition.origins`)."""
        return self.cells.double() * self.stride

    def pair_blocks(self) -> Tensor:
        """(M,) the block of every entry of `point_order`."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.cells.device), self.counts,
                                       output_size=self.point_order.shape[0])

    def subset(self, keep: Tensor, sizes: tuple[int, int] | None = None) -> FramePartition:
        """The partition restricted to blocks `keep` (K,) bool, in the same (x-major) order. `sizes`: (kept blocks,
        their members) when the caller knows them; else read from the device (one sync)."""
        pairs = keep[self.pair_blocks()]
        if sizes is None:
            sizes = tuple(int(v) for v in read_host(torch.stack([keep.sum(), pairs.sum()]))[0])
        kept = compact(keep, sizes[0])
        counts = self.counts[kept]
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return FramePartition(self.point_order[compact(pairs, sizes[1])], offsets, self.cells[kept], self.room_min,
                              self.room_extent, self.block_size, self.stride)

    @classmethod
    def from_numpy(cls, partition: BlockPartition, device: torch.device | str = 'cpu') -> FramePartition:
        cells = np.rint(partition.origins / partition.stride).astype(np.int64).reshape(-1, 2)
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (
            partition.point_order, partition.offsets, cells, partition.room_min, partition.room_extent)),
            partition.block_size, partition.stride)

    def to(self, device: torch.device | str) -> FramePartition:
        return FramePartition(self.point_order.to(device), self.offsets.to(device), self.cells.to(device),
                              self.room_min.to(device), self.room_extent.to(device), self.block_size, self.stride)

    def to_numpy(self) -> BlockPartition:
        return BlockPartition(self.point_order.cpu().numpy(), self.offsets.cpu().numpy(),
                              self.origins.cpu().numpy(), self.room_min.cpu().numpy(),
                              self.room_extent.cpu().numpy(), self.block_size, self.stride)


def partition_torch(xyz: Tensor, block_size: float = 1.0, stride: float = 0.5, min_points: int = 100,
                    lattice: float | None = None, room_box: tuple[Tensor, Tensor] | None = None
                    ) -> FramePartition:
    """`partition_blocks` on a tensor (N, 3) of finite points, on its device: same blocks, same member order.

    lattice: anchor the grid to multiples of this pitch (`mpnet_model.data.blocks.lattice_origin`).
    room_box: (room_min (3,), room_extent (3,)) float64 to use instead of the cloud's own (a grid anchored in a
    fixed frame, e.g. the semantic map's; points below room_min fall in no block)."""
    device = xyz.device
    if xyz.shape[0] == 0 and room_box is None:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        zeros = torch.zeros(3, dtype=torch.float64, device=device)
        return FramePartition(empty, torch.zeros(1, dtype=torch.int64, device=device),
                              torch.zeros(0, 2, dtype=torch.int64, device=device), zeros, zeros, block_size, stride)
    if room_box is None:
        room_min = xyz.amin(0).double()
        if lattice is not None:                              # the grid on a fixed lattice (`lattice_origin`)
            room_min = torch.cat([torch.floor((room_min[:2] - block_size) / lattice) * lattice, room_min[2:]])
        room_extent = xyz.amax(0).double() - room_min
    else:
        room_min, room_extent = (torch.as_tensor(v, dtype=torch.float64, device=device) for v in room_box)
    shifted = xyz[:, :2].double() - room_min[:2]                                       # (N, 2)
    extent_xy = room_extent[:2].tolist()                                              # the one sync for the grid
    grid = [grid_size(extent_xy[a], block_size, stride, lattice is not None) for a in (0, 1)]
    span = int(math.ceil(block_size / stride)) + 1
    steps = torch.arange(span, device=device)
    tops, insides = [], []
    for axis in (0, 1):
        coord = shifted[:, axis]
        highest = torch.floor(coord / stride).long()                                  # (N,)
        cell = highest[None, :] - steps[:, None]                                      # (span, N)
        begin = cell * stride
        insides.append((cell >= 0) & (cell < grid[axis]) & (coord >= begin) & (coord <= begin + block_size))
        tops.append(highest)
    # All (kx, ky, point) memberships in one nonzero, in the numpy version's order (kx, then ky, then point).
    kx, ky, point_ids = torch.nonzero(insides[0][:, None, :] & insides[1][None, :, :], as_tuple=True)
    block_ids = (tops[0][point_ids] - kx) * grid[1] + (tops[1][point_ids] - ky)
    counts = index_counts(block_ids, grid[0] * grid[1])
    keep = counts >= min_points
    sorted_ids, order = torch.sort(block_ids, stable=True)
    member_kept = keep[sorted_ids]
    num_kept, num_members = (int(v) for v in read_host(torch.stack([keep.sum(), member_kept.sum()]))[0])
    kept = compact(keep, num_kept)
    point_order = point_ids[order[compact(member_kept, num_members)]]
    kept_counts = counts[kept]
    offsets = torch.cat([kept_counts.new_zeros(1), torch.cumsum(kept_counts, 0)])
    cells = torch.stack([kept // grid[1], kept % grid[1]], 1)
    return FramePartition(point_order, offsets, cells, room_min, room_extent, float(block_size), float(stride))


def select_layout(partition: FramePartition, layout: str, num_cloud: int, dense_points: int | None = None,
                  min_points: int = 1) -> Tensor:
    """(K,) bool: the blocks of a half-block-grid `partition` that layout ``staggered``, ``cover`` or ``adaptive``
    keeps (``adaptive``: every block of >= `dense_points` points, the ``cover`` thinning among the others). A block
    of a rescue pass is added when it holds >= `min_points` points that no kept block holds (the threshold a block
    needs to be segmented at all); fewer take their labels from the nearest sampled point."""
    full_classes, rescue_classes = _LAYOUT_CLASSES[layout]
    parity = partition.cells % 2                                                       # (K, 2)
    klass = parity[:, 0] * 2 + parity[:, 1]
    keep = torch.zeros(len(partition), dtype=torch.bool, device=klass.device)
    for i, j in full_classes:
        keep |= klass == i * 2 + j
    if layout == 'adaptive':
        keep |= partition.counts >= dense_points
    pair_blocks = partition.pair_blocks()
    for i, j in rescue_classes:
        covered = index_counts(partition.point_order, num_cloud, keep[pair_blocks].long()) > 0
        uncovered = torch.zeros(len(partition), dtype=torch.int64, device=klass.device)
        uncovered.index_add_(0, pair_blocks, (~covered[partition.point_order]).long())
        keep |= (klass == i * 2 + j) & (uncovered >= min_points)
    return keep


def sample_rows_torch(partition: FramePartition, num_points: int, generator: torch.Generator | None = None
                      ) -> Tensor:
    """(K, P) point ids, the semantics of `sample_block_indices` (uniform P-subset of a large block in random
    order; every point of a short block once plus uniform repeats, shuffled), drawn with a torch generator."""
    device = partition.point_order.device
    counts, offsets = partition.counts, partition.offsets
    num_blocks = len(partition)
    indices = torch.empty(num_blocks, num_points, dtype=torch.int64, device=device)
    is_large = counts >= num_points
    num_large, large_members = (int(v) for v in read_host(torch.stack([is_large.sum(), torch.where(
        is_large, counts, 0).sum()]))[0])                                             # the call's one sync
    large = compact(is_large, num_large)
    short = compact(~is_large, num_blocks - num_large)
    if large.numel():
        large_counts = counts[large]
        starts = torch.cumsum(large_counts, 0) - large_counts
        pair_block = torch.repeat_interleave(torch.arange(large.numel(), device=device), large_counts,
                                             output_size=large_members)
        position = torch.arange(pair_block.numel(), device=device) + torch.repeat_interleave(
            offsets[large] - starts, large_counts, output_size=large_members)
        keys = pair_block.double() + torch.rand(pair_block.numel(), generator=generator, device=device,
                                                dtype=torch.float64)
        order = torch.argsort(keys)
        indices[large] = partition.point_order[position[order[starts[:, None] + torch.arange(num_points,
                                                                                             device=device)]]]
    if short.numel():
        short_counts = counts[short][:, None]                                          # (S, 1)
        slot = torch.arange(num_points, device=device).expand(short.numel(), num_points)
        uniform = torch.rand(short.numel(), num_points, generator=generator, device=device, dtype=torch.float64)
        repeat = torch.minimum((uniform * short_counts).long(), short_counts - 1)
        member = torch.where(slot < short_counts, slot, repeat)
        rows = partition.point_order[offsets[short][:, None] + member]
        shuffle = torch.argsort(torch.rand(short.numel(), num_points, generator=generator, device=device), dim=1)
        indices[short] = torch.gather(rows, 1, shuffle)
    return indices


def sample_rows_keyed_torch(partition: FramePartition, xyz: Tensor, num_points: int, seed: int = 0) -> Tensor:
    """`mpnet_model.data.blocks.sample_block_indices_keyed` in torch, on the partition's device (same indices)."""
    from mpnet_model.data.point_keys import (
        cell_keys_torch,
        hash_fields_torch,
        order_key_torch,
        point_keys_torch,
        sort_key_torch,
        unit_torch,
    )

    device = partition.point_order.device
    counts, offsets = partition.counts, partition.offsets
    num_blocks = len(partition)
    if num_blocks == 0:
        return torch.empty(0, num_points, dtype=torch.int64, device=device)
    cells = partition.cells + torch.round(partition.room_min[:2] / partition.stride).long()            # absolute
    pair_block = torch.repeat_interleave(torch.arange(num_blocks, device=device), counts,
                                         output_size=partition.point_order.numel())
    keys = cell_keys_torch(point_keys_torch(xyz[partition.point_order], seed), cells[pair_block, 0],
                           cells[pair_block, 1])
    ranked = partition.point_order[torch.sort(sort_key_torch(pair_block, keys), stable=True).indices]
    # Both draws for every block, chosen per block with torch.where (no host reads of which blocks are short).
    slot = torch.arange(num_points, device=device)[None, :]                                # (1, P)
    block_counts, starts = counts[:, None], offsets[:-1, None]                             # (K, 1)
    last = max(int(partition.point_order.numel()) - 1, 0)
    large_rows = ranked[(starts + slot).clamp_(max=last)]                                  # first P in key order
    cell_i, cell_j = cells[:, 0:1], cells[:, 1:2]
    repeat = torch.minimum((unit_torch(hash_fields_torch([seed, cell_i, cell_j, slot, 1], device))
                            * block_counts).long(), block_counts - 1)
    member = torch.where(slot < block_counts, slot, repeat)
    short_rows = ranked[(starts + member).clamp_(max=last)]
    shuffle = torch.sort(order_key_torch(hash_fields_torch([seed, cell_i, cell_j, slot, 2], device)), dim=1,
                         stable=True).indices
    return torch.where(block_counts >= num_points, large_rows, torch.gather(short_rows, 1, shuffle))


def block_channels(xyz: Tensor, colours: Tensor | None, indices: Tensor, partition: FramePartition,
                   encoding: str = 'room', floor: float | None = None) -> Tensor:
    """The 9 channels (K, P, 9) float32 of `indices` (K, P) (as `mpnet_model.data.blocks.block_features`)."""
    # Channels 2..8 depend on the point only: one (N, 9) table, gathered; channels 0, 1 (block-relative x, y) in
    # float64 from the gathered shifted x, y. Same float64 arithmetic as the numpy version, so the same values.
    shifted = xyz.double() - partition.room_min                                         # (N, 3)
    extent = torch.where(partition.room_extent > 0, partition.room_extent, torch.ones_like(partition.room_extent))
    table = torch.zeros(xyz.shape[0], NUM_CHANNELS, dtype=torch.float32, device=xyz.device)
    if colours is not None:
        table[:, 3:6] = colours
    fill_location_channels(table, shifted, encoding, extent, floor, partition.room_min[2])
    points = table[indices]                                                            # (K, P, 9)
    centres = partition.origins + partition.block_size / 2.0                           # (K, 2)
    points[..., 0:2] = shifted[:, :2][indices] - centres[:, None, :]
    finish_block_channels(points, encoding, partition.block_size)
    return points


@dataclass
class BlockGroup:
    """Blocks of one frame sampled to the same number of points P (tensors on the frame's device)."""

    points: Tensor          # (Kg, P, 9) float32
    indices: Tensor         # (Kg, P) int64 into the cloud
    blocks: Tensor          # (Kg,) int64 position of each block in the frame's block order

    def to(self, device: torch.device | str) -> BlockGroup:
        return BlockGroup(self.points.to(device), self.indices.to(device), self.blocks.to(device))


@dataclass
class FrameBlocks:
    """The blocks of one frame, ready for a backend: one `BlockGroup` per points-per-block bucket."""

    groups: list[BlockGroup]
    partition: FramePartition

    def __len__(self) -> int:
        return len(self.partition)

    @property
    def points(self) -> Tensor:
        """(K, P, 9) of a frame whose blocks all have the same P (a single group)."""
        return self._single().points

    @property
    def indices(self) -> Tensor:
        return self._single().indices

    def _single(self) -> BlockGroup:
        if len(self.groups) != 1:
            raise ValueError(f'the frame has {len(self.groups)} groups of blocks of different sizes; use .groups')
        return self.groups[0]

    def padded_indices(self) -> tuple[Tensor, Tensor]:
        """(K, P_max) cloud indices of every block in frame order, and (K, P_max) bool: a real sample (padding
        repeats the block's first sample)."""
        width = max(group.indices.shape[1] for group in self.groups)
        device = self.groups[0].indices.device
        indices = torch.zeros(len(self), width, dtype=torch.int64, device=device)
        valid = torch.zeros(len(self), width, dtype=torch.bool, device=device)
        for group in self.groups:
            size = group.indices.shape[1]
            indices[group.blocks] = group.indices[:, :1].expand(-1, width)
            indices[group.blocks, :size] = group.indices
            valid[group.blocks, :size] = True
        return indices, valid

    def to(self, device: torch.device | str) -> FrameBlocks:
        return FrameBlocks([group.to(device) for group in self.groups], self.partition.to(device))


def layout_stride(layout: str, block_size: float, stride: float) -> float:
    """The stride of the grid a layout picks its blocks from (the half-block grid for the thinned layouts)."""
    if layout not in LAYOUTS:
        raise ValueError(f'layout={layout!r}: choose one of {LAYOUTS}')
    return {'grid': stride, 'tile': block_size}.get(layout, block_size / 2.0)


def layout_partition(xyz: Tensor, layout: str, block_size: float, stride: float, min_points: int,
                     use_numpy: bool, dense_points: int | None = None, anchored: bool = False) -> FramePartition:
    """The kept blocks of `layout` for the cloud `xyz` (N, 3) (see the module docstring). `anchored`: the grid on
    the lattice of pitch 2 x its stride (so the parity classes of the thinned layouts stay put too)."""
    grid_stride = layout_stride(layout, block_size, stride)
    lattice = 2.0 * grid_stride if anchored else None
    if use_numpy:
        partition = FramePartition.from_numpy(partition_blocks(xyz.numpy(), block_size, grid_stride, min_points,
                                                               lattice))
    else:
        partition = partition_torch(xyz, block_size, grid_stride, min_points, lattice)
    if layout in _LAYOUT_CLASSES and len(partition):
        partition = partition.subset(select_layout(partition, layout, xyz.shape[0], dense_points, min_points))
    return partition


def frame_blocks(xyz: Tensor, colours: Tensor | None, layout: str = 'grid', block_size: float = 1.0,
                 stride: float = 0.5, num_points: int = 1024, min_points: int = 20, seed: int = 0,
                 sampler: str = 'auto', point_buckets: tuple[int, ...] | None = None, encoding: str = 'room',
                 floor: float | None = None) -> FrameBlocks:
    """Cut a frame (xyz (N, 3) float32 tensor, colours (N, 3) or None, same device) into the blocks of `layout`.

    sampler: 'numpy' (CPU tensors only), 'torch', 'auto' = numpy on the CPU, torch elsewhere, or 'legacy' (CPU:
    the per-block draw of the path before issue 12, `mpnet_model.infer.reference`, same stream for the same seed).
    point_buckets: points per block the backend takes, ascending (default: `num_points` only). A block of c points
    is sampled to the smallest bucket >= c (the largest when c exceeds them all): sparse blocks carry fewer
    repeats. One `BlockGroup` per bucket used. Deterministic for a given seed and sampler (and device: CPU and
    CUDA generators differ).
    encoding: the input encoding (`mpnet_model.data.encoding`; ``floor`` needs `floor`). Every encoding but ``room``
    anchors the grid to a lattice and samples blocks with keys of their own cells and points (numpy or torch, the
    same indices on every device); ``room`` keeps the random streams above.
    """
    use_numpy = _use_numpy(sampler, xyz)
    buckets = sorted(point_buckets or (num_points,))
    partition = layout_partition(xyz, layout, block_size, stride, min_points, use_numpy, buckets[-1],
                                 anchors_grid(encoding))
    return sample_partition(xyz, colours, partition, buckets, seed, sampler, encoding, floor)


def _use_numpy(sampler: str, xyz: Tensor) -> bool:
    if sampler not in SAMPLERS:
        raise ValueError(f'sampler={sampler!r}: choose one of {SAMPLERS}')
    use_numpy = sampler in ('numpy', 'legacy') or (sampler == 'auto' and xyz.device.type == 'cpu')
    if use_numpy and xyz.device.type != 'cpu':
        raise ValueError(f'sampler={sampler!r} needs CPU tensors, got {xyz.device}')
    return use_numpy


def sample_partition(xyz: Tensor, colours: Tensor | None, partition: FramePartition, point_buckets: list[int],
                     seed: int = 0, sampler: str = 'auto', encoding: str = 'room', floor: float | None = None
                     ) -> FrameBlocks:
    """Sample the blocks of `partition` (any set of blocks of the cloud `xyz`, e.g. a layout's or a chosen subset)
    to the ascending `point_buckets` and build their channels in `encoding` (see `frame_blocks`)."""
    use_numpy = _use_numpy(sampler, xyz)
    keyed = anchors_grid(encoding)
    if keyed and sampler == 'legacy':
        raise ValueError(f"sampler='legacy' draws the pre-issue-12 blocks of the 'room' encoding, not {encoding!r}")
    buckets = sorted(point_buckets)
    # Bucket of each block: the smallest size >= its count (the largest when it exceeds them all), as a
    # searchsorted would give, without a host -> device copy of the sizes.
    bucket = torch.zeros_like(partition.counts)                                                    # (K,)
    for size in buckets[:-1]:
        bucket += partition.counts > size
    if len(buckets) > 1:   # blocks and members per bucket, in one read
        level_blocks, level_members = read_host(index_counts(bucket, len(buckets)),
                                                index_counts(bucket, len(buckets), partition.counts))
        present = [level for level in range(len(buckets)) if level_blocks[level]]
    else:
        present = [0]
    rng = np.random.default_rng(seed) if use_numpy else None
    generator = None if use_numpy else torch.Generator(device=xyz.device).manual_seed(seed)
    groups = []
    for level in present:                                           # at most 3 sizes: a loop over sizes, not blocks
        if len(present) == 1:
            blocks, part = torch.arange(len(partition), device=xyz.device), partition
        else:
            members = bucket == level
            sizes = (int(level_blocks[level]), int(level_members[level]))
            blocks, part = compact(members, sizes[0]), partition.subset(members, sizes)
        size = buckets[level]
        if keyed and use_numpy:
            indices = torch.from_numpy(sample_block_indices_keyed(part.to_numpy(), xyz.numpy(), size, seed))
        elif keyed:
            indices = sample_rows_keyed_torch(part, xyz, size, seed)
        elif use_numpy:
            draw = sample_block_indices
            if sampler == 'legacy':
                from mpnet_model.infer.reference import sample_block_indices_legacy as draw
            indices = torch.from_numpy(draw(part.to_numpy(), size, rng))
        else:
            indices = sample_rows_torch(part, size, generator)
        groups.append(BlockGroup(block_channels(xyz, colours, indices, part, encoding, floor), indices, blocks))
    return FrameBlocks(groups, partition)
