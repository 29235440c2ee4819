"""Per-room pre-processing cache and the training `BlockDataset`.

Parsing S3DIS text (~1.6 GB) is the slow part of data loading, so each room is parsed once into
`<cache_dir>/<parent>_<room>.npz` (compact dtypes, written atomically) keyed by the source files' sizes and
mtimes; a changed source re-builds its entry. The dataset keeps the rooms in memory (about 23 bytes per point) and
their block partitions, and samples fresh points from a block on every access, so each epoch sees a new subsample.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mpnet_model.data.blocks import NUM_CHANNELS, partition_blocks
from mpnet_model.data.room import Room, load_room_npz, read_cache_key, save_room_npz

RoomLoader = Callable[[Path], Room]


def source_key(room_dir: str | os.PathLike) -> str:
    """Identity of a room's source files: resolved path, file count, total size and latest mtime (ns)."""
    room_dir = Path(room_dir).resolve()
    if room_dir.is_file():
        stats = [room_dir.stat()]
    else:
        stats = [p.stat() for p in room_dir.rglob('*') if p.is_file()]
        if not stats:
            raise FileNotFoundError(f'room source {room_dir} is missing or holds no files')
    total_size = sum(s.st_size for s in stats)
    latest = max(s.st_mtime_ns for s in stats)
    return f'{room_dir}|files={len(stats)}|size={total_size}|mtime_ns={latest}'


def cache_path(room_dir: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Cache file of a room: `<cache_dir>/<parent>_<room>.npz` (e.g. `Area_1_office_1.npz`)."""
    room_dir = Path(room_dir).resolve()
    return Path(cache_dir) / f'{room_dir.parent.name}_{room_dir.name}.npz'


def build_cache(room_dirs: Iterable[str | os.PathLike], cache_dir: str | os.PathLike,
                loader: RoomLoader | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Parse each room with `loader` (default: S3DIS `load_room`) into the cache unless a fresh entry exists.

    Returns the cache paths in the order of `room_dirs`.
    """
    if loader is None:
        from mpnet_model.data.s3dis import load_room as loader
    room_dirs = [Path(d) for d in room_dirs]
    paths = []
    for room_dir in tqdm(room_dirs, desc='caching rooms', unit='room', disable=not progress):
        path = cache_path(room_dir, cache_dir)
        key = source_key(room_dir)
        if force or read_cache_key(path) != key:
            save_room_npz(loader(room_dir), path, source_key=key)
        paths.append(path)
    return paths


def _resolve_rooms(rooms_or_cache) -> list[Room | Path]:
    if isinstance(rooms_or_cache, (str, os.PathLike)):
        cache_dir = Path(rooms_or_cache)
        if not cache_dir.is_dir():
            raise FileNotFoundError(f'room cache directory not found: {cache_dir}')
        paths = sorted(cache_dir.glob('*.npz'))
        if not paths:
            raise ValueError(f'room cache directory {cache_dir} holds no .npz rooms; run build_cache first')
        return list(paths)
    items = list(rooms_or_cache)
    for item in items:
        if not isinstance(item, (Room, str, os.PathLike)):
            raise TypeError(f'expected Room objects or .npz paths, got {type(item).__name__}')
    return [item if isinstance(item, Room) else Path(item) for item in items]


class BlockDataset(Dataset):
    """Blocks of many rooms; item i -> (points (P, 9) float32, sem (P,) int64, ins (P,) int64) tensors.

    Sampling is deterministic in (seed, epoch, index): call `set_epoch(epoch)` each epoch to draw new points.
    `augment` rotates the block-centred xyz about z by a random angle and jitters it (sigma 1 cm, clipped at
    5 cm); the location channels 6..8 are left unchanged. With `augment`, `robot_augment` (a `data.augment` spec,
    `mpnet_model.data.transforms`) first changes the block's members: stray points, partial views, façades, floor
    errors.
    `encoding`: the model's input encoding (`mpnet_model.data.encoding`); ``floor`` measures heights from each
    room's floor as the runtime estimates it (`mpnet_model.infer.floor.estimate_floor` on the whole room or frame, from
    the frame's sensor position when it has one).
    """

    def __init__(self, rooms_or_cache: str | os.PathLike | Sequence[Room | str | os.PathLike],
                 num_points: int = 4096, block_size: float = 1.0, stride: float = 0.5, min_points: int = 100,
                 seed: int = 0, augment: bool = False, progress: bool = True, encoding: str = 'room',
                 robot_augment: str = ''):
        from mpnet_model.data.encoding import check_encoding, needs_floor
        from mpnet_model.infer.floor import estimate_floor

        self.encoding = check_encoding(encoding)
        self.num_points = int(num_points)
        if self.num_points <= 0:
            raise ValueError(f'num_points={num_points!r} must be a positive integer')
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0
        self.room_names: list[str] = []
        self.class_names: tuple | None = None
        # Compact per-room storage: xyz float32, rgb uint8, labels int32.
        self._xyz: list[np.ndarray] = []
        self._rgb: list[np.ndarray] = []
        self._sem: list[np.ndarray] = []
        self._ins: list[np.ndarray] = []
        self._partitions = []
        self._floors: list[float | None] = []     # per room: the floor height of the 'floor' encoding
        block_room, block_local = [], []
        for item in tqdm(_resolve_rooms(rooms_or_cache), desc='partitioning rooms', unit='room',
                         disable=not progress):
            room = item if isinstance(item, Room) else load_room_npz(item)
            if self.class_names is None:
                self.class_names = room.class_names
            elif room.class_names != self.class_names:
                raise ValueError(f'room {room.name!r} has classes {room.class_names}, '
                                 f'other rooms have {self.class_names}')
            partition = partition_blocks(room.xyz, block_size, stride, min_points)
            room_index = len(self.room_names)
            self.room_names.append(room.name)
            self._xyz.append(room.xyz)
            self._rgb.append(np.round(room.rgb * 255.0).clip(0, 255).astype(np.uint8))
            self._sem.append(room.sem.astype(np.int32))
            self._ins.append(room.ins.astype(np.int32))
            self._partitions.append(partition)
            self._floors.append(estimate_floor(room.xyz, room.origin).z if needs_floor(self.encoding) else None)
            block_room.append(np.full(len(partition), room_index, dtype=np.int64))
            block_local.append(np.arange(len(partition), dtype=np.int64))
        if not self.room_names:
            raise ValueError('BlockDataset needs at least one room')
        self._block_room = np.concatenate(block_room)     # (T,) room of each block
        self._block_local = np.concatenate(block_local)   # (T,) block index within its room
        from mpnet_model.data.transforms import RobotAugment

        self.robot = RobotAugment(robot_augment, self.class_names)

    def __len__(self) -> int:
        return int(self._block_room.shape[0])

    def class_point_counts(self) -> np.ndarray:
        """(C,) int64 number of annotated points of each class over all rooms (for class weights / tiers)."""
        counts = np.zeros(len(self.class_names), dtype=np.int64)
        for sem in self._sem:
            counts += np.bincount(sem[sem >= 0], minlength=len(self.class_names))
        return counts

    def class_mean_instance_points(self) -> np.ndarray:
        """(C,) mean number of points of a ground-truth instance of each class (0 where the class has none).

        ASIS/SGPN's per-class group-size statistic of the training set: whole-room evaluation drops predicted
        instances smaller than a fraction (0.25) of it.
        """
        num_classes = len(self.class_names)
        sums, counts = np.zeros(num_classes), np.zeros(num_classes)
        for sem, ins in zip(self._sem, self._ins):
            valid = (ins >= 0) & (sem >= 0)
            ids, inverse, sizes = np.unique(ins[valid], return_inverse=True, return_counts=True)
            votes = np.zeros((ids.size, num_classes), dtype=np.int64)
            np.add.at(votes, (inverse, sem[valid]), 1)
            majority = votes.argmax(axis=1)                      # the class of each instance
            np.add.at(sums, majority, sizes)
            np.add.at(counts, majority, 1)
        return np.divide(sums, counts, out=np.zeros(num_classes), where=counts > 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def block_info(self, index: int) -> tuple[str, np.ndarray]:
        """(room name, block min corner (2,) in the room-relative frame) of item `index`."""
        room, local = int(self._block_room[index]), int(self._block_local[index])
        return self.room_names[room], self._partitions[room].origins[local]

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(points (P, 9) float32, sem (P,), ins (P,), room point indices (P,)) of block `index`, drawn with `rng`."""
        if not 0 <= index < len(self):
            raise IndexError(f'block index {index} out of range for {len(self)} blocks')
        room, local = int(self._block_room[index]), int(self._block_local[index])
        partition = self._partitions[room]
        members = partition.block_points(local)
        floor = self._floors[room]
        if not (self.augment and self.robot):
            chosen = self._draw(members, rng)
            xyz, sem, ins = self._xyz[room][chosen], self._sem[room][chosen], self._ins[room][chosen]
            rgb = self._rgb[room][chosen] / np.float32(255.0)          # colours stored as uint8
        else:
            from mpnet_model.data.transforms import BlockSample

            centre = partition.room_min[:2] + partition.origins[local] + partition.block_size / 2.0
            block = self.robot(BlockSample(self._xyz[room][members].astype(np.float64),
                                           self._rgb[room][members] / np.float32(255.0), self._sem[room][members],
                                           self._ins[room][members], members, floor if floor is not None else 0.0,
                                           centre, partition.block_size), rng)
            pick = self._draw(np.arange(len(block.xyz)), rng)
            xyz, rgb, sem, ins, chosen = block.xyz[pick], block.rgb[pick], block.sem[pick], block.ins[pick], \
                block.index[pick]
            floor = block.floor if floor is not None else None
        points = self._channels(xyz, rgb, partition, local, floor)                                # (P, 9)
        if self.augment:
            from mpnet_model.data.encoding import finish_block_channels

            points = self._augment(points, rng)
            finish_block_channels(points, self.encoding, partition.block_size)     # follows the rotated x, y
        return points, sem.astype(np.int64), ins.astype(np.int64), chosen

    def _draw(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """P of `members`: without replacement, or all of them plus random repeats when short."""
        if members.shape[0] >= self.num_points:
            return rng.choice(members, self.num_points, replace=False)
        extra = rng.choice(members, self.num_points - members.shape[0], replace=True)
        return rng.permutation(np.concatenate([members, extra]))

    def _channels(self, xyz: np.ndarray, rgb: np.ndarray, partition, local: int, floor: float | None) -> np.ndarray:
        """The 9 channels (P, 9) of points `xyz` (P, 3) of block `local` (as `block_features`, any xyz)."""
        from mpnet_model.data.encoding import fill_location_channels, finish_block_channels

        shifted = np.asarray(xyz).astype(np.float64) - partition.room_min                     # (P, 3)
        extent = np.where(partition.room_extent > 0, partition.room_extent, 1.0)
        points = np.empty((shifted.shape[0], NUM_CHANNELS), dtype=np.float32)
        points[:, 0:2] = shifted[:, :2] - (partition.origins[local] + partition.block_size / 2.0)
        points[:, 3:6] = rgb
        fill_location_channels(points, shifted, self.encoding, extent, floor, float(partition.room_min[2]))
        finish_block_channels(points, self.encoding, partition.block_size)
        return points

    @staticmethod
    def _augment(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        x, y = points[:, 0].copy(), points[:, 1].copy()
        points[:, 0] = cos * x - sin * y
        points[:, 1] = sin * x + cos * y
        points[:, 0:3] += np.clip(rng.normal(0.0, 0.01, size=(points.shape[0], 3)), -0.05, 0.05)
        return points

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        points, sem, ins, _ = self.sample(int(index), rng)
        return torch.from_numpy(points), torch.from_numpy(sem), torch.from_numpy(ins)
