"""`Room`: one annotated scene as flat per-point arrays, shared by all dataset loaders and the block cache."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import IGNORE_LABEL
from mpnet_model.io.atomic import atomic_write

# Version of the on-disk room cache layout; bump when the stored arrays change meaning.
# 2: lidar frames' intensity grey scaled on the returns within 8 m of the sensor (mpnet_model/infer/scene.py)
# 3: the sensor's position of a frame (origin), for its floor estimate (mpnet_model/infer/floor.py)
ROOM_CACHE_VERSION = 3


@dataclass
class Room:
    """A scene: coordinates in the dataset's own frame (not shifted), colours in [0, 1], labels -1 = none."""

    name: str
    xyz: np.ndarray          # (N, 3) float32
    rgb: np.ndarray          # (N, 3) float32 in [0, 1]
    sem: np.ndarray          # (N,) int64, index into class_names, -1 = unannotated
    ins: np.ndarray          # (N,) int64, instance id unique within the room, -1 = none
    class_names: tuple
    # Extension: name of each instance id (S3DIS: annotation file stem such as 'chair_2'), () when unknown.
    instance_names: tuple = ()
    # Extension: the sensor's position (3,) for a single sensor's frame (its level frame: the origin), else None.
    origin: tuple | None = None

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32)
        self.rgb = np.ascontiguousarray(self.rgb, dtype=np.float32)
        self.sem = np.ascontiguousarray(self.sem, dtype=np.int64)
        self.ins = np.ascontiguousarray(self.ins, dtype=np.int64)
        self.class_names = tuple(self.class_names)
        self.instance_names = tuple(self.instance_names)
        n = self.xyz.shape[0]
        expected = {'xyz': (n, 3), 'rgb': (n, 3), 'sem': (n,), 'ins': (n,)}
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise ValueError(f'room {self.name!r}: {key} has shape {getattr(self, key).shape}, expected {shape}')
        if n and (self.sem.min() < IGNORE_LABEL or self.sem.max() >= len(self.class_names)):
            raise ValueError(f'room {self.name!r}: semantic labels outside [-1, {len(self.class_names) - 1}]: '
                             f'min {self.sem.min()}, max {self.sem.max()}')
        if self.instance_names and n and self.ins.max() >= len(self.instance_names):
            raise ValueError(f'room {self.name!r}: instance id {self.ins.max()} has no entry in instance_names '
                             f'({len(self.instance_names)} names)')

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])


def save_room_npz(room: Room, path: str | os.PathLike, source_key: str = '') -> Path:
    """Write `room` to `path` atomically, compactly (rgb as uint8, labels as int32).

    `source_key` identifies the source files (e.g. their sizes and mtimes) so a stale cache can be detected.
    """
    path = Path(path)
    arrays = dict(
        version=np.int64(ROOM_CACHE_VERSION),
        name=np.array(room.name),
        class_names=np.array(room.class_names, dtype=str),
        instance_names=np.array(room.instance_names, dtype=str),
        source_key=np.array(source_key),
        xyz=room.xyz,
        rgb=np.round(room.rgb * 255.0).clip(0, 255).astype(np.uint8),
        sem=room.sem.astype(np.int32),
        ins=room.ins.astype(np.int32),
        origin=np.asarray(room.origin if room.origin is not None else (), np.float64),
    )
    with atomic_write(path) as stream:
        np.savez(stream, **arrays)
    return path


def read_cache_key(path: str | os.PathLike) -> str | None:
    """The `source_key` stored in a room cache file, or None if the file is missing, unreadable or outdated."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data['version']) != ROOM_CACHE_VERSION:
                return None
            return str(data['source_key'])
    except (OSError, KeyError, ValueError):
        return None


def load_room_npz(path: str | os.PathLike) -> Room:
    """Read a room written by `save_room_npz`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(data['version'])
            if version != ROOM_CACHE_VERSION:
                raise ValueError(f'{path}: room cache version {version}, expected {ROOM_CACHE_VERSION}; '
                                 'rebuild the cache')
            return Room(
                name=str(data['name']),
                xyz=data['xyz'],
                rgb=data['rgb'] / 255.0,   # float64, cast once by Room: same values as the loaders
                sem=data['sem'],
                ins=data['ins'],
                class_names=tuple(str(c) for c in data['class_names']),
                instance_names=tuple(str(c) for c in data['instance_names']),
                origin=tuple(float(v) for v in data['origin']) if data['origin'].size == 3 else None,
            )
    except KeyError as exc:
        raise ValueError(f'{path}: not a room cache file (missing array {exc})') from exc
