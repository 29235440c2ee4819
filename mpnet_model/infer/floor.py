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

When no floor is in view at all (a camera looking down at a table), the lowest dominant plane is the table top.
Taken as the floor, the table would read height 0 and come out `floor`. When the sensor position is known, a view
is taken for a tabletop view when all three hold:

* the sensor looks down on the plane: the median depression angle from the sensor to the plane's points is at
  least `TABLETOP_MIN_DEPRESSION_DEG` (a robot's camera sees the floor ahead of it at 15-35 deg; a manipulation
  camera looks down at its table at 40-75 deg);
* from close by: the sensor is at most `TABLETOP_MAX_SENSOR_HEIGHT` m above the plane;
* the cloud is table-sized: at most `TABLETOP_MAX_EXTENT` m along x and y (1st-99th percentile).

Then the floor is put `NOMINAL_TABLE_HEIGHT` m below the plane (method 'tabletop', `found` False), where the
training rooms' tables stand. A camera held low and staring down at a patch of bare floor is the case this rule
gets wrong (docs/floor.md); without a sensor position (whole rooms) it never applies. A robot that knows where its
floor is says so (`floor_source` in the node: the fixed frame's z = `floor_z`, or the sensor's mounting height),
which always wins over the estimate.
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
TABLETOP_MIN_DEPRESSION_DEG = 40.0  # tabletop views (module docstring): the sensor looks down this steeply,
TABLETOP_MAX_SENSOR_HEIGHT = 1.3    # m: from at most this high above it,
TABLETOP_MAX_EXTENT = 2.5           # m: and the cloud is at most this wide along x and y
NOMINAL_TABLE_HEIGHT = 0.75         # m: the floor of a tabletop view lies this far below its table top
_PEAK_SEARCH_BINS = 4           # the peak is the highest bin within this many bins above the first qualifying one
_BACKGROUND_BINS = 10           # a peak is compared with the density within this many bins around it
_MIN_CONTRAST = 3.0             # and must be this many times denser (a wall's or a façade's heights are flat)


@dataclass(frozen=True)
class FloorEstimate:
    z: float                    # floor height in the cloud's frame [m]
    found: bool                 # a floor peak was found (False: the percentile fallback, or no points)
    support: float              # share of the points considered that lie within the band of the floor
    method: str                 # 'histogram' | 'tabletop' | 'percentile' | 'given'

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
    points = xyz.astype(np.float64)
    if origin is not None and radius and radius > 0:
        near = np.sum((points[:, :2] - np.asarray(origin, np.float64)[:2]) ** 2, axis=1) <= radius * radius
        if near.sum() >= min_points:
            points = points[near]
    points = points[np.isfinite(points).all(axis=1)]
    z = points[:, 2]
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
    support = float(np.mean(np.abs(z - floor) <= band))
    if origin is not None and is_tabletop_view(points, floor, origin, band):
        return FloorEstimate(floor - NOMINAL_TABLE_HEIGHT, False, support, 'tabletop')
    return FloorEstimate(floor, True, support, 'histogram')


def is_tabletop_view(xyz: np.ndarray, plane_z: float, origin, band: float = DEFAULT_BAND) -> bool:
    """True when the z-up cloud xyz (N, 3), whose lowest dominant plane lies at `plane_z`, seen from the sensor at
    `origin` (3,), is a view down onto a table (the three conditions of the module docstring)."""
    origin = np.asarray(origin, np.float64).reshape(3)
    height = float(origin[2]) - plane_z
    if len(xyz) == 0 or not 0 < height <= TABLETOP_MAX_SENSOR_HEIGHT:
        return False
    low, high = np.percentile(xyz[:, :2], [1.0, 99.0], axis=0)
    if np.any(high - low > TABLETOP_MAX_EXTENT):
        return False
    plane = xyz[np.abs(xyz[:, 2] - plane_z) <= band]
    distance = np.linalg.norm(plane[:, :2] - origin[:2], axis=1)
    return bool(np.degrees(np.median(np.arctan2(height, distance))) >= TABLETOP_MIN_DEPRESSION_DEG)
