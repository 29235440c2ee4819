"""The maths of the semantic map: how a voxel's class probabilities and occupancy are fused over time.

Class probabilities: a running mean with a capped count. A voxel holds the mean m of the class distributions the
segmenter gave it (one observation per segmentation run that covered it) and the count n of those runs:

    n_k = min(n_{k-1} + 1, N_max)
    m_k = m_{k-1} + (p_k - m_{k-1}) / n_k

Up to N_max observations this is the exact arithmetic mean of p_1..p_k; after that it is an exponential moving
average with weight 1 / N_max on the newest run (the map can still follow a chair that was moved). The label is
argmax m, the confidence max m. Why a mean and not the log-odds (naive-Bayes product) voxblox / Kimera-Semantics use
with a fixed measurement likelihood: the runs that cover a voxel are strongly correlated (the same network on
largely the same points), so summing their log-probabilities as if independent makes a voxel certain after a few
runs, and one confident mistake outweighs many mild correct runs. The mean is a soft vote: bounded, robust to a
single bad run, and its max is still a probability.

Occupancy: log-odds as in OctoMap (Hornung et al. 2013): a voxel hit in a frame adds L_HIT, a voxel the frame's rays
pass through (see `VoxelMap.clear_seen_through`) adds L_MISS, clamped to [L_MIN, L_MAX]; a voxel whose log-odds
drop to L_REMOVE or below is removed (the space is free: something moved away).
"""
from __future__ import annotations

import numpy as np

DEFAULT_MAX_OBSERVATIONS = 20
# OctoMap's defaults: p_hit 0.7, p_miss 0.4, clamping 0.12 .. 0.97.
L_HIT = float(np.log(0.7 / 0.3))      # 0.847
L_MISS = float(np.log(0.4 / 0.6))     # -0.405
L_MIN = float(np.log(0.12 / 0.88))    # -1.99
L_MAX = float(np.log(0.97 / 0.03))    # 3.48
L_REMOVE = 0.0                        # p = 0.5


def fuse_probabilities(mean: np.ndarray, count: np.ndarray, observation: np.ndarray,
                       max_observations: int = DEFAULT_MAX_OBSERVATIONS) -> tuple[np.ndarray, np.ndarray]:
    """One fusion step for V voxels: mean (V, C), count (V,) observations so far, observation (V, C) -> the new
    (mean, count) (see the module docstring)."""
    if max_observations < 1:
        raise ValueError(f'max_observations={max_observations}: must be >= 1')
    count = np.minimum(np.asarray(count, dtype=np.int64) + 1, max_observations)
    mean = np.asarray(mean, dtype=np.float32)
    mean = mean + (np.asarray(observation, dtype=np.float32) - mean) / count[:, None].astype(np.float32)
    return mean, count


def update_occupancy(log_odds: np.ndarray, delta: float) -> np.ndarray:
    """Log-odds after a hit (delta = L_HIT) or a miss (L_MISS), clamped to [L_MIN, L_MAX]."""
    return np.clip(np.asarray(log_odds, dtype=np.float32) + np.float32(delta), L_MIN, L_MAX).astype(np.float32)


def labels_of(mean: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (V,) int32, -1 where never observed; confidence (V,) float32, 0 there)."""
    labels = np.where(count > 0, mean.argmax(axis=1), -1).astype(np.int32) if len(mean) else np.zeros(0, np.int32)
    scores = np.where(count > 0, mean.max(axis=1, initial=0.0), 0.0).astype(np.float32) if len(mean) \
        else np.zeros(0, np.float32)
    return labels, scores
