"""S3DIS (Stanford 3D Indoor Spaces) loader for the raw release layout.

Layout: `<root>/Area_N/<room>/Annotations/<class>_<k>.txt`, one point per line: `x y z r g b` (rgb 0..255).
Every annotation file is one object instance; `stairs` is folded into `clutter` (standard 13-class protocol).
The raw release has a few malformed lines (e.g. Area_5/hallway_6 contains a garbled `185\\x00187` token); those
lines are skipped with an `S3DISFormatWarning` naming the file and line numbers, never silently.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.room import Room, load_room_npz

AREAS = (1, 2, 3, 4, 5, 6)
# Raw annotation classes folded into a standard class.
CLASS_ALIASES = {'stairs': 'clutter'}
_CLASS_INDEX = {name: i for i, name in enumerate(S3DIS_CLASSES)}
_FIELDS_PER_LINE = 6
_MAX_REPORTED_LINES = 20


class S3DISFormatWarning(UserWarning):
    """A malformed line in an S3DIS annotation file was skipped."""


class Split(NamedTuple):
    train: tuple[int, ...]
    test: tuple[int, ...]


def area_split(test_area: int = 5) -> Split:
    """Train on every area but `test_area` (the standard Area-5 protocol with the default)."""
    if test_area not in AREAS:
        raise ValueError(f'test_area={test_area!r}: S3DIS areas are {AREAS}')
    return Split(train=tuple(a for a in AREAS if a != test_area), test=(test_area,))


def six_fold(fold: int) -> Split:
    """Fold `fold` (1..6) of the 6-fold cross-validation: test on Area_<fold>, train on the other five."""
    if fold not in AREAS:
        raise ValueError(f'fold={fold!r}: 6-fold cross-validation folds are {AREAS}')
    return area_split(fold)


def _area_name(area: int | str) -> str:
    if isinstance(area, str) and area.startswith('Area_'):
        return area
    return f'Area_{int(area)}'


def list_rooms(root: str | os.PathLike, areas=AREAS) -> list[Path]:
    """Room directories (those with an `Annotations/` folder) of the given areas, sorted by area then room name."""
    root = Path(root)
    rooms: list[Path] = []
    for area in areas:
        area_dir = root / _area_name(area)
        if not area_dir.is_dir():
            raise FileNotFoundError(f'S3DIS area directory not found: {area_dir}')
        rooms.extend(sorted((p for p in area_dir.iterdir() if (p / 'Annotations').is_dir()), key=_natural_key))
    return rooms


def room_name(room_dir: str | os.PathLike) -> str:
    """`Area_N_<room>`: unique across the dataset and safe as a file name."""
    room_dir = Path(room_dir)
    return f'{room_dir.parent.name}_{room_dir.name}'


def annotation_class(path: Path) -> str:
    """Standard class of an annotation file `<class>_<k>.txt`; raises ValueError for an unknown class."""
    raw = path.stem.rsplit('_', 1)[0]
    name = CLASS_ALIASES.get(raw, raw)
    if name not in _CLASS_INDEX:
        raise ValueError(f'{path}: unknown S3DIS class {raw!r}; known classes: {S3DIS_CLASSES} '
                         f'(+ aliases {CLASS_ALIASES})')
    return name


def load_room(path: str | os.PathLike) -> Room:
    """Load a room from its raw directory (`.../Area_N/<room>`) or from a room cache `.npz`.

    Instance ids are the running index of the room's annotation files in natural order (`chair_2` before
    `chair_10`); `Room.instance_names[i]` is the file stem of instance i.
    """
    path = Path(path)
    if path.suffix == '.npz':
        return load_room_npz(path)
    annotation_dir = path / 'Annotations'
    if not annotation_dir.is_dir():
        raise FileNotFoundError(f'S3DIS room has no Annotations directory: {annotation_dir}')
    files = sorted(annotation_dir.glob('*.txt'), key=_natural_key)
    if not files:
        raise ValueError(f'S3DIS room has no annotation files (*.txt): {annotation_dir}')

    class_ids = [_CLASS_INDEX[annotation_class(f)] for f in files]    # validate all names before parsing
    parts = [read_points_txt(f) for f in files]                        # each (n_i, 6) float64
    counts = np.array([p.shape[0] for p in parts])
    points = np.concatenate(parts, axis=0)
    return Room(
        name=room_name(path),
        xyz=points[:, :3],
        rgb=points[:, 3:6] / 255.0,
        sem=np.repeat(np.asarray(class_ids, dtype=np.int64), counts),
        ins=np.repeat(np.arange(len(files), dtype=np.int64), counts),
        class_names=S3DIS_CLASSES,
        instance_names=tuple(f.stem for f in files),
    )


def read_points_txt(path: str | os.PathLike) -> np.ndarray:
    """Parse an `x y z r g b` text file into (n, 6) float64.

    Fast path: `np.loadtxt`, whose C parser (numpy >= 1.23) measured faster here than `np.fromstring` or
    `np.array(text.split())` and rejects any line with a non-numeric token or a changed field count. Only when it
    fails is the file re-read line by line to report and skip the bad lines.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)    # "input contained no data": an empty file is fine
            points = np.loadtxt(path, dtype=np.float64, comments=None, ndmin=2)
        if points.shape[1] == _FIELDS_PER_LINE or points.size == 0:
            return points.reshape(-1, _FIELDS_PER_LINE)
    except ValueError:
        pass
    return _read_points_txt_slow(path, path.read_bytes())


def _read_points_txt_slow(path: Path, data: bytes) -> np.ndarray:
    rows: list[list[float]] = []
    bad_lines: list[int] = []
    for line_number, line in enumerate(data.decode('latin-1').split('\n'), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != _FIELDS_PER_LINE:
                raise ValueError
            rows.append([float(f) for f in fields])
        except ValueError:
            bad_lines.append(line_number)
    if bad_lines:
        shown = ', '.join(str(n) for n in bad_lines[:_MAX_REPORTED_LINES])
        more = f' (+{len(bad_lines) - _MAX_REPORTED_LINES} more)' if len(bad_lines) > _MAX_REPORTED_LINES else ''
        warnings.warn(f'{path}: skipped {len(bad_lines)} malformed line(s) (expected {_FIELDS_PER_LINE} numbers): '
                      f'line {shown}{more}', S3DISFormatWarning, stacklevel=3)
    return np.asarray(rows, dtype=np.float64).reshape(-1, _FIELDS_PER_LINE)


def _natural_key(path: Path) -> list:
    """Sort key so that `chair_2` comes before `chair_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path.name)]
