"""The floor of a z-up cloud: the reference height of the ``floor`` input encoding (`mpnet_model.data.encoding`).

The estimator is a height histogram (bins of `DEFAULT_BIN` m) of the points within `DEFAULT_RADIUS` m (horizontal)
of the sensor, when its position is known (all points otherwise). The floor is the lowest
histogram peak (two adjacent bins) holding at least `DEFAULT_MIN_SHARE` of those points (and `DEFAULT_MIN_POINTS`)
and three times the density of the heights around it (half a metre either way): a horizontal surface is a narrow,
tall peak; walls and façades spread evenly over many bins, clutter and stray returns (multipath below the ground,
rain, birds) are far below the share. Its height is the median z of the points within `DEFAULT_BAND` m
of the peak (a sloped street widens the peak, the median stays on it). Range crops and windows of frames keep the
same peak (the same surface near the sensor); a tilted sensor must be levelled first (gravity alignment:
`mpnet_model.infer.gravity`, or tf).

When no peak qualifies (a camera facing a wall with a strip of floor at its bottom, a cloud of clutter), the floor
is the 1st percentile of z (mmdetection3d's height feature, robust to a few stray points) and `found` is False.

When no floor is in view at all (a camera looking down at a table), the lowest dominant plane is the table top, and
it becomes the reference: its height reads 0. The shipped model is trained with the same estimator on simulated
manipulation views (a camera 0.3-1.2 m above a table top, the table filling the view), where the same happens, so a
table seen that way is still a table (docs/floor.md has the measurement on the real Kinect tabletop frames). A robot
that knows where its floor is says so (`floor_source` in the node: the fixed frame's z = `floor_z`, or the sensor's
mounting height), which always wins over the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BIN = 0.05              # m
DEFAULT_RADIUS = 20.0           # m, horizontal, around the sensor (when its position is known)
DEFAULT_MIN_SHARE = 0.05        # of the points within the radius
DEFAULT_MIN_POINTS = 30
DEFAULT_BAND = 0.1              # m, half-width around the peak for the median
FALLBACK_PERCENTILE = 1.0
_PEAK_SEARCH_BINS = 4           # the peak is the highest bin within this many bins above the first qualifying one
_BACKGROUND_BINS = 10           # a peak is compared with the density within this many bins around it
_MIN_CONTRAST = 3.0             # and must be this many times denser (a wall's or a façade's heights are flat)


@dataclass(frozen=True)
class FloorEstimate:
    z: float                    # floor height in the cloud's frame [m]
    found: bool                 # a floor peak was found (False: the percentile fallback, or no points)
    support: float              # share of the points considered that lie within the band of the floor
    method: str                 # 'histogram' | 'percentile' | 'given'

    @classmethod
    def given(cls, z: float) -> FloorEstimate:
        return cls(float(z), True, 0.0, 'given')


def estimate_floor(xyz: np.ndarray, origin=None, radius: float = DEFAULT_RADIUS, bin_size: float = DEFAULT_BIN,
                   min_share: float = DEFAULT_MIN_SHARE, min_points: int = DEFAULT_MIN_POINTS,
                   band: float = DEFAULT_BAND) -> FloorEstimate:
    """Floor height of a z-up cloud `xyz` (N, 3) (see the module docstring); `origin` (3,) the sensor position."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f'xyz must have shape (N, 3), got {xyz.shape}')
    if not bin_size > 0 or not band > 0 or not 0 < min_share < 1:
        raise ValueError(f'bin_size={bin_size}, band={band} must be > 0 and min_share={min_share} in (0, 1)')
    z = xyz[:, 2].astype(np.float64)
    if origin is not None and radius and radius > 0:
        near = np.sum((xyz[:, :2].astype(np.float64) - np.asarray(origin, np.float64)[:2]) ** 2, axis=1) \
            <= radius * radius
        if near.sum() >= min_points:
            z = z[near]
    z = z[np.isfinite(z)]
    if z.size == 0:
        return FloorEstimate(0.0, False, 0.0, 'percentile')
    low = z.min()
    counts = np.bincount(((z - low) / bin_size).astype(np.int64)).astype(np.float64)   # (B,)
    pairs = counts + np.append(counts[1:], 0.0)               # a surface straddling two bins: (B,)
    # The surrounding density: mean of the pair sums within +-BACKGROUND_BINS, the pair's own bins left out.
    width = 2 * _BACKGROUND_BINS + 1
    around = np.convolve(np.pad(pairs, _BACKGROUND_BINS), np.ones(width), mode='valid')
    own = np.convolve(np.pad(pairs, 1), np.ones(3), mode='valid')
    background = (around - own) / (width - 3)
    qualifying = np.flatnonzero((pairs >= max(min_points, min_share * z.size)) & (pairs >= _MIN_CONTRAST * background))
    if qualifying.size == 0:
        floor = float(np.percentile(z, FALLBACK_PERCENTILE))
        return FloorEstimate(floor, False, float(np.mean(np.abs(z - floor) <= band)), 'percentile')
    first = int(qualifying[0])
    window = counts[first:first + _PEAK_SEARCH_BINS + 1]
    peak = low + (first + int(np.argmax(window)) + 0.5) * bin_size
    on_peak = np.abs(z - peak) <= band
    floor = float(np.median(z[on_peak]))
    return FloorEstimate(floor, True, float(np.mean(np.abs(z - floor) <= band)), 'histogram')
