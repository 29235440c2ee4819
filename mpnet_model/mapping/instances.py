"""Instance ids on the map: a segmentation run's instances take the ids of the map instances they continue.

Within the run's region (the voxels of the blocks just segmented), a run instance and a map instance overlap by
the voxels they share; pairs are assigned one-to-one by maximum voxel IoU (`scipy.optimize.linear_sum_assignment`)
and kept when the IoU is at least `min_iou`. Unmatched run instances get new ids (ids only grow). IoU is measured
inside the region only, so an object that reaches beyond the region keeps its id. Voxels outside the region keep
their ids: tracking happens on the map, not per window.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_MIN_IOU = 0.25


def associate(run_ids: np.ndarray, map_ids: np.ndarray, next_id: int, min_iou: float = DEFAULT_MIN_IOU
              ) -> tuple[np.ndarray, int]:
    """run_ids (V,) the run's instance of each region voxel (-1 none), map_ids (V,) their map instance now (-1
    none) -> (new map ids (V,) int32, the next free id)."""
    run_ids, map_ids = np.asarray(run_ids, np.int64), np.asarray(map_ids, np.int64)
    out = np.full(run_ids.shape, -1, dtype=np.int32)
    members = run_ids >= 0
    if not members.any():
        return out, int(next_id)
    local, local_index = np.unique(run_ids[members], return_inverse=True)
    assigned = np.full(len(local), -1, dtype=np.int64)
    known = map_ids >= 0
    if known.any():
        previous, previous_index = np.unique(map_ids[known], return_inverse=True)
        both = members & known
        local_of = np.full(run_ids.shape, -1, np.int64)
        local_of[members] = local_index
        previous_of = np.full(run_ids.shape, -1, np.int64)
        previous_of[known] = previous_index
        overlap = np.bincount(local_of[both] * len(previous) + previous_of[both],
                              minlength=len(local) * len(previous)).reshape(len(local), len(previous))
        sizes_local = np.bincount(local_index, minlength=len(local))
        sizes_previous = np.bincount(previous_index, minlength=len(previous))
        iou = overlap / np.maximum(sizes_local[:, None] + sizes_previous[None] - overlap, 1)
        rows, cols = linear_sum_assignment(-iou)
        good = iou[rows, cols] >= min_iou
        assigned[rows[good]] = previous[cols[good]]
    fresh = assigned < 0
    assigned[fresh] = next_id + np.arange(int(fresh.sum()))
    out[members] = assigned[local_index]
    return out, int(next_id + fresh.sum())
