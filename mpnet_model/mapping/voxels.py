"""The voxels of the semantic map (ROS-free, numpy): what each holds and how a frame changes them.

Per voxel (edge `voxel_size`, in the fixed frame): the centroid and mean colour of the points that fell in it, the
number of points (hits), the occupancy log-odds, the fused class probabilities and their observation count
(`fusion.py`), the map instance id and the last frame that saw it. Memory: `bytes_per_voxel` (about 100 bytes
with 13 classes), so `max_voxels` bounds the map's arrays (see `SemanticMapper`).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import minimum_filter

from mpnet_model.mapping.fusion import L_HIT, L_MISS, L_REMOVE, update_occupancy
from mpnet_model.mapping.table import KeyTable, pack_cells, pack_voxels, unpack_voxels

HIT_WEIGHT_CAP = 1000              # the centroid / colour means weigh old points at most this much
CLEAR_ANGLE = np.radians(0.5)      # angular bins of the free-space test
CLEAR_MIN_RANGE = 0.5              # [m] voxels nearer the sensor are never cleared (its own body, min range)
CLEAR_MARGIN = 0.2                 # [m] a voxel must lie this far (plus 2 % of its range) in front of every return


class VoxelMap:
    """Voxels in a `KeyTable` keyed by packed voxel indices; `tile` is the (stride x stride) cell of the block grid
    the voxel centre lies in (set at insertion)."""

    def __init__(self, voxel_size: float, num_classes: int, tile_size: float):
        if not voxel_size > 0 or not tile_size > 0 or num_classes < 1:
            raise ValueError(f'voxel_size={voxel_size}, tile_size={tile_size} must be > 0, num_classes >= 1')
        self.voxel_size, self.num_classes, self.tile_size = float(voxel_size), int(num_classes), float(tile_size)
        self.table = KeyTable({'centroid': ((3,), np.float32, 0.0), 'colour': ((3,), np.float32, 0.0),
                               'hits': ((), np.uint32, 0), 'occupancy': ((), np.float32, 0.0),
                               'probs': ((num_classes,), np.float32, 0.0), 'observations': ((), np.uint16, 0),
                               'instance': ((), np.int32, -1), 'last_seen': ((), np.int32, 0),
                               'tile': ((), np.int64, 0)})

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.table[name]

    def bytes_per_voxel(self) -> int:
        return 8 + sum(int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
                       for tail, dtype, _ in self.table.spec.values())

    def keys_of(self, xyz: np.ndarray) -> np.ndarray:
        return pack_voxels(np.floor(np.asarray(xyz, dtype=np.float64) / self.voxel_size).astype(np.int64))

    def centres(self, keys: np.ndarray) -> np.ndarray:
        """(K, 3) float64 centres of the voxels `keys`."""
        return (unpack_voxels(keys) + 0.5) * self.voxel_size

    def tiles_of_keys(self, keys: np.ndarray) -> np.ndarray:
        return pack_cells(np.floor(self.centres(keys)[:, :2] / self.tile_size).astype(np.int64))

    def find(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) of the voxels of points xyz (N, 3)."""
        return self.table.find(self.keys_of(xyz))

    # --- a frame ---------------------------------------------------------------------------------------------

    def integrate(self, xyz: np.ndarray, colours: np.ndarray, frame: int) -> np.ndarray:
        """Add a frame's points (N, 3) with colour channels (N, 3): each voxel they hit gets one occupancy hit and
        its centroid / colour means updated; new voxels are created. Returns the keys of the new voxels."""
        if not len(xyz):
            return np.zeros(0, np.int64)
        keys, inverse, counts = np.unique(self.keys_of(xyz), return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        sums = np.stack([np.bincount(inverse, weights=xyz[:, a], minlength=len(keys)) for a in range(3)], 1)
        colour_sums = np.stack([np.bincount(inverse, weights=colours[:, a], minlength=len(keys))
                                for a in range(3)], 1)
        _, found = self.table.find(keys)
        new_keys = keys[~found]
        self.table.insert(new_keys)
        rows, _ = self.table.find(keys)
        t = self.table
        if len(new_keys):
            t['tile'][rows[~found]] = self.tiles_of_keys(new_keys)
        old = np.minimum(t['hits'][rows], HIT_WEIGHT_CAP).astype(np.float64)[:, None]
        total = old + counts[:, None]
        t['centroid'][rows] = ((t['centroid'][rows] * old + sums) / total).astype(np.float32)
        t['colour'][rows] = ((t['colour'][rows] * old + colour_sums) / total).astype(np.float32)
        t['hits'][rows] = np.minimum(t['hits'][rows].astype(np.int64) + counts, np.iinfo(np.uint32).max)
        t['occupancy'][rows] = update_occupancy(t['occupancy'][rows], L_HIT)
        t['last_seen'][rows] = frame
        return new_keys

    def clear_seen_through(self, origin: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Free-space test of a frame seen from `origin` (3,): a voxel lies on a ray's way to its return when it is
        nearer than every return of its angular bin and of the 8 bins around it (minus a margin; bins without a
        return count as unknown, i.e. never clear). Such voxels get an occupancy miss; those whose log-odds fall
        to L_REMOVE are removed. The 3 x 3 minimum keeps grazing surfaces (a floor far away, whose neighbouring
        bin holds nearer floor) and silhouette edges from being cleared. Returns the keys of removed voxels."""
        if not len(self) or not len(xyz):
            return np.zeros(0, np.int64)
        origin = np.asarray(origin, dtype=np.float64)
        width, height = int(np.ceil(2 * np.pi / CLEAR_ANGLE)), int(np.ceil(np.pi / CLEAR_ANGLE))
        pixel, ranges = _spherical_pixels(np.asarray(xyz, np.float64) - origin, width, height)
        image = np.full(width * height, np.inf)
        np.minimum.at(image, pixel, ranges)
        image[np.isinf(image)] = 0.0                                        # no return: unknown
        nearest = minimum_filter(image.reshape(height, width), size=3, mode='nearest').reshape(-1)
        reach = float(ranges.max())
        centroids = self.table['centroid']
        offsets = centroids.astype(np.float64) - origin
        candidates = np.flatnonzero(np.einsum('ij,ij->i', offsets, offsets) <= reach * reach)
        if not len(candidates):
            return np.zeros(0, np.int64)
        voxel_pixel, voxel_range = _spherical_pixels(offsets[candidates], width, height)
        free = (voxel_range > CLEAR_MIN_RANGE) & (voxel_range < nearest[voxel_pixel] - CLEAR_MARGIN
                                                  - 0.02 * voxel_range)
        rows = candidates[free]
        if not len(rows):
            return np.zeros(0, np.int64)
        occupancy = self.table['occupancy']
        occupancy[rows] = update_occupancy(occupancy[rows], L_MISS)
        gone = np.zeros(len(self), dtype=bool)
        gone[rows[occupancy[rows] <= L_REMOVE]] = True
        keys = self.table.keys[gone]
        self.table.drop(gone)
        return keys

    def evict(self, origin: np.ndarray, radius: float, max_voxels: int, frame: int) -> np.ndarray:
        """Keep the region around the sensor: drop voxels farther than `radius` (horizontally) from `origin`, then
        the oldest (least recently seen; the farthest first among equals) beyond `max_voxels`, never the voxels of
        the current `frame`. Returns the keys of the evicted voxels."""
        if not len(self):
            return np.zeros(0, np.int64)
        offsets = self.table['centroid'][:, :2].astype(np.float64) - np.asarray(origin, np.float64)[:2]
        distance = np.hypot(offsets[:, 0], offsets[:, 1])
        gone = distance > radius
        excess = len(self) - int(gone.sum()) - int(max_voxels)
        if excess > 0:
            last_seen = self.table['last_seen']
            order = np.lexsort((-distance, last_seen))                     # oldest first, then farthest
            order = order[~gone[order] & (last_seen[order] != frame)]
            gone[order[:excess]] = True
        keys = self.table.keys[gone]
        self.table.drop(gone)
        return keys


def _spherical_pixels(offsets: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel (N,) of an equirectangular image in fixed-frame azimuth / elevation, range (N,)) of offsets (N, 3)
    from the sensor. Fixed-frame angles need no sensor rotation and keep level lidars and cameras away from the
    image's poles."""
    horizontal = np.hypot(offsets[:, 0], offsets[:, 1])
    ranges = np.hypot(horizontal, offsets[:, 2])
    column = np.floor((np.arctan2(offsets[:, 1], offsets[:, 0]) + np.pi) / CLEAR_ANGLE).astype(np.int64) % width
    row = np.clip(np.floor((np.arctan2(offsets[:, 2], horizontal) + np.pi / 2) / CLEAR_ANGLE).astype(np.int64),
                  0, height - 1)
    return row * width + column, ranges
