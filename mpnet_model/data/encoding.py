"""Input encodings: what channels 2 and 6..8 of a block's 9 channels say about a point's place in the scene.

Channels 0, 1 (x, y relative to the block centre) and 3..5 (colour) are the same in every encoding. The location
channels differ:

* ``room`` (ASIS, paper-faithful; models trained before issue 22): channel 2 = z minus the cloud's lowest z,
  channels 6..8 = xyz over the cloud's extent (min-shifted). In S3DIS a room's lowest point is its floor and its
  extent is the room; on a robot the lowest stray return sets the "floor" and the farthest return sets the scale,
  so a point's class depends on where the other points of the cloud lie.
* ``floor`` (robot frames; the shipped model): channel 2 = height above the floor [m], channels 6, 7 = 0.5
  (constant: no x/y location; the value is the mean of the room encoding's x/y channels, so weights trained with
  ``room`` start from their average input), channel 8 = height above the floor over a nominal storey height of
  `NOMINAL_STOREY` metres (the room encoding's z channel for a room of that height; tall façades give values > 1).
  The floor comes from `mpnet_model.infer.floor.estimate_floor` (or is given: a known floor, from tf or the
  sensor's mounting height). With it, the frame geometry is anchored too (see `anchors_grid`): the block grid lies
  on a fixed lattice of the cloud's frame and each block's points are sampled with keys of its own cell, so a
  stray point or a range crop changes only the blocks it falls in.
* ``floor_local``: as ``floor``, but channels 6, 7 = x, y within the block over its size, in [0, 1] (the block-
  relative x, y of channels 0, 1 shifted by a half: the same information, the input range of the room encoding).
  Measured against ``floor`` (docs/floor.md) and kept as an option.

Every encoding gives 9 channels, so models of either encoding share the architecture (a ``room`` model can be
fine-tuned into a ``floor`` one). The encoding is a model setting (`ModelConfig.input_encoding`), stored in the
checkpoint and in the ONNX metadata (`input_encoding`); files that predate it are ``room``.

The functions here take numpy arrays or torch tensors alike (elementwise arithmetic only).
"""
from __future__ import annotations

ENCODINGS = ('room', 'floor', 'floor_local')
LEGACY_ENCODING = 'room'          # files written before the setting existed
NOMINAL_STOREY = 3.0              # m: the z location channel of `floor` is height / NOMINAL_STOREY
CONSTANT_XY = 0.5                 # channels 6, 7 of `floor`


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f'input_encoding={encoding!r}: choose one of {ENCODINGS}')
    return encoding


def anchors_grid(encoding: str) -> bool:
    """Whether the block grid is anchored to a fixed lattice and blocks are sampled by cell keys (every encoding
    but ``room``, whose answers stay those of the paper-faithful path it was trained and golden-tested with)."""
    return check_encoding(encoding) != 'room'


def needs_floor(encoding: str) -> bool:
    return check_encoding(encoding) in ('floor', 'floor_local')


def finish_block_channels(points, encoding: str, block_size: float) -> None:
    """The channels that need the block-relative x, y (channels 0, 1, already written): ``floor_local``'s 6, 7."""
    if encoding == 'floor_local':
        points[..., 6:8] = points[..., 0:2] / block_size + 0.5


def fill_location_channels(points, shifted, encoding: str, room_extent=None, floor: float | None = None,
                           room_min_z=0.0) -> None:
    """Write channels 2 and 6..8 of `points` (..., 9) in place from `shifted` (..., 3): the coordinates minus the
    partition's `room_min` (so the absolute z is shifted z + `room_min_z`, a float or a 0-d tensor). ``room`` needs
    `room_extent` (3,) (the caller replaces zero extents by 1); ``floor`` needs `floor` (z of the floor in the
    cloud's frame)."""
    check_encoding(encoding)
    if encoding == 'room':
        points[..., 2] = shifted[..., 2]
        points[..., 6:9] = shifted / room_extent
        return
    if floor is None:
        raise ValueError("input_encoding 'floor' needs the floor height (estimate_floor or a known floor)")
    height = shifted[..., 2] + (room_min_z - floor)
    points[..., 2] = height
    points[..., 6:8] = CONSTANT_XY
    points[..., 8] = height / NOMINAL_STOREY
