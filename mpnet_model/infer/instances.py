"""What a robot needs of each instance, computed on the frame's device: the size filter, an oriented box and a
confidence (torch ops over all instances at once; no per-instance Python loops).

**Fragment join** (`join_fragments`, `SceneSegmenter(fragment_join=d)`; 0 = off): before the size filter, instances
of the same majority class that touch, i.e. hold at least `JOIN_MIN_CONTACTS` pairs of footprint cells (cells of
edge d / 2, represented by their centres) within d of each other, become one (the connected components of those
pairs; the smallest id of a component survives). Sparse single frames leave a wall or a floor in many pieces
(BlockMerging joins pieces through shared points only); joined, the object is one instance and its pieces no
longer count as false positives. Tuned per sensor kind with the size filter.

**Size filters** (`SizeFilter`, `SIZE_FILTERS`), applied by `SceneSegmenter._finalise_instances` after the absolute
floor `min_instance_points`:

* ``points`` (ASIS's, the filter before issue 23): an instance is dropped when it holds fewer points than
  `class_min_points` of its majority class (a fraction x the training set's mean instance size in points). Point
  counts fall with range (a lidar's density drops ~100x between 2 m and 20 m) and differ between sensors, so on
  robot frames this filter drops most far objects.
* ``area`` (metric): the instance's **occupied area**, the number of distinct voxels of edge `voxel` (0.1 m by
  default) its points fill times voxel^2, must reach `class_min_area` of its majority class (a fraction x the
  training set's mean occupied area of that class, computed the same way: `class_mean_instance_area`). A surface
  seen by a sparse far lidar fills the same voxels as one seen up close, as long as its points are no farther apart
  than about a voxel (an OS-1-64 at 12 m: 0.11 m between rings, 0.07 m along a ring), so the filter keeps an object
  alike near and far. The fraction is tuned per sensor kind (`mpnet-eval --tune`; a single lidar frame sees one side
  of an object, a whole static room all of it).
* ``off``: only `min_instance_points`.

**Oriented boxes** (`oriented_boxes`): the yaw about the up axis (+z of the frame segmented: the gravity frame when
the cloud was levelled first) is the angle of the minimum-area rectangle around the instance's xy footprint, its
points gathered into `footprint_cell` cells (a uniform footprint whatever the density) for an exhaustive sweep of
candidate angles every 2 deg over 90 deg, then the points themselves for a sweep every 0.2 deg around the best,
all instances at once. The box's x axis is its longer horizontal side; yaw is in [-90, 90) deg (a box is symmetric
under a half turn); the extent is the points' extent along the box axes, z from their lowest to highest point.

**Confidence** (`instance_confidence`): the mean probability of the instance's class over its points, where a
point whose own arg-max is another class counts 0 (the per-point outputs keep only the arg-max probability). It is
in [0, 1]: 1 = every point is sure of the instance's class; it falls with disagreement among the points and with
their uncertainty. docs/instances.md shows precision against it per sensor kind.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from mpnet_model.infer import device_ops

SIZE_FILTERS = ('points', 'area', 'off')
DEFAULT_AREA_VOXEL = 0.1            # [m] voxel edge of the occupied-area size measure
DEFAULT_FOOTPRINT_CELL = 0.05       # [m] footprint cells of the oriented-box estimate
COARSE_STEP_DEG = 2.0               # oriented boxes: candidate angles every 2 deg over [0, 90) ...
FINE_STEP_DEG = 0.2                 # ... then every 0.2 deg within +-2 deg of the best
SENSOR_KINDS = ('lidar', 'rgbd', 'static')   # what the size filter's fraction is tuned for
_KEY_LIMIT = 1 << 62
_CELL_BITS = 13                     # sync-free distinct cells: per instance and axis, at most 8192 cells
JOIN_MIN_CONTACTS = 3               # fragment join: cell pairs within the distance needed to join two instances


def per_class_values(values, name: str, num_classes: int) -> np.ndarray | None:
    """`values` as a (C,) float64 array (None stays None); ValueError naming `name` when it has another length."""
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape[0] != num_classes:
        raise ValueError(f'{name} has {array.shape[0]} entries for {num_classes} classes')
    return array


def majority_class(index: torch.Tensor, labels: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """(K,) majority label of each instance from points' instance `index` (M,) in [0, K) and `labels` (M,); ties ->
    the smaller class id."""
    votes = torch.zeros(count * num_classes, dtype=torch.int64, device=index.device)
    votes.index_add_(0, index * num_classes + labels, torch.ones_like(index))
    return votes.reshape(count, num_classes).argmax(1)


def _distinct_cells(cells: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct (instance, cell) pairs of integer `cells` (M, D) with instance `index` (M,) -> (instance (U,),
    cells (U, D)) sorted by instance."""
    low = cells.min(0).values
    cells = cells - low
    spans = (cells.max(0).values + 1).tolist()
    volume = math.prod(spans)
    if count * volume < _KEY_LIMIT:            # one int64 key per pair: a 1-D unique
        key = index.clone()
        for axis, span in enumerate(spans):
            key = key * span + cells[:, axis]
        unique = torch.unique(key)
        out = []
        for span in reversed(spans):
            out.append(unique % span)
            unique = unique // span
        return unique, torch.stack(out[::-1], 1) + low
    rows = torch.unique(torch.cat([index[:, None], cells], 1), dim=0)   # a huge extent: row-wise unique
    return rows[:, 0], rows[:, 1:] + low


def occupied_area(xyz: torch.Tensor, index: torch.Tensor, count: int, voxel: float = DEFAULT_AREA_VOXEL
                  ) -> torch.Tensor:
    """(K,) occupied area [m^2] of each instance: distinct voxels of edge `voxel` holding its points x voxel^2.
    xyz (M,3) and index (M,) in [0, K) are the instances' points."""
    if count == 0 or index.numel() == 0:
        return torch.zeros(count, dtype=torch.float64, device=xyz.device)
    cells = torch.floor(xyz.double() / voxel).long()
    if device_ops._cpu_strategy(xyz.device):
        instance, _ = _distinct_cells(cells, index.long(), count)
        return torch.bincount(instance, minlength=count).double() * voxel * voxel
    return _distinct_cell_counts(cells, index.long(), count).double() * voxel * voxel


def _distinct_cell_counts(cells: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """(K,) number of distinct integer `cells` (M, D) of each instance `index` (M,) in [0, K), without a host
    read (the GPU's route; `_distinct_cells` on the CPU): cells relative to their instance's lowest, packed with
    the instance into one int64 key (`_CELL_BITS` per axis: an instance spans at most 8192 cells an axis, 819 m at
    0.1 m; beyond that the outer cells merge), sorted, and the first of each run counted."""
    dims = cells.shape[1]
    low = torch.full((count, dims), torch.iinfo(torch.int64).max, dtype=torch.int64, device=cells.device)
    low = low.scatter_reduce(0, index[:, None].expand(-1, dims), cells, 'amin')
    relative = (cells - low[index]).clamp_(0, (1 << _CELL_BITS) - 1)
    key = index.clone()
    for axis in range(dims):
        key = (key << _CELL_BITS) | relative[:, axis]
    key = torch.sort(key).values
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    return device_ops.counts(key >> (_CELL_BITS * dims), count, first.long())


def join_fragments(xyz: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor, distance: float,
                   num_classes: int, min_contacts: int = JOIN_MIN_CONTACTS) -> torch.Tensor:
    """(N,) instance ids with touching same-class instances joined (module docstring): xyz (N,3), instances (N,)
    (-1 none), labels (N,) per-point classes. The cell pairs are found by a k-d tree on the host (as the border
    join's, `merging.join_across_borders`); everything else stays on the device."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not distance > 0 or min_contacts < 1:
        raise ValueError(f'join_fragments: distance must be > 0 and min_contacts >= 1, got {distance!r}, '
                         f'{min_contacts!r}')
    members = torch.nonzero(instances >= 0).reshape(-1)
    if members.numel() < 2:
        return instances
    ids, inverse = torch.unique(instances[members], return_inverse=True)
    count = ids.numel()
    if count < 2:
        return instances
    classes = majority_class(inverse, labels[members].long(), count, num_classes)
    cell = distance / 2
    owner, cells = _distinct_cells(torch.floor(xyz[members].double() / cell).long(), inverse, count)
    centres = ((cells.double() + 0.5) * cell).cpu().numpy()
    pairs = cKDTree(centres).query_pairs(distance, output_type='ndarray')
    if len(pairs) == 0:
        return instances
    first, second = (owner[torch.from_numpy(pairs[:, axis].astype(np.int64)).to(owner.device)] for axis in (0, 1))
    keep = (first != second) & (classes[first] == classes[second])
    low, high = torch.minimum(first, second)[keep], torch.maximum(first, second)[keep]
    edges, contacts = torch.unique(low * count + high, return_counts=True)
    edges = edges[contacts >= min_contacts].cpu().numpy()
    if edges.size == 0:
        return instances
    graph = coo_matrix((np.ones(edges.size), (edges // count, edges % count)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1, count, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(count))
    new_index = torch.from_numpy(smallest[component]).to(ids.device)                   # (K,) index of the survivor
    out = instances.clone()
    out[members] = ids[new_index[inverse]].to(instances.dtype)
    return out


@dataclass(frozen=True)
class SizeFilter:
    """The per-class size filter (module docstring). `class_minimum` (C,): points (kind 'points') or m^2 (kind
    'area') per class; None = no per-class filter."""

    kind: str = 'points'
    class_minimum: np.ndarray | None = None
    voxel: float = DEFAULT_AREA_VOXEL

    def __post_init__(self):
        if self.kind not in SIZE_FILTERS:
            raise ValueError(f'size_filter={self.kind!r}: choose one of {SIZE_FILTERS}')
        if self.kind == 'area' and self.class_minimum is None:
            raise ValueError("size_filter='area' needs the per-class minimum areas (class_min_area): the model "
                             'records no area statistics (tune it with mpnet-eval --tune) or the fraction is 0')
        if not self.voxel > 0:
            raise ValueError(f'area voxel {self.voxel!r} must be > 0 m')

    @property
    def active(self) -> bool:
        return self.kind != 'off' and self.class_minimum is not None

    def keep(self, xyz: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor,
             num_classes: int) -> torch.Tensor:
        """(K,) bool: which instances pass. xyz (M,3), index (M,) in [0, K), labels (M,) of the instances' points;
        sizes (K,) their point counts."""
        count = sizes.numel()
        if not self.active or count == 0:
            return torch.ones(count, dtype=torch.bool, device=sizes.device)
        majority = majority_class(index, labels, count, num_classes)
        threshold = torch.as_tensor(self.class_minimum, dtype=torch.float64, device=sizes.device)[majority]
        if self.kind == 'points':
            return sizes >= threshold
        return occupied_area(xyz, index, count, self.voxel) >= threshold * (1 - 1e-9)

    def describe(self) -> str:
        if not self.active:
            return 'off (min_instance_points only)'
        if self.kind == 'points':
            return 'points (per-class minimum point counts)'
        return f'area (per-class minimum occupied area at {self.voxel:g} m voxels)'


def instance_options(metadata, size_filter: str | None = None, sensor_kind: str | None = None,
                        fraction: float | None = None) -> dict:
    """SceneSegmenter options of the instance post-processing a model brings (`ModelMetadata`): the fragment join
    and point floor tuned for `sensor_kind` (join 0 and the segmenter's floor when none), and the size filter
    chosen by `size_filter`:

    * 'auto' / None: 'area' when the model records area statistics and a fraction is known (`fraction`, else the one
      tuned for `sensor_kind`), otherwise 'points' (models made before issue 23: today's filter);
    * 'area': the metric filter (an error naming what is missing when the model cannot give it);
    * 'points': ASIS's point counts (`fraction`, else the model's `min_instance_fraction`);
    * 'off': `min_instance_points` only.
    A fraction of 0 switches the per-class filter off. Returns {size_filter, class_min_points, class_min_area,
    area_voxel, fragment_join[, min_instance_points]} (the kind's bandwidth: `ModelMetadata.bandwidth_for`)."""
    choice = 'auto' if size_filter is None else size_filter
    if choice not in ('auto', *SIZE_FILTERS):
        raise ValueError(f"size_filter={size_filter!r}: choose 'auto' or one of {SIZE_FILTERS}")
    if sensor_kind is not None and sensor_kind not in SENSOR_KINDS:
        raise ValueError(f'sensor_kind={sensor_kind!r}: choose one of {SENSOR_KINDS}')
    area_fraction = fraction if fraction is not None else metadata.area_fraction(sensor_kind)
    if choice == 'auto':
        choice = 'area' if metadata.class_mean_instance_area and area_fraction is not None else 'points'
    options = {'size_filter': choice, 'class_min_points': None, 'class_min_area': None,
               'area_voxel': float(metadata.instance_area_voxel),
               'fragment_join': float(metadata.fragment_join.get(sensor_kind, 0.0)) if sensor_kind else 0.0}
    if choice == 'area':
        if not metadata.class_mean_instance_area:
            raise ValueError("size_filter='area': the model records no class mean instance areas (made before issue "
                             "23); add them with mpnet-eval --tune, or use size_filter 'points'")
        if area_fraction is None:
            raise ValueError(f"size_filter='area': the model has no area fraction tuned for sensor_kind "
                             f"{sensor_kind!r} (tuned: {sorted(metadata.min_instance_area_fraction) or 'none'}); "
                             'give min_instance_fraction, or tune it with mpnet-eval --tune on that kind')
        options['class_min_area'] = metadata.class_min_area(area_fraction)
    elif choice == 'points':
        points_fraction = metadata.min_instance_fraction if fraction is None else fraction
        if points_fraction > 0 and metadata.class_mean_instance_points:
            options['class_min_points'] = points_fraction * np.asarray(metadata.class_mean_instance_points,
                                                                      dtype=np.float64)
    if options['class_min_points'] is None and options['class_min_area'] is None:
        options['size_filter'] = 'off' if choice != 'points' else 'points'
    if sensor_kind in metadata.instance_min_points:
        options['min_instance_points'] = int(metadata.instance_min_points[sensor_kind])
    return options


def instance_confidence(index: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                        count: int) -> torch.Tensor:
    """(K,) mean probability of each instance's class `classes` (K,) over its points (module docstring): points
    (M,) with instance `index`, arg-max `labels` and its probability `scores`."""
    if count == 0:
        return torch.zeros(0, dtype=torch.float64, device=index.device)
    agree = labels == classes[index]
    total = torch.zeros(count, dtype=torch.float64, device=index.device)
    total.index_add_(0, index, torch.where(agree, scores.double(), 0.0))
    return total / device_ops.counts(index, count).clamp(min=1).double()


def _ranges(u: torch.Tensor, v: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """Per instance and angle, the (K, A) area of the rectangle spanned by projections u, v (M, A)."""
    columns = u.shape[1]
    expanded = index[:, None].expand(-1, columns)
    out = []
    for values in (u, v):
        high = torch.full((count, columns), -torch.inf, dtype=values.dtype, device=values.device)
        low = torch.full((count, columns), torch.inf, dtype=values.dtype, device=values.device)
        out.append(high.scatter_reduce(0, expanded, values, 'amax') - low.scatter_reduce(0, expanded, values, 'amin'))
    return out[0] * out[1]


def _project(x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return x * cos + y * sin, -x * sin + y * cos


def _centred_xy(xy: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (M,1), y (M,1)) relative to each instance's mean (numerically safe far from the origin)."""
    mean = torch.zeros(count, 2, dtype=torch.float64, device=xy.device).index_add_(0, index, xy)
    mean /= device_ops.counts(index, count).clamp(min=1)[:, None]
    local = xy - mean[index]
    return local[:, :1], local[:, 1:]


def footprint_yaw(xyz: torch.Tensor, index: torch.Tensor, count: int, cell: float = DEFAULT_FOOTPRINT_CELL
                  ) -> torch.Tensor:
    """(K,) angle in [0, pi/2) of the minimum-area rectangle around each instance's xy footprint (module
    docstring; which side is longer is decided by `oriented_boxes`): the coarse sweep on footprint cells, the
    fine one on the points."""
    if count == 0:
        return torch.zeros(0, dtype=torch.float64, device=xyz.device)
    cells = torch.floor(xyz[:, :2].double() / cell).long()
    if device_ops._cpu_strategy(xyz.device):       # the coarse sweep on each footprint cell once
        instance, cells = _distinct_cells(cells, index.long(), count)
    else:                                           # GPU: on every point's cell (repeats change no extreme; no sync)
        instance = index.long()
    x, y = _centred_xy((cells.double() + 0.5) * cell, instance, count)
    coarse = torch.arange(0.0, 90.0, COARSE_STEP_DEG, dtype=torch.float64, device=xyz.device).deg2rad()   # (A,)
    best = coarse[_ranges(*_project(x, y, coarse[None, :]), instance, count).argmin(1)]                 # (K,)
    offsets = torch.arange(-COARSE_STEP_DEG, COARSE_STEP_DEG + FINE_STEP_DEG / 2, FINE_STEP_DEG,
                           dtype=torch.float64, device=xyz.device).deg2rad()
    fine = best[:, None] + offsets[None, :]                                                          # (K, F)
    x, y = _centred_xy(xyz[:, :2].double(), index.long(), count)
    chosen = fine.gather(1, _ranges(*_project(x, y, fine[index]), index, count).argmin(1)[:, None])[:, 0]
    return torch.remainder(chosen, math.pi / 2)


def oriented_boxes(xyz: torch.Tensor, index: torch.Tensor, count: int, cell: float = DEFAULT_FOOTPRINT_CELL
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Oriented boxes of K instances from their points xyz (M,3) with instance `index` (M,) in [0, K): centre (K,3),
    extent (K,3) along the box axes (x = the longer horizontal side), yaw (K,) [rad] in [-pi/2, pi/2) about +z."""
    device = xyz.device
    if count == 0:
        empty = torch.zeros(0, 3, dtype=torch.float64, device=device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float64, device=device)
    index = index.long()
    points = xyz.double()
    angle = footprint_yaw(points, index, count, cell)                                   # (K,) in [0, pi/2)
    u, v = _project(points[:, 0], points[:, 1], angle[index])
    columns = torch.stack([u, v, points[:, 2]], 1)                                      # (M, 3)
    expanded = index[:, None].expand(-1, 3)
    high = torch.full((count, 3), -torch.inf, dtype=torch.float64, device=device).scatter_reduce(
        0, expanded, columns, 'amax')
    low = torch.full((count, 3), torch.inf, dtype=torch.float64, device=device).scatter_reduce(
        0, expanded, columns, 'amin')
    extent, middle = high - low, (high + low) / 2
    cos, sin = torch.cos(angle), torch.sin(angle)          # the rectangle's centre from its (u, v) axes to x, y
    centre = torch.stack([middle[:, 0] * cos - middle[:, 1] * sin, middle[:, 0] * sin + middle[:, 1] * cos,
                          middle[:, 2]], 1)
    turn = extent[:, 1] > extent[:, 0]                      # the longer side becomes the box's x axis
    extent[:, :2] = torch.where(turn[:, None], extent[:, [1, 0]], extent[:, :2])
    yaw = torch.where(turn, angle + math.pi / 2, angle)
    return centre, extent, torch.remainder(yaw + math.pi / 2, math.pi) - math.pi / 2


def instance_summaries(cloud: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                       classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per kept instance (ids 0..K-1 in `instances` (N,), -1 none; `classes` (K,) their majority class) of a cloud
    (N,3) with per-point arg-max `labels` and `scores`: oriented box centre (K,3), extent (K,3), yaw (K,) and
    confidence (K,) (module docstring)."""
    count = int(classes.numel())
    if device_ops._cpu_strategy(cloud.device):
        members = torch.nonzero(instances >= 0).reshape(-1)
        index = instances[members].long()
        centre, extent, yaw = oriented_boxes(cloud[members], index, count)
        confidence = instance_confidence(index, labels[members].long(), scores[members], classes.long(), count)
        return centre, extent, yaw, confidence
    # GPU, without the nonzero's sync: the points of no instance go to one more instance, dropped after
    index = torch.where(instances >= 0, instances, count).long()
    centre, extent, yaw = oriented_boxes(cloud, index, count + 1)
    classes = torch.cat([classes.long(), classes.new_zeros(1).long()])
    confidence = instance_confidence(index, labels.long(), scores, classes, count + 1)
    return centre[:count], extent[:count], yaw[:count], confidence[:count]


def yaw_quaternion(yaw: float) -> np.ndarray:
    """(4,) quaternion x, y, z, w of a rotation by `yaw` about +z."""
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def rotation_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(4,) quaternion x, y, z, w (w >= 0) of a (3,3) rotation matrix (scipy's conversion)."""
    from scipy.spatial.transform import Rotation

    quaternion = Rotation.from_matrix(np.asarray(rotation, np.float64)).as_quat()
    return quaternion if quaternion[3] >= 0 else -quaternion


def yaw_error_deg(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|predicted - truth| in degrees modulo a half turn (a box is symmetric under it), in [0, 90]."""
    difference = np.remainder(np.degrees(np.asarray(predicted) - np.asarray(truth)), 180.0)
    return np.minimum(difference, 180.0 - difference)


# --- the same on numpy results (tuning, statistics) ---------------------------------------------------------------

def instance_areas_np(xyz: np.ndarray, instances: np.ndarray, voxel: float = DEFAULT_AREA_VOXEL
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(ids (K,), occupied area (K,) [m^2]) of the instances (N,) (-1 = none) of a cloud xyz (N,3)."""
    instances = np.asarray(instances)
    valid = instances >= 0
    ids, inverse = np.unique(instances[valid], return_inverse=True)
    area = occupied_area(torch.from_numpy(np.ascontiguousarray(xyz[valid], dtype=np.float64)),
                         torch.from_numpy(inverse.astype(np.int64)), ids.size, voxel)
    return ids, area.numpy()


def instance_table(xyz: np.ndarray, instances: np.ndarray, labels: np.ndarray, num_classes: int,
                   voxel: float = DEFAULT_AREA_VOXEL) -> dict[str, np.ndarray]:
    """Per instance of a segmented cloud (N,): ids (K,), the index of each point's instance `inverse` (N,) (-1 none),
    point counts, majority class and occupied area (K,) [m^2] at `voxel` (what the size filters compare)."""
    instances = np.asarray(instances)
    valid = np.flatnonzero(instances >= 0)
    ids, inverse = np.unique(instances[valid], return_inverse=True)
    point_index = np.full(instances.shape, -1, dtype=np.int64)
    point_index[valid] = inverse
    index = torch.from_numpy(inverse.astype(np.int64))
    classes = majority_class(index, torch.from_numpy(np.asarray(labels)[valid].astype(np.int64)), ids.size,
                             num_classes)
    area = occupied_area(torch.from_numpy(np.ascontiguousarray(xyz[valid], dtype=np.float64)), index, ids.size, voxel)
    return {'ids': ids, 'inverse': point_index, 'points': np.bincount(inverse, minlength=ids.size),
            'classes': classes.numpy(), 'area': area.numpy()}


def apply_area_filter(xyz: np.ndarray, instances: np.ndarray, labels: np.ndarray, class_min_area: np.ndarray | None,
                      voxel: float = DEFAULT_AREA_VOXEL) -> np.ndarray:
    """Instances (N,) with those under `class_min_area` of their majority class set to -1 (ids kept): the rule of
    `SizeFilter('area')` on a segmented cloud (N,) (what `mpnet_model.eval.tune` scores)."""
    instances = np.asarray(instances)
    if class_min_area is None or not (instances >= 0).any():
        return instances
    valid = np.flatnonzero(instances >= 0)
    ids, inverse = np.unique(instances[valid], return_inverse=True)
    size_filter = SizeFilter('area', np.asarray(class_min_area, np.float64), voxel)
    keep = size_filter.keep(torch.from_numpy(np.ascontiguousarray(xyz[valid], dtype=np.float64)),
                            torch.from_numpy(inverse.astype(np.int64)),
                            torch.from_numpy(np.asarray(labels)[valid].astype(np.int64)),
                            torch.from_numpy(np.bincount(inverse, minlength=ids.size)), len(class_min_area))
    out = instances.copy()
    out[valid[~keep.numpy()[inverse]]] = -1
    return out


def class_mean_instance_area(clouds: Iterable, num_classes: int, voxel: float = DEFAULT_AREA_VOXEL,
                             progress: bool = False) -> np.ndarray:
    """(C,) mean occupied area [m^2] of a ground-truth instance of each class (0 where the class has none) over
    `clouds` (Rooms: xyz, sem, ins; each cloud's instances counted once per cloud: a frame's partial view is an
    instance of that frame). The area counterpart of `BlockDataset.class_mean_instance_points`."""
    from tqdm import tqdm

    sums, counts = np.zeros(num_classes), np.zeros(num_classes)
    for room in tqdm(clouds, desc='class instance areas', unit='cloud', disable=not progress):
        valid = (room.ins >= 0) & (room.sem >= 0) & (room.sem < num_classes)
        if not valid.any():
            continue
        ids, inverse = np.unique(room.ins[valid], return_inverse=True)
        majority = majority_class(torch.from_numpy(inverse.astype(np.int64)),
                                  torch.from_numpy(room.sem[valid].astype(np.int64)), ids.size, num_classes).numpy()
        _, area = instance_areas_np(room.xyz[valid], inverse, voxel)
        np.add.at(sums, majority, area)
        np.add.at(counts, majority, 1)
    return np.divide(sums, counts, out=np.zeros(num_classes), where=counts > 0)
