"""BlockMerging of SGPN/ASIS: block-local instance ids -> scene instance ids, for a whole frame in torch.

The reference (``BlockMerging`` in ASIS ``utils/test_utils.py``, same as SGPN) keeps a dense voxel volume of
scene instance ids (and their class) over the room and, block after block:

1. each group (block-local instance) gets the class most frequent among its points;
2. for every labelled point whose voxel already holds an id of the *same class*, the pair
   (group, stored id) is counted; per group the stored id with the largest count wins (smallest id on ties);
3. a group takes a new scene id when that largest overlap is < 7 and the group has >= 30 points, else it
   adopts the winning id;
4. the group's id (and class) is written into the voxels of its points that are still empty; the first point
   of the block in a voxel wins, occupied voxels are never overwritten.

After the last block every point reads the id stored in its voxel, and instances that are too small are
dropped (ASIS: kept if count > 0.25 * mean instance size of the instance's majority class) and the rest
renumbered 0..G-1 in id order.

Known defects of the reference, fixed here:

(a) fixed-size arrays (``overlapgroupcounts = zeros([100, 300])``, ``groupcounts = ones(100)``): more than 100
    groups in a block crash, stored ids >= 300 are silently ignored (ASIS wraps the count in try/except), and
    unlabelled points (-1) are counted into group 99. Here every size is dynamic and only labelled points count.
(b) a small group (< 30 points) with no overlap at all adopts ``argmax`` of an all-zero row, i.e. scene id 0,
    silently merging it into whatever instance 0 is. Here a group without any overlap always gets a new id
    (the final size filter then decides whether it survives).
(c) ``curr_max = max(volume)`` can hand out an id twice when a new group's voxels were all occupied (the id
    was never written). Here new ids come from a counter and are never reused.

Two implementations, same ids:

- :func:`block_merging` (the frame path): all blocks of a frame at once, in torch on the input's device. The
  state is a dense array over the frame's occupied voxels only; each block's distinct points are counted once
  with their number of copies; blocks are merged in "waves" (:func:`_conflict_waves`), each wave one vectorised
  step over many blocks that share no voxel, which gives exactly the block-by-block result in block order.
- :class:`BlockMerger` (incremental, ``add_block`` per block, numpy) and :func:`block_merging_reference` over it:
  the reference. Its dense volume is replaced by a sparse map (sorted int64 keys of the occupied voxels,
  linearised over the room grid, looked up with ``searchsorted``): memory grows with the number of occupied
  voxels, not with the room volume (a 40 m x 40 m x 4 m window at 5 mm would be 5e10 dense cells).

Voxel size: ASIS works in room coordinates normalised to [0, 1] with ``gap = 5e-3``, i.e. a voxel of
0.5 % of the room extent per axis. Here ``gap`` is a length in the units of ``xyz`` (metres; 5 mm by default);
to reproduce ASIS exactly pass its normalised coordinates with ``room_min=0, room_max=1, gap=5e-3``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OVERLAP_MIN = 7          # reference: a group adopts an existing id when it overlaps it in >= 7 points
NEW_GROUP_MIN_POINTS = 30  # reference: a weakly overlapping group gets a new id only if it has >= 30 points
_CLASS_SPAN = 1 << 16      # the map packs (id, class) into one int64 (1-D inserts are ~20x faster than 2-D)


@dataclass
class MergedInstances:
    """Result of :meth:`BlockMerger.finalize`.

    instances: (T,) int64 scene instance id of every point added, in the order added (-1 = none);
    semantic: (G,) int64 majority class of each instance; sizes: (G,) int64 its number of points.
    """
    instances: np.ndarray
    semantic: np.ndarray
    sizes: np.ndarray


def _compact_ids(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(M,) non-negative ids -> (index of each id among the sorted distinct ids (M,), number of distinct ids)."""
    if ids.max() < 4 * ids.size + 1024:  # small ids (mean-shift labels): a bincount is cheaper than a sort
        present = np.bincount(ids) > 0
        return (np.cumsum(present) - 1)[ids], int(present.sum())
    distinct, index = np.unique(ids, return_inverse=True)
    return index.reshape(-1), distinct.size


def _majority_class(group_of_point: np.ndarray, class_of_point: np.ndarray, num_groups: int) -> np.ndarray:
    """(M,), (M,) -> (G,) most frequent class per group (smallest class on ties, as scipy.stats.mode)."""
    num_classes = int(class_of_point.max()) + 1 if class_of_point.size else 1
    votes = np.bincount(group_of_point * num_classes + class_of_point,
                        minlength=num_groups * num_classes).reshape(num_groups, num_classes)
    return votes.argmax(1)


class BlockMerger:
    """Incremental BlockMerging over a room (or a robot's window) of known bounds.

    ``add_block`` once per block, in processing order (the merge is order dependent, as the reference);
    ``finalize`` for the scene ids of all points added. See the module docstring for the algorithm.
    """

    def __init__(self, room_min, room_max, gap: float = 0.005, *, overlap_min: int = OVERLAP_MIN,
                 new_group_min_points: int = NEW_GROUP_MIN_POINTS):
        self.room_min = np.asarray(room_min, dtype=np.float64).reshape(-1)
        self.room_max = np.asarray(room_max, dtype=np.float64).reshape(-1)
        if self.room_min.shape != (3,) or self.room_max.shape != (3,):
            raise ValueError(f'BlockMerger: room_min and room_max must have 3 values, got {self.room_min.shape} '
                             f'and {self.room_max.shape}')
        if not (np.all(np.isfinite(self.room_min)) and np.all(np.isfinite(self.room_max))
                and np.all(self.room_max >= self.room_min)):
            raise ValueError(f'BlockMerger: invalid room bounds min={self.room_min} max={self.room_max}')
        if not gap > 0:
            raise ValueError(f'BlockMerger: gap (voxel size) must be > 0, got {gap!r}')
        self.gap = float(gap)
        self.overlap_min = int(overlap_min)
        self.new_group_min_points = int(new_group_min_points)
        self.grid_shape = (np.floor((self.room_max - self.room_min) / self.gap).astype(np.int64) + 1)  # (3,)
        if float(np.prod(self.grid_shape.astype(np.float64))) >= 2.0 ** 62:
            raise ValueError(f'BlockMerger: room {self.room_max - self.room_min} at gap {self.gap} has too many '
                             f'voxels ({self.grid_shape}) to index with int64; use a larger gap')
        self._strides = np.array([self.grid_shape[1] * self.grid_shape[2], self.grid_shape[2], 1], dtype=np.int64)
        # Sparse voxel map: sorted keys (V,) with the scene id and class stored in each occupied voxel.
        # Two sorted levels (log-structured): new voxels go into a small "recent" level, merged into the large
        # "base" level when it grows past a fraction of it, so a block's insert does not copy the whole map.
        self._keys = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]  # [base, recent] sorted keys
        self._stored = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]  # id * _CLASS_SPAN + class
        self._next_id = 0
        self._added_keys: list[np.ndarray] = []      # per block (P,) voxel keys, for finalize
        self._added_classes: list[np.ndarray] = []   # per block (P,) point classes, for the majority vote
        self._added_ids: list[np.ndarray] = []       # per block (P,) ids returned by add_block

    @property
    def num_voxels(self) -> int:
        """Occupied voxels in the map."""
        return int(self._keys[0].size + self._keys[1].size)

    def voxel_keys(self, xyz: np.ndarray) -> np.ndarray:
        """(P,3) room coordinates -> (P,) int64 linear voxel index; points outside the bounds are an error."""
        cells = np.floor((np.asarray(xyz, dtype=np.float64) - self.room_min) / self.gap).astype(np.int64)  # (P,3)
        if cells.size == 0:
            return np.zeros(0, dtype=np.int64)
        # A point at most one voxel outside (rounding in the caller's bounds) is clamped; further out is a bug.
        if cells.min() < -1 or (cells - self.grid_shape).max() > 0:  # whole-array reductions: fast paths
            outside = np.any((cells < -1) | (cells > self.grid_shape), axis=1)
            raise ValueError(f'BlockMerger: {int(outside.sum())} points lie outside the room bounds '
                             f'[{self.room_min}, {self.room_max}] (first: {np.asarray(xyz)[outside][0]})')
        np.clip(cells, 0, self.grid_shape - 1, out=cells)
        return (cells[:, 0] * self._strides[0] + cells[:, 1] * self._strides[1]) + cells[:, 2]

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """(M,) keys, sorted ascending for speed -> (M,) packed id * _CLASS_SPAN + class stored there, -1 if empty."""
        packed = np.full(keys.shape, -1, dtype=np.int64)
        for level_keys, level_stored in zip(self._keys, self._stored):
            position = np.searchsorted(level_keys, keys)  # sorted queries: numpy narrows each search by the last
            inside = np.flatnonzero(position < level_keys.size)
            hit = inside[level_keys[position[inside]] == keys[inside]]
            packed[hit] = level_stored[position[hit]]
        return packed

    def _insert(self, keys: np.ndarray, packed: np.ndarray) -> None:
        """Add voxels absent from the map: sorted distinct ``keys`` (M,) with their packed id/class (M,)."""
        position = np.searchsorted(self._keys[1], keys)
        self._keys[1] = np.insert(self._keys[1], position, keys)
        self._stored[1] = np.insert(self._stored[1], position, packed)
        if self._keys[1].size > max(1 << 15, self._keys[0].size // 4):  # amortised: each merge copies the base
            position = np.searchsorted(self._keys[0], self._keys[1])
            self._keys[0] = np.insert(self._keys[0], position, self._keys[1])
            self._stored[0] = np.insert(self._stored[0], position, self._stored[1])
            self._keys[1], self._stored[1] = self._keys[1][:0], self._stored[1][:0]

    def _validate_block(self, xyz, block_instance, block_semantic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xyz = np.asarray(xyz)
        block_instance = np.asarray(block_instance)
        block_semantic = np.asarray(block_semantic)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f'BlockMerger.add_block: xyz must have shape (P, 3), got {xyz.shape}')
        num_points = xyz.shape[0]
        for name, values in (('block_instance', block_instance), ('block_semantic', block_semantic)):
            if values.shape != (num_points,):
                raise ValueError(f'BlockMerger.add_block: {name} must have shape ({num_points},), got {values.shape}')
            if values.size and not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f'BlockMerger.add_block: {name} must be integers, got dtype {values.dtype}')
        if not np.isfinite(xyz.sum()):  # one reduction; NaN/inf anywhere makes the sum non-finite
            raise ValueError('BlockMerger.add_block: xyz contains NaN or inf')
        if block_instance.size and block_instance.min() < -1:
            raise ValueError(f'BlockMerger.add_block: block_instance must be >= -1, got {block_instance.min()}')
        if block_semantic.size and (block_semantic.min() < 0 or block_semantic.max() >= _CLASS_SPAN):
            raise ValueError(f'BlockMerger.add_block: block_semantic must lie in [0, {_CLASS_SPAN}), got '
                             f'[{block_semantic.min()}, {block_semantic.max()}]')
        return xyz, block_instance.astype(np.int64), block_semantic.astype(np.int64)

    def add_block(self, xyz, block_instance, block_semantic) -> np.ndarray:
        """Merge one block: xyz (P,3) room coords, block_instance (P,) local ids (-1 none), block_semantic (P,).

        Returns (P,) int64: the scene id now stored in each point's voxel (-1 if empty). Ids are not yet
        filtered or renumbered; a voxel's id never changes once written, so only voxels that are empty now
        (unlabelled points) can still change before :meth:`finalize`.
        """
        xyz, block_instance, block_semantic = self._validate_block(xyz, block_instance, block_semantic)
        num_points = xyz.shape[0]
        labelled_mask = block_instance >= 0
        # One stable sort groups the points by voxel (keys < 2^62, so key*2 + flag fits int64), labelled points
        # first inside a voxel, each in block order: the first of a run is the point that writes the voxel.
        sort_keys = self.voxel_keys(xyz) * 2 + ~labelled_mask
        order = np.argsort(sort_keys, kind='stable')  # (P,)
        sorted_keys = sort_keys[order] >> 1
        run_start = np.ones(num_points, dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        voxel_keys = sorted_keys[run_start]  # (U,) sorted, distinct
        writer = order[run_start]  # (U,) first labelled point of each voxel (or an unlabelled one if none)
        voxel_of_point = np.empty(num_points, dtype=np.int64)
        voxel_of_point[order] = np.cumsum(run_start) - 1  # (P,)
        # One lookup per distinct voxel of the block, with sorted queries (the map lookup is the hot spot).
        packed = self._lookup(voxel_keys)  # (U,)
        found = packed >= 0
        stored_id, stored_class = np.divmod(packed, _CLASS_SPAN)  # (U,) each
        stored_id[~found], stored_class[~found] = -1, -1  # -1 = empty voxel
        labelled = np.flatnonzero(labelled_mask)  # (L,)
        if labelled.size:
            group_of_point, num_groups = _compact_ids(block_instance[labelled])  # (L,) in 0..G-1
            group_scene_id, group_class = self._assign_groups(voxel_of_point[labelled], group_of_point,
                                                              block_semantic[labelled], stored_id, stored_class,
                                                              num_groups)
            # Empty voxels take the group of their first labelled point.
            new_voxels = np.flatnonzero(~found & labelled_mask[writer])  # (V',) sorted
            if new_voxels.size:
                writer_group = np.empty(num_points, dtype=np.int64)
                writer_group[labelled] = group_of_point
                writer_group = writer_group[writer[new_voxels]]
                stored_id[new_voxels] = group_scene_id[writer_group]
                stored_class[new_voxels] = group_class[writer_group]
                self._insert(voxel_keys[new_voxels], stored_id[new_voxels] * _CLASS_SPAN + stored_class[new_voxels])
        merged = stored_id[voxel_of_point]  # (P,)
        self._added_keys.append(voxel_keys[voxel_of_point])
        self._added_classes.append(block_semantic)
        self._added_ids.append(merged)
        return merged

    def _assign_groups(self, voxel_of_point: np.ndarray, group_of_point: np.ndarray, class_of_point: np.ndarray,
                       stored_id: np.ndarray, stored_class: np.ndarray, num_groups: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Labelled points (L,) of one block, the map content per block voxel (U,) -> (scene id (G,), class (G,))."""
        group_class = _majority_class(group_of_point, class_of_point, num_groups)  # (G,)
        group_size = np.bincount(group_of_point, minlength=num_groups)  # (G,)
        point_stored_id = stored_id[voxel_of_point]  # (L,)
        overlapping = np.flatnonzero((point_stored_id >= 0)
                                     & (stored_class[voxel_of_point] == group_class[group_of_point]))
        best_overlap = np.zeros(num_groups, dtype=np.int64)
        best_id = np.full(num_groups, -1, dtype=np.int64)
        if overlapping.size:
            # Count (group, stored id) pairs, then per group keep the largest count, smallest id on ties.
            id_span = self._next_id
            pair_keys, pair_counts = np.unique(group_of_point[overlapping] * id_span + point_stored_id[overlapping],
                                               return_counts=True)
            pair_group, pair_id = pair_keys // id_span, pair_keys % id_span
            order = np.lexsort((pair_id, -pair_counts, pair_group))
            first = order[np.r_[True, pair_group[order][1:] != pair_group[order][:-1]]]
            best_overlap[pair_group[first]] = pair_counts[first]
            best_id[pair_group[first]] = pair_id[first]
        is_new = (best_overlap == 0) | ((best_overlap < self.overlap_min) & (group_size >= self.new_group_min_points))
        scene_id = best_id.copy()
        scene_id[is_new] = self._next_id + np.arange(int(is_new.sum()))  # new ids in block-local id order
        self._next_id += int(is_new.sum())
        return scene_id, group_class

    def finalize(self, min_points: int | np.ndarray = 0) -> MergedInstances:
        """Scene ids of every point added so far, small instances dropped, the rest renumbered 0..G-1.

        ``min_points``: an instance is kept if it has at least this many points (over all added points,
        duplicates from overlapping blocks included, as the reference); a scalar or a per-class array (C,)
        indexed by the instance's majority class. ASIS keeps ``count > 0.25 * mean_ins_size[class]``, i.e.
        ``min_points = np.floor(0.25 * mean_ins_size) + 1``. Does not change the merger's state.
        """
        if not self._added_keys:
            return MergedInstances(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        classes = np.concatenate(self._added_classes)  # (T,)
        point_ids = np.concatenate(self._added_ids)  # (T,) ids at add time: final unless the voxel was empty
        pending = np.flatnonzero(point_ids < 0)
        if pending.size:  # voxels that were empty when their block was added may have been filled since
            pending_keys, pending_voxel = np.unique(np.concatenate(self._added_keys)[pending], return_inverse=True)
            packed = self._lookup(pending_keys)
            filled = np.where(packed >= 0, packed // _CLASS_SPAN, -1)
            point_ids[pending] = filled[pending_voxel.reshape(-1)]
        members = np.flatnonzero(point_ids >= 0)
        instance_of_member, num_old = _compact_ids(point_ids[members]) if members.size else (members, 0)
        sizes = np.bincount(instance_of_member, minlength=num_old)  # (G_old,)
        semantic = _majority_class(instance_of_member, classes[members], num_old)  # (G_old,)
        threshold = np.asarray(min_points)
        if threshold.ndim == 1:
            if semantic.size and semantic.max() >= threshold.size:
                raise ValueError(f'BlockMerger.finalize: min_points has {threshold.size} classes but an instance '
                                 f'has class {int(semantic.max())}')
            threshold = threshold[semantic] if semantic.size else np.zeros(0)
        elif threshold.ndim != 0:
            raise ValueError(f'BlockMerger.finalize: min_points must be a scalar or (C,) array, got {threshold.shape}')
        keep = sizes >= threshold  # (G_old,)
        new_id = np.full(num_old, -1, dtype=np.int64)
        new_id[keep] = np.arange(int(keep.sum()))
        instances = np.full(point_ids.shape, -1, dtype=np.int64)
        instances[members] = new_id[instance_of_member]
        return MergedInstances(instances, semantic[keep], sizes[keep])


def block_merging_reference(room_xyz, block_indices, block_instances, block_semantic, *, gap: float = 0.005,
                  min_points: int | np.ndarray = 0, overlap_min: int = OVERLAP_MIN,
                  new_group_min_points: int = NEW_GROUP_MIN_POINTS) -> np.ndarray:
    """The block-by-block reference of :func:`block_merging` (numpy, one :meth:`BlockMerger.add_block` per block):
    room_xyz (N,3), block_indices (K,P) rows of room_xyz per block point, block_instances (K,P) local ids
    (-1 none), block_semantic (K,P) classes -> (N,) int64 numpy scene instance id per room point (-1 = none or
    never in a block). Blocks are merged in order k = 0..K-1.
    """
    room_xyz = np.asarray(room_xyz, dtype=np.float64)
    block_indices = np.asarray(block_indices)
    block_instances = np.asarray(block_instances)
    block_semantic = np.asarray(block_semantic)
    if room_xyz.ndim != 2 or room_xyz.shape[1] != 3:
        raise ValueError(f'block_merging: room_xyz must have shape (N, 3), got {room_xyz.shape}')
    if block_indices.ndim != 2 or block_instances.shape != block_indices.shape \
            or block_semantic.shape != block_indices.shape:
        raise ValueError(f'block_merging: block_indices, block_instances and block_semantic must share a (K, P) '
                         f'shape, got {block_indices.shape}, {block_instances.shape}, {block_semantic.shape}')
    scene = np.full(room_xyz.shape[0], -1, dtype=np.int64)
    if block_indices.size == 0:
        return scene
    if block_indices.min() < 0 or block_indices.max() >= room_xyz.shape[0]:
        raise ValueError(f'block_merging: block_indices must lie in [0, {room_xyz.shape[0]}), got '
                         f'[{block_indices.min()}, {block_indices.max()}]')
    merger = BlockMerger(room_xyz.min(0), room_xyz.max(0), gap, overlap_min=overlap_min,
                         new_group_min_points=new_group_min_points)
    for indices, instances, semantic in zip(block_indices, block_instances, block_semantic):
        merger.add_block(room_xyz[indices], instances, semantic)
    # A room point sampled in several blocks sits in one voxel, so all its copies carry the same id.
    scene[block_indices.reshape(-1)] = merger.finalize(min_points).instances
    return scene


# ---------------------------------------------------------------------------------------------------------------
# Whole-frame BlockMerging in torch (CPU or CUDA): the same result as the block loop, in "waves" of blocks.
# ---------------------------------------------------------------------------------------------------------------


def _frame_tensors(room_xyz, block_indices, block_instances, block_semantic, min_points):
    """Validate the inputs of :func:`block_merging` and bring them to one device as torch tensors.

    -> (xyz (N,3) float64, indices (K,P), instances (K,P), semantic (K,P) int64, min_points, device, as_numpy).
    """
    inputs = (room_xyz, block_indices, block_instances, block_semantic)
    tensors = [value for value in inputs if isinstance(value, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device('cpu')

    def to_tensor(value, name):
        if isinstance(value, torch.Tensor):
            return value.detach().to(device)
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f'block_merging: {name} must be a numeric array, got dtype object')
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    xyz, indices, instances, semantic = (to_tensor(value, name) for value, name in zip(
        inputs, ('room_xyz', 'block_indices', 'block_instances', 'block_semantic')))
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f'block_merging: room_xyz must have shape (N, 3), got {tuple(xyz.shape)}')
    if indices.dim() != 2 or instances.shape != indices.shape or semantic.shape != indices.shape:
        raise ValueError(f'block_merging: block_indices, block_instances and block_semantic must share a (K, P) '
                         f'shape, got {tuple(indices.shape)}, {tuple(instances.shape)}, {tuple(semantic.shape)}')
    for name, values in (('block_indices', indices), ('block_instances', instances), ('block_semantic', semantic)):
        if values.numel() and (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool):
            raise ValueError(f'block_merging: {name} must be integers, got dtype {values.dtype}')
    xyz = xyz.double()
    if xyz.numel() and not bool(torch.isfinite(xyz).all()):
        raise ValueError('block_merging: room_xyz contains NaN or inf')
    indices, instances, semantic = indices.long(), instances.long(), semantic.long()
    if indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= xyz.shape[0]:
            raise ValueError(f'block_merging: block_indices must lie in [0, {xyz.shape[0]}), got [{low}, {high}]')
        if int(instances.min()) < -1:
            raise ValueError(f'block_merging: block_instances must be >= -1, got {int(instances.min())}')
        low, high = int(semantic.min()), int(semantic.max())
        if low < 0 or high >= _CLASS_SPAN:
            raise ValueError(f'block_merging: block_semantic must lie in [0, {_CLASS_SPAN}), got [{low}, {high}]')
    threshold = torch.as_tensor(np.asarray(min_points) if not isinstance(min_points, torch.Tensor) else min_points,
                                device=device)
    if threshold.dim() > 1:
        raise ValueError(f'block_merging: min_points must be a scalar or (C,) array, got {tuple(threshold.shape)}')
    return xyz, indices, instances, semantic, threshold, device, not tensors


def _voxel_of_points(xyz: torch.Tensor, rows: torch.Tensor, gap: float) -> torch.Tensor:
    """Room (N,3) float64, rows (M,) of it -> (M,) int64 index of each row's voxel among the distinct voxels of
    ``rows`` (the voxels of :meth:`BlockMerger.voxel_keys` over the room's bounding box, numbered in key order)."""
    if not gap > 0:
        raise ValueError(f'block_merging: gap (voxel size) must be > 0, got {gap!r}')
    room_min, room_max = xyz.amin(0), xyz.amax(0)
    grid_shape = torch.floor((room_max - room_min) / gap).long() + 1  # (3,)
    if float(torch.prod(grid_shape.double())) >= 2.0 ** 62:
        raise ValueError(f'block_merging: room {(room_max - room_min).tolist()} at gap {gap} has too many voxels '
                         f'({grid_shape.tolist()}) to index with int64; use a larger gap')
    cells = torch.minimum(torch.floor((xyz[rows] - room_min) / gap).long(), grid_shape - 1)
    keys = (cells[:, 0] * grid_shape[1] + cells[:, 1]) * grid_shape[2] + cells[:, 2]
    return torch.unique(keys, return_inverse=True)[1]


def _majority(owner: torch.Tensor, classes: torch.Tensor, weight: torch.Tensor, num_owners: int) -> torch.Tensor:
    """(M,) owner in [0, num_owners), (M,) class, (M,) votes -> (num_owners,) class with the most votes (smallest
    class on ties)."""
    num_classes = int(classes.max()) + 1 if classes.numel() else 1
    votes = torch.bincount(owner * num_classes + classes, weights=weight, minlength=num_owners * num_classes)
    return votes.reshape(num_owners, num_classes).argmax(1)


def _cpu_strategy(device: torch.device) -> bool:
    """True on the CPU (numpy sorts); tests switch it off to run the GPU strategy on a CPU."""
    return device.type == 'cpu'


def _sort_values(values: torch.Tensor) -> torch.Tensor:
    """Sorted copy of an int64 tensor along its last axis (values only; numpy's sort on the CPU, ~3x faster than
    torch's there for rows of a few thousand, torch's on other devices)."""
    if _cpu_strategy(values.device):
        return torch.from_numpy(np.sort(values.numpy(), axis=-1))
    return torch.sort(values, dim=-1).values


def _block_entries(indices: torch.Tensor, instances: torch.Tensor, semantic: torch.Tensor
                   ) -> tuple[torch.Tensor, ...]:
    """The distinct points of each block: (K,P) -> (block, flat position of the first copy, copies, room index,
    instance, class), each (M,), in block order, then order of first appearance.

    A block resampled from few points (a sparse lidar column) repeats them; the merge only needs each distinct
    (room point, instance, class) of a block once with its number of copies (group sizes, overlap counts and
    votes count copies, which the block loop counts one by one), and the first copy's position (the first
    labelled point of a voxel writes it). Copies that disagree on their labels stay separate entries, so the
    result is always the loop's.
    """
    num_blocks, block_points = indices.shape
    device = indices.device
    position_bits = max(1, (block_points - 1).bit_length())
    num_classes, instance_span = int(semantic.max()) + 1, int(instances.max()) + 2
    if float(indices.max() + 1) * num_classes * instance_span * 2.0 ** position_bits >= 2.0 ** 62:
        first = torch.arange(indices.numel(), device=device)  # keys would overflow: every copy is an entry
        return (first // block_points, first, torch.ones_like(first), indices.reshape(-1), instances.reshape(-1),
                semantic.reshape(-1))
    # One sort per block of (room index, class, instance, position) keys: copies side by side, the first first.
    label_keys = (indices * num_classes + semantic) * instance_span + (instances + 1)  # (K,P)
    keys = _sort_values((label_keys << position_bits) | torch.arange(block_points, device=device))
    label_keys = (keys >> position_bits).reshape(-1)
    starts = torch.ones_like(label_keys, dtype=torch.bool)
    starts[1:] = label_keys[1:] != label_keys[:-1]
    starts[::block_points] = True  # a block's first key starts a run even if the last block ended on its labels
    run_start = torch.nonzero(starts).squeeze(1)  # (M,)
    copies = torch.diff(run_start, append=run_start.new_full((1,), label_keys.numel()))
    label_keys = label_keys[run_start]
    first = (keys.reshape(-1)[run_start] & ((1 << position_bits) - 1)) + run_start // block_points * block_points
    # Entries in block order, then first appearance.
    order = torch.sort(first).indices
    first, copies, label_keys = first[order], copies[order], label_keys[order]
    instance = label_keys % instance_span - 1
    label_keys = label_keys // instance_span
    return first // block_points, first, copies, label_keys // num_classes, instance, label_keys % num_classes


def _conflict_waves(block: torch.Tensor, voxel: torch.Tensor, num_blocks: int) -> np.ndarray:
    """Wave of every block: 1 + the largest wave of the earlier blocks it shares a voxel with (labelled points).

    Processing the waves in order, all blocks of a wave at once, gives exactly the block-by-block result in
    block order: a block's earlier neighbours are all in earlier waves and no two blocks of a wave share a
    voxel, so each block reads and writes what it would in the loop. Host-side DP over the (few thousand)
    edges between consecutive blocks of a voxel (in block order); -> (K,) int64 waves 0..W-1.
    """
    pair_keys = torch.unique(voxel * num_blocks + block)  # sorted: by voxel, then block
    pair_voxel, pair_block = pair_keys // num_blocks, pair_keys % num_blocks
    consecutive = pair_voxel[1:] == pair_voxel[:-1]
    edges = torch.unique(pair_block[:-1][consecutive] * num_blocks + pair_block[1:][consecutive]).cpu().numpy()
    # Edges sorted by source; a block's wave is final once every edge into it is seen, i.e. when it is a source
    # (edges go from a lower to a higher block), so relax in source order.
    waves = [0] * num_blocks
    for source, target in zip((edges // num_blocks).tolist(), (edges % num_blocks).tolist()):
        if waves[source] + 1 > waves[target]:
            waves[target] = waves[source] + 1
    return np.asarray(waves, dtype=np.int64)


def _slices_by_wave(owner_wave: torch.Tensor, num_waves: int) -> tuple[torch.Tensor, list[int]]:
    """(M,) wave of each item -> (order grouping the items by wave (stable), the W+1 boundaries of the waves in it)."""
    order = torch.sort(owner_wave, stable=True).indices
    counts = torch.bincount(owner_wave, minlength=num_waves).cpu().numpy()
    return order, np.concatenate([[0], np.cumsum(counts)]).tolist()


def block_merging(room_xyz, block_indices, block_instances, block_semantic, *, gap: float = 0.005,
                  min_points: int | np.ndarray | torch.Tensor = 0, overlap_min: int = OVERLAP_MIN,
                  new_group_min_points: int = NEW_GROUP_MIN_POINTS):
    """Merge all blocks of a frame: room_xyz (N,3), block_indices (K,P) rows of room_xyz per block point,
    block_instances (K,P) local ids (-1 none), block_semantic (K,P) classes -> (N,) int64 scene instance id per
    room point (-1 = none or never in a block), the same ids as merging blocks k = 0..K-1 in order
    (:func:`block_merging_reference`, see the module docstring), with ids 0..G-1 in order of creation.

    Contract (used by ``infer/scene.py``): numpy inputs -> numpy result computed on the CPU; if any input is a
    torch tensor, all inputs are moved to the device of the first tensor and the result is an int64 tensor on
    that device (CUDA tensors stay on the GPU: only a few small plan arrays cross to the host).

    How: everything that does not depend on the merge state is computed for all blocks at once (voxels,
    groups with their class and size, the point that writes each (block, voxel)); the state is a dense array
    over the frame's occupied voxels. Blocks that share no voxel with each other and whose earlier neighbours
    are done form a "wave" (:func:`_conflict_waves`) and are merged together: one vectorised step per wave
    instead of one per block, with exactly the block-by-block result.
    """
    xyz, indices, instances, semantic, threshold, device, as_numpy = _frame_tensors(
        room_xyz, block_indices, block_instances, block_semantic, min_points)
    scene = torch.full((xyz.shape[0],), -1, dtype=torch.int64, device=device)
    if indices.numel() == 0:
        return scene.cpu().numpy() if as_numpy else scene
    num_blocks = indices.shape[0]
    # Entries: the distinct points of each block in block order, weighted by their copies.
    entry_block, _, copies, entry_room, local, semantic = _block_entries(indices, instances, semantic)  # (M,) each
    voxel = _voxel_of_points(xyz, entry_room, gap)  # (M,)
    num_voxels = int(voxel.max()) + 1
    stored_id = torch.full((num_voxels,), -1, dtype=torch.int64, device=device)  # the merge state
    labelled = torch.nonzero(local >= 0).squeeze(1)  # (L,)
    if labelled.numel():
        _merge_in_waves(stored_id, entry_block[labelled], voxel[labelled], local[labelled], semantic[labelled],
                        copies[labelled], num_blocks, overlap_min, new_group_min_points)
    # Every block point reads its voxel's id; instances too small are dropped, the rest renumbered in id order.
    entry_id = stored_id[voxel]  # (M,)
    members = torch.nonzero(entry_id >= 0).squeeze(1)
    if members.numel():
        member_id = entry_id[members]
        num_ids = int(member_id.max()) + 1
        sizes = torch.bincount(member_id, weights=copies[members].double(), minlength=num_ids)
        present = sizes > 0
        instance_class = _majority(member_id, semantic[members], copies[members].double(), num_ids)
        if threshold.dim() == 1:
            largest = int(instance_class[present].max())
            if largest >= threshold.numel():
                raise ValueError(f'block_merging: min_points has {threshold.numel()} classes but an instance '
                                 f'has class {largest}')
            threshold = threshold[instance_class]
        keep = present & (sizes >= threshold)
        new_id = torch.where(keep, torch.cumsum(keep, 0) - 1, -1)
        entry_id[members] = new_id[member_id]
    # A room point sampled in several blocks sits in one voxel, so all its copies carry the same id.
    scene[entry_room] = entry_id
    return scene.cpu().numpy() if as_numpy else scene


def _merge_in_waves(stored_id: torch.Tensor, block: torch.Tensor, voxel: torch.Tensor, local: torch.Tensor,
                    semantic: torch.Tensor, copies: torch.Tensor, num_blocks: int, overlap_min: int,
                    new_group_min_points: int) -> None:
    """The merge proper, on the labelled entries (L,) in block order: fills ``stored_id`` (V,) in place.

    Groups (block, local id) are numbered by block, then local id: the order in which the loop creates new
    ids, so a group's index serves as its id (a smaller index is an older id, as the loop's counter).
    """
    device = stored_id.device
    num_voxels = stored_id.numel()
    local_span = int(local.max()) + 1
    group_keys, group = torch.unique(block * local_span + local, return_inverse=True)
    num_groups = group_keys.numel()
    group_class = _majority(group, semantic, copies.double(), num_groups)  # (G,)
    group_size = torch.bincount(group, weights=copies.double(), minlength=num_groups).long()  # (G,)
    # The writer of each (block, voxel): its first labelled point in block order.
    writer_keys = block * num_voxels + voxel
    order = torch.sort(writer_keys, stable=True).indices
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = writer_keys[order[1:]] != writer_keys[order[:-1]]
    writer = order[first]  # (Wr,) entries
    waves = torch.from_numpy(_conflict_waves(block, voxel, num_blocks)).to(device)
    num_waves = int(waves.max()) + 1
    entry_order, entry_bounds = _slices_by_wave(waves[block], num_waves)
    group_order, group_bounds = _slices_by_wave(waves[group_keys // local_span], num_waves)
    writer_order, writer_bounds = _slices_by_wave(waves[block[writer]], num_waves)
    e_voxel, e_group, e_copies = voxel[entry_order], group[entry_order], copies[entry_order]
    w_voxel, w_group = voxel[writer][writer_order], group[writer][writer_order]
    stored_class = torch.full((num_voxels,), -1, dtype=torch.int64, device=device)
    scene_id = torch.full((num_groups,), -1, dtype=torch.int64, device=device)
    best = torch.full((num_groups + 1,), -1, dtype=torch.int64, device=device)  # last slot: no overlap
    span = num_groups  # ids are group indices < G; pair key = group * G + id
    for wave in range(num_waves):
        start, stop = entry_bounds[wave], entry_bounds[wave + 1]
        voxels, groups = e_voxel[start:stop], e_group[start:stop]
        ids = stored_id[voxels]
        overlap = (ids >= 0) & (stored_class[voxels] == group_class[groups])
        # Count the copies of each (group, stored id) pair with one sort; per group keep the best count, the
        # smallest id on ties: score = count * G + (G - 1 - id), the largest score wins.
        pair, pair_order = torch.sort(torch.where(overlap, groups * span + ids, span * span))
        total = torch.cumsum(e_copies[start:stop][pair_order], 0)
        last = torch.ones_like(pair, dtype=torch.bool)
        last[:-1] = pair[1:] != pair[:-1]
        before = torch.cat([total.new_zeros(1), total[:-1]])  # copies before each entry
        run_before = torch.cummax(torch.where(torch.cat([last.new_ones(1), last[:-1]]), before, 0), 0).values
        valid = last & (pair < span * span)
        score = (total - run_before) * span + (span - 1 - pair % span)
        best.scatter_reduce_(0, torch.where(valid, pair // span, span), torch.where(valid, score, -1), 'amax')
        wave_groups = group_order[group_bounds[wave]:group_bounds[wave + 1]]
        group_best = best[wave_groups]
        count = torch.where(group_best >= 0, group_best // span, 0)
        is_new = (count == 0) | ((count < overlap_min) & (group_size[wave_groups] >= new_group_min_points))
        scene_id[wave_groups] = torch.where(is_new, wave_groups, span - 1 - group_best % span)
        # Empty voxels take the group of their writer (no two blocks of a wave share a voxel).
        start, stop = writer_bounds[wave], writer_bounds[wave + 1]
        voxels, groups = w_voxel[start:stop], w_group[start:stop]
        empty = stored_id[voxels] < 0
        stored_id[voxels] = torch.where(empty, scene_id[groups], stored_id[voxels])
        stored_class[voxels] = torch.where(empty, group_class[groups], stored_class[voxels])
