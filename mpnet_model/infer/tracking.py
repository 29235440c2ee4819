"""Persistent instance ids across frames (ROS-free), used by the shared pipeline (node, `mpnet-bag`).

The segmenter numbers a frame's instances 0..K-1, largest first, so the same chair can be #3 in one frame and #1 in
the next. `InstanceTracker` keeps tracks (class, axis-aligned box, misses) and associates each frame's instances
with them by optimal assignment (`scipy.optimize.linear_sum_assignment`):

* only instances and tracks of the same class may match;
* a pair is allowed when its 3-D box overlap (IoU) is at least `min_iou` or its centres are within `max_distance`;
  cost = (1 - IoU) + distance / max_distance, so overlap decides first and distance breaks ties;
* an unmatched instance starts a new track with a fresh id (ids only grow, never reused);
* a track unmatched for more than `max_misses` frames retires; until then it can be matched again (an object
  hidden for a frame keeps its id).

Nothing here needs ROS; the ids it returns are what `~/labeled_cloud` and the markers carry.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e6


@dataclass
class Track:
    id: int
    class_id: int
    centre: np.ndarray     # (3,)
    extent: np.ndarray     # (3,)
    hits: int = 1
    misses: int = 0


def box_iou(centres_a: np.ndarray, extents_a: np.ndarray, centres_b: np.ndarray, extents_b: np.ndarray
            ) -> np.ndarray:
    """(A, B) IoU of axis-aligned 3-D boxes given as centres (., 3) and sizes (., 3)."""
    low_a, high_a = centres_a - extents_a / 2, centres_a + extents_a / 2
    low_b, high_b = centres_b - extents_b / 2, centres_b + extents_b / 2
    overlap = np.clip(np.minimum(high_a[:, None], high_b[None]) - np.maximum(low_a[:, None], low_b[None]), 0, None)
    intersection = overlap.prod(axis=-1)
    volume_a, volume_b = extents_a.prod(axis=-1), extents_b.prod(axis=-1)
    union = volume_a[:, None] + volume_b[None] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


class InstanceTracker:
    """Gives each frame's instances the ids of the tracks they continue (see the module docstring)."""

    def __init__(self, max_distance: float = 1.0, min_iou: float = 0.1, max_misses: int = 5,
                 min_extent: float = 0.05):
        if not max_distance > 0 or not 0 <= min_iou <= 1 or max_misses < 0:
            raise ValueError(f'max_distance={max_distance} must be > 0, min_iou={min_iou} in [0, 1], '
                             f'max_misses={max_misses} >= 0')
        self.max_distance, self.min_iou, self.max_misses = float(max_distance), float(min_iou), int(max_misses)
        self.min_extent = float(min_extent)     # flat boxes (a wall seen edge-on) still have a volume
        self.tracks: list[Track] = []
        self.next_id = 0

    def reset(self) -> None:
        self.tracks.clear()

    def _boxes(self, infos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = np.array([np.asarray(i.centre, dtype=np.float64) for i in infos]).reshape(-1, 3)
        extents = np.array([np.asarray(i.extent, dtype=np.float64) for i in infos]).reshape(-1, 3)
        classes = np.array([int(i.class_id) for i in infos], dtype=np.int64)
        return centres, np.maximum(extents, self.min_extent), classes

    def cost_matrix(self, infos) -> np.ndarray:
        """(tracks, instances) association costs; _FORBIDDEN where class differs or neither gate holds."""
        centres, extents, classes = self._boxes(infos)
        track_centres = np.array([t.centre for t in self.tracks]).reshape(-1, 3)
        track_extents = np.array([t.extent for t in self.tracks]).reshape(-1, 3)
        track_classes = np.array([t.class_id for t in self.tracks], dtype=np.int64)
        iou = box_iou(track_centres, track_extents, centres, extents)
        distance = np.linalg.norm(track_centres[:, None] - centres[None], axis=-1)
        allowed = (track_classes[:, None] == classes[None]) & ((iou >= self.min_iou) & (iou > 0)
                                                               | (distance <= self.max_distance))
        cost = (1.0 - iou) + distance / self.max_distance
        return np.where(allowed, cost, _FORBIDDEN)

    def update(self, infos) -> np.ndarray:
        """Persistent ids (K,) int64 for this frame's instances `infos` (each with class_id, centre, extent)."""
        infos = list(infos)
        ids = np.full(len(infos), -1, dtype=np.int64)
        matched_tracks: set[int] = set()
        if infos and self.tracks:
            cost = self.cost_matrix(infos)
            rows, cols = linear_sum_assignment(cost)
            for row, col in zip(rows, cols):
                if cost[row, col] >= _FORBIDDEN:
                    continue
                track = self.tracks[row]
                ids[col] = track.id
                centre, extent, _ = self._boxes([infos[col]])
                track.centre, track.extent = centre[0], extent[0]
                track.hits += 1
                track.misses = 0
                matched_tracks.add(row)
        survivors = []
        for row, track in enumerate(self.tracks):
            if row not in matched_tracks:
                track.misses += 1
                if track.misses > self.max_misses:
                    continue
            survivors.append(track)
        self.tracks = survivors
        centres, extents, classes = self._boxes(infos) if infos else (None, None, None)
        for col in np.flatnonzero(ids < 0):
            ids[col] = self.next_id
            self.tracks.append(Track(self.next_id, int(classes[col]), centres[col], extents[col]))
            self.next_id += 1
        return ids


def relabel(instances: np.ndarray, infos: list, ids: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-point instance ids (the frame's own, -1 none) and their infos renamed to the persistent `ids`
    (`ids[k]` for `infos[k]`, whose `id` is the frame's own id)."""
    instances = np.asarray(instances)
    out = np.full(instances.shape, -1, dtype=np.int64)
    if infos:
        local = np.array([int(info.id) for info in infos], dtype=np.int64)
        lookup = np.full(int(max(local.max(), instances.max(initial=-1))) + 1, -1, dtype=np.int64)
        lookup[local] = ids
        valid = instances >= 0
        out[valid] = lookup[instances[valid]]
    return out, [replace(info, id=int(new_id)) for info, new_id in zip(infos, ids)]
