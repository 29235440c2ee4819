"""`SemanticMapper`: a semantic voxel map in the fixed frame, kept up to date by segmenting only what changed.

Per frame (points already in the fixed frame, the sensor's position known):

  free-space test (rays through old voxels: misses, removal)  ──► integrate the points (hits, new voxels)
  ──► evict (beyond `radius` of the sensor, then the oldest beyond `max_voxels`)
  ──► dirty blocks + their overlapping neighbours (`schedule.py`)
  ──► `SceneSegmenter.segment_partition` on the map's voxels of those blocks (the same frame path after blocking:
      the network, mean shift, BlockMerging), class probabilities fused into the voxels (`fusion.py`), instances
      associated with the map's (`instances.py`)
  ──► per-point labels of the frame looked up from its voxels.

The network sees the map's voxel centroids (one point per voxel, the mean colour), not the raw frame: a block is
segmented with everything the map has seen of it. Blocks use a grid anchored at the fixed frame's origin
(`partition_torch(room_box=...)`), so a block is the same block in every frame. With a ``room`` model channels
6-8 are normalised over the region segmented and channel 2 is measured from the region's lowest voxel (the frame
path measures both over the frame); with a ``floor`` model channel 2 is the height above the frame's floor (given
by `update`, or estimated from the region), as in the frame path.

Memory bound: the voxel arrays hold at most max(`max_voxels`, the voxels of one frame: those are never evicted) x
`bytes_per_voxel` (110 bytes with 13 classes);
the tile and block tables are small (one row per 0.25 m^2 cell of the region); a frame's temporary arrays scale
with the frame and with the blocks it segments. `SemanticMapper.nbytes()` reports the arrays.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from mpnet_model.infer.blocking import layout_stride, partition_torch, select_layout
from mpnet_model.infer.scene import InstanceInfo, postprocess_threads
from mpnet_model.mapping.fusion import DEFAULT_MAX_OBSERVATIONS, fuse_probabilities, labels_of
from mpnet_model.mapping.instances import DEFAULT_MIN_IOU, associate
from mpnet_model.mapping.schedule import (
    DEFAULT_CHANGE_CELL,
    DEFAULT_DIRTY_FRACTION,
    DEFAULT_MIN_CHANGED,
    BlockSchedule,
    RunPlan,
)
from mpnet_model.mapping.table import pack_cells
from mpnet_model.mapping.voxels import VoxelMap

_THINNED_LAYOUTS = ('staggered', 'cover', 'adaptive')


@dataclass(frozen=True)
class MapConfig:
    voxel_size: float = 0.05                 # [m] voxel edge
    radius: float = 20.0                     # [m] horizontal distance from the sensor kept in the map
    max_voxels: int = 1_000_000              # the oldest voxels beyond this are evicted
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION
    min_changed: int = DEFAULT_MIN_CHANGED   # change cells a block needs to change before it is segmented again
    change_cell: float = DEFAULT_CHANGE_CELL  # [m] the scale at which occupancy changes are counted
    max_observations: int = DEFAULT_MAX_OBSERVATIONS
    clear_free_space: bool = True            # remove voxels the frame's rays pass through
    instance_min_iou: float = DEFAULT_MIN_IOU
    propagate_radius: float = 0.5            # [m] points of not-yet-segmented voxels take the nearest label

    def __post_init__(self):
        if not self.change_cell >= self.voxel_size:
            raise ValueError(f'change_cell={self.change_cell} must be >= voxel_size={self.voxel_size}')
        if not self.voxel_size > 0 or not self.radius > 0 or self.max_voxels < 1 or self.propagate_radius < 0:
            raise ValueError(f'voxel_size={self.voxel_size}, radius={self.radius} must be > 0, max_voxels='
                             f'{self.max_voxels} >= 1, propagate_radius={self.propagate_radius} >= 0')
        if not 0 <= self.instance_min_iou <= 1:
            raise ValueError(f'instance_min_iou={self.instance_min_iou}: must be in [0, 1]')


@dataclass
class MapUpdate:
    """What one frame did to the map, and the frame's labels looked up from it."""
    labels: np.ndarray              # (N,) int32, -1 unknown
    scores: np.ndarray              # (N,) float32
    instances: np.ndarray           # (N,) int64 map instance ids, -1 none
    instances_info: list[InstanceInfo] = field(default_factory=list)
    blocks_run: int = 0             # blocks given to the network this frame
    blocks_dirty: int = 0           # dirty blocks (the run adds their neighbours)
    blocks_pending: int = 0         # dirty blocks left for later frames by a block cap
    voxels: int = 0                 # voxels in the map after the frame
    added: int = 0
    removed: int = 0                # seen through (free space)
    evicted: int = 0
    timings: dict[str, float] = field(default_factory=dict)     # ms


class SemanticMapper:
    """See the module docstring. `segmenter`: a `SceneSegmenter` (its backend, layout, block geometry)."""

    def __init__(self, segmenter: Any, config: MapConfig | None = None):
        self.segmenter = segmenter
        self.config = config or MapConfig()
        self.class_names = tuple(segmenter.class_names)
        self.stride = layout_stride(segmenter.layout, segmenter.block_size, segmenter.stride)
        self.voxels = VoxelMap(self.config.voxel_size, len(self.class_names), self.stride)
        self.schedule = self._new_schedule()
        self.frame = 0
        self.next_instance = 0
        self._floor: float | None = None           # the current frame's floor and sensor position (`update`)
        self._origin: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.voxels)

    def _new_schedule(self) -> BlockSchedule:
        c = self.config
        return BlockSchedule(self.segmenter.block_size, self.stride, self.segmenter.min_block_points,
                             c.dirty_fraction, c.min_changed, c.change_cell)

    def configure(self, config: MapConfig) -> None:
        """New bounds and thresholds for the same voxels (the voxel size cannot change)."""
        if config.voxel_size != self.config.voxel_size:
            raise ValueError(f'voxel_size {config.voxel_size} != the map\'s {self.config.voxel_size}: make a new map')
        if config.change_cell != self.config.change_cell:
            raise ValueError(f'change_cell {config.change_cell} != the map\'s {self.config.change_cell}: '
                             'make a new map')
        self.config = config
        self.schedule.dirty_fraction, self.schedule.min_changed = config.dirty_fraction, config.min_changed

    def nbytes(self) -> int:
        """Bytes of the map's arrays (voxels, tiles, blocks, change cells)."""
        return self.voxels.table.nbytes() + sum(table.nbytes() for table in (
            self.schedule.tiles, self.schedule.blocks, self.schedule.cells))

    # --- one frame -----------------------------------------------------------------------------------------

    def update(self, xyz: np.ndarray, colours: np.ndarray, origin: np.ndarray,
               max_blocks: int | None = None, floor: float | None = None) -> MapUpdate:
        """Integrate a frame xyz (N, 3) in the fixed frame with colour channels (N, 3) in [0, 1] (see
        `SceneSegmenter.colours`), seen from `origin` (3,); segment the dirty blocks (at most `max_blocks` in the
        run set) and return the frame's labels from the map. `floor`: the frame's floor height, for models of the
        ``floor`` input encoding (None: estimated from the re-segmented region around `origin`)."""
        start = time.perf_counter()
        self._floor, self._origin = floor, np.asarray(origin, dtype=np.float64).reshape(3)
        xyz = np.asarray(xyz, dtype=np.float32)
        colours = np.asarray(colours, dtype=np.float32)
        origin = np.asarray(origin, dtype=np.float64).reshape(3)
        if xyz.ndim != 2 or xyz.shape[1] != 3 or colours.shape != xyz.shape:
            raise ValueError(f'xyz {xyz.shape} and colours {colours.shape} must both have shape (N, 3)')
        self.frame += 1
        c = self.config
        removed = self.voxels.clear_seen_through(origin, xyz) if c.clear_free_space else np.zeros(0, np.int64)
        inside = np.hypot(xyz[:, 0] - origin[0], xyz[:, 1] - origin[1]) <= c.radius
        added = self.voxels.integrate(xyz[inside], colours[inside], self.frame)
        evicted = self.voxels.evict(origin, c.radius, c.max_voxels, self.frame)
        centres = self.voxels.centres
        self.schedule.record(centres(added), centres(removed), centres(evicted))
        integrated = time.perf_counter()
        plan = self.schedule.plan(origin, max_blocks)
        blocks_run = self._segment(plan) if len(plan.run) else 0
        self.schedule.mark_run(plan)
        segmented = time.perf_counter()
        labels, scores, instances = self.lookup(xyz)
        present = np.unique(instances[instances >= 0])
        update = MapUpdate(labels, scores, instances, self.instance_infos(present), blocks_run, len(plan.dirty),
                           plan.pending, len(self.voxels), len(added), len(removed), len(evicted))
        done = time.perf_counter()
        update.timings = {'integrate': (integrated - start) * 1e3, 'segment': (segmented - integrated) * 1e3,
                          'lookup': (done - segmented) * 1e3, 'total': (done - start) * 1e3}
        return update

    def _region_rows(self, run: np.ndarray) -> np.ndarray:
        tiles = self.schedule.region_tiles(run)
        voxel_tiles = self.voxels['tile']
        at = np.minimum(np.searchsorted(tiles, voxel_tiles), len(tiles) - 1)
        return np.flatnonzero(tiles[at] == voxel_tiles)

    def _segment(self, plan: RunPlan) -> int:
        """Segment the run set's blocks on the map's voxels, fuse the results; returns the blocks segmented."""
        segmenter = self.segmenter
        rows = self._region_rows(plan.run)
        if len(rows) < segmenter.min_block_points:
            return 0
        points = self.voxels['centroid'][rows]
        colours = np.clip(self.voxels['colour'][rows], 0.0, 1.0)
        anchor = plan.run.min(0) // 2 * 2          # an even cell: the layout's parity classes stay the frame's
        low = np.array([anchor[0] * self.stride, anchor[1] * self.stride, float(points[:, 2].min())])
        extent = np.maximum(points.max(0).astype(np.float64) - low, 0.0)
        with postprocess_threads('cpu'):
            partition = partition_torch(torch.from_numpy(points), segmenter.block_size, self.stride,
                                        segmenter.min_block_points, room_box=(torch.from_numpy(low),
                                                                              torch.from_numpy(extent)))
            world = pack_cells(partition.cells.numpy() + anchor)
            wanted = np.sort(pack_cells(plan.run))
            at = np.minimum(np.searchsorted(wanted, world), len(wanted) - 1)
            partition = partition.subset(torch.from_numpy(wanted[at] == world))
            if segmenter.layout in _THINNED_LAYOUTS and len(partition):
                partition = partition.subset(select_layout(partition, segmenter.layout, len(points),
                                                           max(segmenter.point_buckets), segmenter.min_block_points))
        if not len(partition):
            return 0
        result = segmenter.segment_partition(points, colours, partition, self._floor, self._origin)
        if result.probabilities is None:
            return 0
        v = self.voxels
        v['probs'][rows], count = fuse_probabilities(v['probs'][rows], v['observations'][rows], result.probabilities,
                                                     self.config.max_observations)
        v['observations'][rows] = count
        v['instance'][rows], self.next_instance = associate(result.instances, v['instance'][rows],
                                                            self.next_instance, self.config.instance_min_iou)
        return len(partition)

    # --- reading the map -----------------------------------------------------------------------------------

    def lookup(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels (N,) int32 (-1 unknown), confidences (N,), map instance ids (N,) int64 of points xyz (N, 3):
        their voxels' values; points of voxels not segmented yet (or not in the map) take those of the nearest
        segmented voxel within `propagate_radius`, else unknown. Looked up once per voxel, copied to its points."""
        keys, inverse = np.unique(self.voxels.keys_of(xyz), return_inverse=True)
        labels, scores, instances = self._lookup_keys(keys)
        inverse = inverse.reshape(-1)
        return labels[inverse], scores[inverse], instances[inverse]

    def _lookup_keys(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, found = self.voxels.table.find(keys)
        labels = np.full(len(keys), -1, np.int32)
        scores = np.zeros(len(keys), np.float32)
        instances = np.full(len(keys), -1, np.int64)
        if not len(self.voxels):
            return labels, scores, instances
        observed = self.voxels['observations'] > 0
        known = found & observed[rows]
        voxel_labels, voxel_scores = labels_of(self.voxels['probs'][rows[known]],
                                               self.voxels['observations'][rows[known]])
        labels[known], scores[known] = voxel_labels, voxel_scores
        instances[known] = self.voxels['instance'][rows[known]]
        unknown = np.flatnonzero(~known)
        if len(unknown) and self.config.propagate_radius > 0 and observed.any():
            source = self._nearest_observed(self.voxels.centres(keys[unknown]), observed)
            ok = source >= 0
            fill, fill_scores = labels_of(self.voxels['probs'][source[ok]], self.voxels['observations'][source[ok]])
            labels[unknown[ok]], scores[unknown[ok]] = fill, fill_scores
            instances[unknown[ok]] = self.voxels['instance'][source[ok]]
        return labels, scores, instances

    def _nearest_observed(self, queries: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """Row of the nearest segmented voxel within propagate_radius of each query (-1 none)."""
        radius = self.config.propagate_radius
        centroids = self.voxels['centroid']
        low, high = queries.min(0) - radius, queries.max(0) + radius
        candidates = np.flatnonzero(observed & ((centroids >= low) & (centroids <= high)).all(1))
        if not len(candidates):
            return np.full(len(queries), -1, np.int64)
        distance, index = cKDTree(centroids[candidates]).query(queries, k=1, distance_upper_bound=radius)
        return np.where(np.isfinite(distance), candidates[np.minimum(index, len(candidates) - 1)], -1)

    def labelled_voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(centroids (V, 3), labels (V,), instances (V,), confidences (V,)) of every segmented voxel."""
        rows = np.flatnonzero(self.voxels['observations'] > 0)
        labels, scores = labels_of(self.voxels['probs'][rows], self.voxels['observations'][rows])
        return self.voxels['centroid'][rows], labels, self.voxels['instance'][rows].astype(np.int64), scores

    def instance_infos(self, ids: np.ndarray) -> list[InstanceInfo]:
        """Boxes, majority class, voxel count and mean confidence of the map instances `ids` (sorted unique)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return []
        instance = self.voxels['instance'].astype(np.int64)
        at = np.minimum(np.searchsorted(ids, instance), len(ids) - 1)
        rows = np.flatnonzero((ids[at] == instance) & (self.voxels['observations'] > 0))
        if not len(rows):
            return []
        which = at[rows]
        order = np.argsort(which, kind='stable')
        rows, which = rows[order], which[order]
        starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
        xyz = self.voxels['centroid'][rows]
        lower, upper = np.minimum.reduceat(xyz, starts), np.maximum.reduceat(xyz, starts)
        labels, scores = labels_of(self.voxels['probs'][rows], self.voxels['observations'][rows])
        num_classes = len(self.class_names)
        votes = np.bincount(np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)])) * num_classes
                            + labels, minlength=len(starts) * num_classes).reshape(len(starts), num_classes)
        counts = np.diff(np.r_[starts, len(rows)])
        score_sums = np.add.reduceat(scores.astype(np.float64), starts)
        return [InstanceInfo(id=int(ids[which[s]]), class_id=int(votes[k].argmax()),
                             class_name=self.class_names[int(votes[k].argmax())],
                             centre=((lower[k] + upper[k]) / 2).astype(np.float32),
                             extent=(upper[k] - lower[k]).astype(np.float32), num_points=int(counts[k]),
                             score=float(score_sums[k] / counts[k])) for k, s in enumerate(starts)]

    # --- files ---------------------------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the map to `path` (.npz: everything; .ply: the same fields as vertex properties), atomically."""
        from mpnet_model.mapping.mapfile import save_map

        save_map(self, path)

    def load(self, path) -> None:
        """Replace the map by the one in `path` (.npz or .ply); MapFileError naming the file and the problem."""
        from mpnet_model.mapping.mapfile import load_map

        load_map(self, path)

    def restore(self, keys: np.ndarray, columns: dict[str, np.ndarray], frame: int, next_instance: int) -> None:
        """Set the map's voxels (e.g. from a file): every block counts as segmented (a loaded map is not
        segmented again until it changes)."""
        columns = dict(columns)
        columns['tile'] = self.voxels.tiles_of_keys(keys)
        self.voxels.table.replace_all(keys, columns)
        self.schedule = self._new_schedule()
        self.schedule.record(added=self.voxels.centres(keys))
        self.schedule.mark_all_run()
        self.frame, self.next_instance = int(frame), int(next_instance)
