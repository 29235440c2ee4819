"""Does a point's class belong to the scene, or to where the other points of the cloud lie? (issue 22)

Three measurements on any frame path given as `labels_of(xyz (N,3), colour) -> labels (N,)` (colour: what the
path needs besides xyz, passed through and indexed with the points):

* `stray_point_change`: one point added (below the ground, above the sensor, far away): the share of the OTHER
  points whose class changes;
* `range_crop_agreement`: the same scan cropped at several ranges: for the points within `inner` metres, the share
  keeping the class they have in the `inner` crop, and the share of the ground within `inner` called floor;
* `nn_label_agreement`: consecutive scans: the share of points of one scan whose nearest neighbour in the other
  (within `max_distance`) carries the same class.

The ground of a real scan is found without the model and without the floor estimator the frame path uses: the
dominant plane of the points within `inner` metres below the sensor, fitted with scikit-learn's RANSAC
(`ground_mask`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LabelsOf = Callable[[np.ndarray, Any], np.ndarray]
GROUND_TOLERANCE = 0.15       # m: a ground point lies within this of the RANSAC ground plane


def _take(colour: Any, index: np.ndarray) -> Any:
    if colour is None:
        return None
    if isinstance(colour, dict):
        return {key: None if value is None else np.asarray(value)[index] for key, value in colour.items()}
    return np.asarray(colour)[index]


def _append(colour: Any, count: int) -> Any:
    """The colour of `count` added points: the first point's (a stray return carries some colour)."""
    if colour is None:
        return None
    if isinstance(colour, dict):
        return {key: None if value is None else _append(value, count) for key, value in colour.items()}
    colour = np.asarray(colour)
    return np.concatenate([colour, np.repeat(colour[:1], count, axis=0)])


def horizontal_range(xyz: np.ndarray, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.linalg.norm(np.asarray(xyz, np.float64)[:, :2] - np.asarray(origin, np.float64)[:2], axis=1)


def stray_points(xyz: np.ndarray, max_coordinate: float = 1000.0) -> dict[str, np.ndarray]:
    """Stray returns for a z-up cloud with the sensor at the origin: 5 m below its lowest point, 15 m above the
    sensor, and far away (90 % of `max_coordinate` along x, at the sensor's height)."""
    low = float(np.min(xyz[:, 2]))
    centre = np.median(xyz[:, :2], axis=0)
    return {'below': np.array([centre[0], centre[1], low - 5.0]), 'above': np.array([0.0, 0.0, 15.0]),
            'far': np.array([0.9 * max_coordinate, 0.0, 0.0])}


def stray_point_change(labels_of: LabelsOf, xyz: np.ndarray, colour: Any, stray: np.ndarray,
                       base: np.ndarray | None = None) -> float:
    """Share of the cloud's points whose class changes when the point `stray` (3,) is appended."""
    base = labels_of(xyz, colour) if base is None else base
    with_stray = np.concatenate([xyz, np.asarray(stray, xyz.dtype).reshape(1, 3)])
    labels = labels_of(with_stray, _append(colour, 1))[:len(xyz)]
    return float(np.mean(labels != base))


def ground_mask(xyz: np.ndarray, inner: float = 8.0, seed: int = 0) -> np.ndarray:
    """(N,) bool: points within `inner` m (horizontal) on the dominant plane below the sensor (RANSAC, sklearn)."""
    from sklearn.linear_model import RANSACRegressor

    near = horizontal_range(xyz) < inner
    below = near & (xyz[:, 2] < -0.3)
    if below.sum() < 30:
        return np.zeros(len(xyz), bool)
    ransac = RANSACRegressor(residual_threshold=GROUND_TOLERANCE / 2, random_state=seed, max_trials=200)
    ransac.fit(xyz[below, :2], xyz[below, 2])
    residual = np.abs(ransac.predict(xyz[:, :2]) - xyz[:, 2])
    return near & (residual < GROUND_TOLERANCE)


def range_crop_agreement(labels_of: LabelsOf, xyz: np.ndarray, colour: Any, inner: float = 8.0,
                         crops: Sequence[float | None] = (8.0, 15.0, 30.0, None), floor_class: int | None = None,
                         ground: np.ndarray | None = None) -> list[dict]:
    """Per crop range (None = uncropped): {'crop', 'points', 'agreement' (of the points within `inner` with their
    class in the first crop), 'ground_floor' (share of `ground` called `floor_class`)}. Crops are spherical
    (the node's max_range); `inner` is measured the same way."""
    distance = np.linalg.norm(np.asarray(xyz, np.float64), axis=1)
    inside = np.flatnonzero(distance < inner)
    reference = None
    rows = []
    for crop in crops:
        keep = np.arange(len(xyz)) if crop is None else np.flatnonzero(distance < crop)
        labels = labels_of(xyz[keep], _take(colour, keep))
        full = np.full(len(xyz), -1, np.int64)
        full[keep] = labels
        inner_labels = full[inside]
        reference = inner_labels if reference is None else reference
        row = {'crop': crop, 'points': int(len(keep)), 'agreement': float(np.mean(inner_labels == reference))}
        if floor_class is not None and ground is not None and ground.any():
            row['ground_floor'] = float(np.mean(full[ground] == floor_class))
        rows.append(row)
    return rows


def nn_label_agreement(xyz_a: np.ndarray, labels_a: np.ndarray, xyz_b: np.ndarray, labels_b: np.ndarray,
                       max_distance: float = 0.1) -> tuple[float, float]:
    """(agreement, matched share): of the points of `a` with a neighbour in `b` within `max_distance`, the share
    whose nearest neighbour carries the same class; and the share of `a` that has such a neighbour."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(xyz_b).query(xyz_a, k=1, distance_upper_bound=max_distance)
    matched = np.isfinite(distance)
    if not matched.any():
        return float('nan'), 0.0
    return float(np.mean(labels_a[matched] == labels_b[index[matched]])), float(matched.mean())


def dominant_plane_mask(xyz: np.ndarray, tolerance: float = 0.02, seed: int = 0) -> np.ndarray:
    """(N,) bool: inliers of the dominant plane (any orientation) of `xyz`, fitted with scikit-learn's RANSAC on
    the axis the cloud varies least along (the table top of a tabletop frame)."""
    from sklearn.linear_model import RANSACRegressor

    xyz = np.asarray(xyz, np.float64)
    centred = xyz - xyz.mean(axis=0)
    normal_axis = np.linalg.svd(centred[:: max(1, len(xyz) // 20000)], full_matrices=False)[2][-1]
    basis = np.linalg.svd(np.eye(3) - np.outer(normal_axis, normal_axis))[0][:, :2]
    u, h = centred @ basis, centred @ normal_axis
    ransac = RANSACRegressor(residual_threshold=tolerance, random_state=seed, max_trials=200)
    ransac.fit(u, h)
    return np.abs(ransac.predict(u) - h) < tolerance
