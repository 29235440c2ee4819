"""The class-agnostic clustering peer of the instance benchmark (issue 23): what a robot would use for an object list
without MPNet, in the manner of Autoware's Euclidean clustering nodes.

    ground removal  a plane fitted by RANSAC (scikit-learn `RANSACRegressor`, z = a x + b y + c) to the lowest
                    `ground_candidates` share of the points; points within `ground_threshold` of it are ground;
                    points higher than `max_height` above it are cropped (the ceiling indoors; None = keep)
    voxel grid      one centroid per occupied voxel of edge `voxel` (numpy)
    clustering      Euclidean cluster extraction with tolerance `tolerance`: scikit-learn `DBSCAN` with
                    min_samples=1 (every voxel a core point: exactly single-linkage clusters of points closer than
                    the tolerance); clusters of fewer than `min_cluster_voxels` voxels are dropped

Each cluster goes back to the points of its voxels; ground, cropped points and dropped clusters get -1. The
defaults are the issue's: 0.1 m voxels, 0.3 m tolerance. No classes: it is scored with class-agnostic instance
precision / recall (`mpnet_model.eval.metrics.AgnosticInstanceEvaluator`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PeerConfig:
    voxel: float = 0.1                  # [m] voxel grid edge
    tolerance: float = 0.3              # [m] Euclidean cluster tolerance
    ground_threshold: float = 0.15      # [m] from the ground plane
    ground_candidates: float = 0.3      # share of the lowest points the ground plane is fitted to
    max_height: float | None = 2.2      # [m] above the ground plane: cropped (None = keep everything)
    min_cluster_voxels: int = 5
    seed: int = 0                       # RANSAC's random state

    def __post_init__(self):
        if not (self.voxel > 0 and self.tolerance > 0 and self.ground_threshold > 0
                and 0 < self.ground_candidates <= 1 and self.min_cluster_voxels >= 1):
            raise ValueError(f'invalid peer configuration {self}')


def ground_plane(xyz: np.ndarray, config: PeerConfig = PeerConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(height above the fitted ground plane (N,), plane coefficients (a, b, c) of z = a x + b y + c)."""
    from sklearn.linear_model import RANSACRegressor

    xyz = np.asarray(xyz, np.float64)
    low = xyz[:, 2] <= np.quantile(xyz[:, 2], config.ground_candidates)
    candidates = xyz[low]
    if len(candidates) < 3:
        return xyz[:, 2] - (xyz[:, 2].min() if len(xyz) else 0.0), np.array([0.0, 0.0, 0.0])
    ransac = RANSACRegressor(residual_threshold=config.ground_threshold, random_state=config.seed, max_trials=200)
    ransac.fit(candidates[:, :2], candidates[:, 2])
    a, b = ransac.estimator_.coef_
    c = ransac.estimator_.intercept_
    height = (xyz[:, 2] - (a * xyz[:, 0] + b * xyz[:, 1] + c)) / np.sqrt(1 + a * a + b * b)
    return height, np.array([a, b, c])


def cluster_peer(xyz: np.ndarray, config: PeerConfig = PeerConfig()) -> np.ndarray:
    """(N,) int64 cluster id per point (-1: ground, cropped or a dropped small cluster), ids 0..K-1 largest first."""
    from sklearn.cluster import DBSCAN

    xyz = np.asarray(xyz, np.float64)
    out = np.full(len(xyz), -1, dtype=np.int64)
    if len(xyz) == 0:
        return out
    height, _ = ground_plane(xyz, config)
    keep = height > config.ground_threshold
    if config.max_height is not None:
        keep &= height <= config.max_height
    points = np.flatnonzero(keep)
    if len(points) == 0:
        return out
    cells, voxel_of_point = np.unique(np.floor(xyz[points] / config.voxel).astype(np.int64), axis=0,
                                      return_inverse=True)
    voxel_of_point = voxel_of_point.reshape(-1)
    centroids = np.zeros((len(cells), 3))
    np.add.at(centroids, voxel_of_point, xyz[points])
    centroids /= np.bincount(voxel_of_point, minlength=len(cells))[:, None]
    cluster = DBSCAN(eps=config.tolerance, min_samples=1).fit(centroids).labels_       # (V,) every voxel clustered
    sizes = np.bincount(cluster)
    kept = np.flatnonzero(sizes >= config.min_cluster_voxels)
    order = kept[np.lexsort((kept, -sizes[kept]))]                                     # largest first, then id
    new_id = np.full(len(sizes), -1, dtype=np.int64)
    new_id[order] = np.arange(len(order))
    out[points] = new_id[cluster[voxel_of_point]]
    return out
