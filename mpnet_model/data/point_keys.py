"""Keys for sampling that belong to a point and its block cell, not to the point's index in the cloud.

A frame's blocks are sampled to a fixed number of points. With one random stream over the whole frame, adding a
single point anywhere (a stray return) or cropping the cloud shifts the stream and re-draws every block. Keyed
sampling draws each block from keys computed from the block's absolute lattice cell and each member's quantised
coordinates (1 mm): a block's sample depends only on its own points, and adding a point to a block changes at most
one point of its sample (the P smallest keys are kept: a bottom-k sample).

The key is the splitmix64 finaliser (Steele, Lea, Flood 2014) of the seed, the cell and the quantised coordinates;
numpy (uint64) and torch (int64 with wrapping products and masked shifts) give the same bits, tested equal.
"""
from __future__ import annotations

import numpy as np
import torch

QUANTUM = 1e-3                      # m: coordinates are keyed at 1 mm
KEY_BITS = 40                       # bits of a key kept in the sort key (block index in the bits above)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_FIELDS = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3,
           0x1D8E4E27C47D124F)    # one odd multiplier per field: seed, cell i, cell j, x, y, z (or slot, stream)


def _signed(value: int) -> int:
    """The int64 with the bits of the uint64 `value`."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _splitmix_np(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(_MIX[0])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
    return z ^ (z >> np.uint64(31))


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix_torch(z: torch.Tensor) -> torch.Tensor:
    z = z + _signed(_MIX[0])
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX[1])
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX[2])
    return z ^ _shift_right(z, 31)


def hash_fields_np(fields: list[np.ndarray | int]) -> np.ndarray:
    """uint64 hash of int64 fields (broadcast), numpy."""
    with np.errstate(over='ignore'):
        acc = np.uint64(0)
        for value, multiplier in zip(fields, _FIELDS):
            acc = _splitmix_np(acc ^ (np.asarray(value, dtype=np.int64).astype(np.uint64) * np.uint64(multiplier)))
    return acc


def hash_fields_torch(fields: list[torch.Tensor | int], device: torch.device | str = 'cpu') -> torch.Tensor:
    """The same bits as `hash_fields_np`, as int64 tensors."""
    acc = torch.zeros((), dtype=torch.int64, device=device)
    for value, multiplier in zip(fields, _FIELDS):
        value = torch.as_tensor(value, dtype=torch.int64, device=device)
        acc = _splitmix_torch(acc ^ (value * _signed(multiplier)))
    return acc


def point_keys_np(xyz: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uint64 key of each point from its coordinates (quantised) and the seed."""
    q = quantise_np(xyz)
    return hash_fields_np([seed, q[..., 0], q[..., 1], q[..., 2]])


def point_keys_torch(xyz: torch.Tensor, seed: int) -> torch.Tensor:
    q = quantise_torch(xyz)
    return hash_fields_torch([seed, q[..., 0], q[..., 1], q[..., 2]], xyz.device)


def cell_keys_np(point_key: np.ndarray, cell_i: np.ndarray, cell_j: np.ndarray) -> np.ndarray:
    """uint64 key of a (point, absolute block cell) pair: one point draws independently in each of its blocks."""
    with np.errstate(over='ignore'):
        mixed = (np.asarray(cell_i, np.int64).astype(np.uint64) * np.uint64(_FIELDS[1])) ^ \
            (np.asarray(cell_j, np.int64).astype(np.uint64) * np.uint64(_FIELDS[2]))
        return _splitmix_np(point_key ^ mixed)


def cell_keys_torch(point_key: torch.Tensor, cell_i: torch.Tensor, cell_j: torch.Tensor) -> torch.Tensor:
    mixed = (cell_i.long() * _signed(_FIELDS[1])) ^ (cell_j.long() * _signed(_FIELDS[2]))
    return _splitmix_torch(point_key ^ mixed)


def order_key_np(key: np.ndarray) -> np.ndarray:
    """int64 that sorts like the uint64 `key` (its top 63 bits), for row shuffles."""
    return (key >> np.uint64(1)).astype(np.int64)


def order_key_torch(key: torch.Tensor) -> torch.Tensor:
    return _shift_right(key, 1)


def quantise_np(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) coordinates -> (..., 3) int64 at `QUANTUM` (float64 arithmetic, as `quantise_torch`)."""
    return np.rint(np.asarray(xyz, dtype=np.float64) / QUANTUM).astype(np.int64)


def quantise_torch(xyz: torch.Tensor) -> torch.Tensor:
    return torch.round(xyz.double() / QUANTUM).long()


def sort_key_np(block: np.ndarray, key: np.ndarray) -> np.ndarray:
    """int64 sort key: block index in the high bits, the top `KEY_BITS` bits of the uint64 `key` below."""
    return (np.asarray(block, np.int64) << KEY_BITS) | (key >> np.uint64(64 - KEY_BITS)).astype(np.int64)


def sort_key_torch(block: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    return (block.long() << KEY_BITS) | _shift_right(key, 64 - KEY_BITS)


def unit_np(key: np.ndarray) -> np.ndarray:
    """uint64 keys -> float64 in [0, 1) (top 53 bits)."""
    return (key >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def unit_torch(key: torch.Tensor) -> torch.Tensor:
    return _shift_right(key, 11).double() * 2.0 ** -53
