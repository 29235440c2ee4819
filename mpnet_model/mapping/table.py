"""Rows keyed by unique int64 keys, kept sorted: vectorised find, insert and drop (no Python loop over rows).

The semantic map keeps its voxels, tiles and blocks in such tables: a sorted key array plus one numpy column per
field, so a frame's tens of thousands of voxels are found with one `np.searchsorted` and inserted with one
`np.insert` per column (O(M) copies; M is bounded by the map's voxel cap).
"""
from __future__ import annotations

import numpy as np

# Packed voxel keys: 21 bits per axis around an offset, so indices in [-2**20, 2**20) (about +-52 km at 5 cm).
AXIS_BITS = 21
AXIS_OFFSET = 1 << (AXIS_BITS - 1)
_AXIS_MASK = (1 << AXIS_BITS) - 1
# Packed 2-D cell keys (tiles and blocks): 31 bits per axis (keys stay positive int64).
_CELL_BITS = 31
_CELL_OFFSET = 1 << (_CELL_BITS - 1)


def pack_voxels(index: np.ndarray) -> np.ndarray:
    """(N, 3) int64 voxel indices -> (N,) int64 keys; ValueError outside the packable range."""
    index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
    if index.size and (index.min() < -AXIS_OFFSET or index.max() >= AXIS_OFFSET):
        raise ValueError(f'voxel index out of the map range +-{AXIS_OFFSET} voxels per axis '
                         f'(got {index.min()} .. {index.max()}): coordinates too large for the voxel size')
    shifted = index + AXIS_OFFSET
    return (shifted[:, 0] << (2 * AXIS_BITS)) | (shifted[:, 1] << AXIS_BITS) | shifted[:, 2]


def unpack_voxels(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([(keys >> (2 * AXIS_BITS)) & _AXIS_MASK, (keys >> AXIS_BITS) & _AXIS_MASK,
                     keys & _AXIS_MASK], axis=1) - AXIS_OFFSET


def pack_cells(cells: np.ndarray) -> np.ndarray:
    """(N, 2) int64 (i, j) -> (N,) int64 keys."""
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    return ((cells[:, 0] + _CELL_OFFSET) << _CELL_BITS) | (cells[:, 1] + _CELL_OFFSET)


def unpack_cells(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([(keys >> _CELL_BITS) - _CELL_OFFSET, (keys & ((1 << _CELL_BITS) - 1)) - _CELL_OFFSET], axis=1)


class KeyTable:
    """Sorted unique int64 `keys` and columns of equal length; `spec` maps a column name to (shape of one row's
    value, dtype, fill value for new rows)."""

    def __init__(self, spec: dict[str, tuple[tuple[int, ...], type, float]]):
        self.spec = dict(spec)
        self.keys = np.zeros(0, dtype=np.int64)
        self.columns = {name: np.full((0, *tail), fill, dtype=dtype) for name, (tail, dtype, fill) in spec.items()}

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.columns[name] = value

    def nbytes(self) -> int:
        return int(self.keys.nbytes + sum(column.nbytes for column in self.columns.values()))

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows (K,) int64, found (K,) bool) of `keys`; rows of keys not found are meaningless."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self):
            return np.zeros(keys.shape, dtype=np.int64), np.zeros(keys.shape, dtype=bool)
        rows = np.minimum(np.searchsorted(self.keys, keys), len(self) - 1)
        return rows, self.keys[rows] == keys

    def get(self, name: str, keys: np.ndarray, default: float = 0) -> np.ndarray:
        """Column `name` at `keys` (rows of one-dimensional columns), `default` where a key is absent."""
        rows, found = self.find(keys)
        column = self.columns[name]
        if not len(self):
            return np.full(np.shape(keys), default, dtype=column.dtype)
        return np.where(found, column[rows], default)

    def ensure(self, keys: np.ndarray) -> np.ndarray:
        """Rows of `keys` (any order, repeats allowed), inserting the missing ones with the fill values."""
        keys = np.asarray(keys, dtype=np.int64)
        unique = np.unique(keys)
        _, found = self.find(unique)
        self.insert(unique[~found])
        return self.find(keys)[0]

    def insert(self, keys: np.ndarray) -> None:
        """Insert new, unique, sorted `keys` (not present) with the fill values."""
        if not len(keys):
            return
        at = np.searchsorted(self.keys, keys)
        self.keys = np.insert(self.keys, at, keys)
        for name, (tail, dtype, fill) in self.spec.items():
            self.columns[name] = np.insert(self.columns[name], at, np.full((len(keys), *tail), fill, dtype=dtype),
                                           axis=0)

    def drop(self, mask: np.ndarray) -> None:
        """Remove the rows where `mask` (len(self),) is True."""
        if not mask.any():
            return
        keep = ~mask
        self.keys = self.keys[keep]
        for name in self.columns:
            self.columns[name] = self.columns[name][keep]

    def replace_all(self, keys: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Set the whole table (keys sorted and unique; one array per column of the spec)."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.ndim != 1 or (len(keys) > 1 and not (np.diff(keys) > 0).all()):
            raise ValueError('keys must be sorted and unique')
        for name, (tail, dtype, _) in self.spec.items():
            value = np.asarray(columns[name])
            if value.shape != (len(keys), *tail):
                raise ValueError(f'column {name!r} has shape {value.shape}, expected {(len(keys), *tail)}')
            self.columns[name] = value.astype(dtype, copy=False)
        self.keys = keys
