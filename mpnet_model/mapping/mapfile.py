"""Semantic map files: `.npz` (numpy, compressed) and `.ply` (binary little-endian, one vertex per voxel), both
lossless and written atomically (`mpnet_model.io.atomic`). A missing file raises FileNotFoundError, anything else
wrong (not a map, truncated, a field missing or of the wrong shape, another voxel size or class list than the
mapper's) raises MapFileError; both name the file.

PLY vertex properties: x y z (voxel centroid), red green blue (class colour), label (255 = not segmented yet),
instance (-1 none), confidence, then the full state: ix iy iz (voxel index), colour_r/g/b (mean colour channels),
hits, occupancy, observations, last_seen, prob_0 .. prob_{C-1}. The header's comments carry the format name,
voxel size, class names, frame count and next instance id. Any PLY reader (CloudCompare, MeshLab, open3d) shows
the labelled voxels.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mpnet_model.data.classes import class_colour_table
from mpnet_model.io.atomic import atomic_write
from mpnet_model.mapping.fusion import labels_of
from mpnet_model.mapping.table import pack_voxels, unpack_voxels

FORMAT = 'mpnet-semantic-map'
VERSION = 1
SUFFIXES = ('.npz', '.ply')
_STATE = ('centroid', 'colour', 'hits', 'occupancy', 'probs', 'observations', 'instance', 'last_seen')


class MapFileError(ValueError):
    """A map file that cannot be used; the message names the file and the problem."""


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise MapFileError(f'{path}: map files are {" or ".join(SUFFIXES)}, not {suffix or "no suffix"!r}')
    return suffix


def _header(mapper: Any) -> dict:
    return {'format': FORMAT, 'version': VERSION, 'voxel_size': mapper.voxels.voxel_size,
            'class_names': list(mapper.class_names), 'frame': int(mapper.frame),
            'next_instance': int(mapper.next_instance)}


def save_map(mapper: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    suffix = _check_suffix(path)
    table = mapper.voxels.table
    if suffix == '.npz':
        with atomic_write(path, suffix='.tmp.npz') as stream:
            np.savez_compressed(stream, header=np.array(json.dumps(_header(mapper))), keys=table.keys,
                                **{name: table[name] for name in _STATE})
    else:
        records = _ply_records(mapper)
        header = _ply_header(_header(mapper), records.dtype, len(records))
        with atomic_write(path) as stream:
            stream.write(header.encode('ascii'))
            stream.write(records.tobytes())
    return path


def load_map(mapper: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such map file')
    header, keys, columns = _read_npz(path) if suffix == '.npz' else _read_ply(path, len(mapper.class_names))
    _check_header(path, header, mapper)
    expected = {name: (len(keys), *tail) for name, (tail, _, _) in mapper.voxels.table.spec.items() if name != 'tile'}
    for name, shape in expected.items():
        if name not in columns:
            raise MapFileError(f'{path}: field {name!r} is missing')
        if columns[name].shape != shape:
            raise MapFileError(f'{path}: field {name!r} has shape {columns[name].shape}, expected {shape}')
    if keys.ndim != 1 or (len(keys) > 1 and not (np.diff(keys) > 0).all()):
        raise MapFileError(f'{path}: voxel keys are not sorted and unique (corrupt file)')
    if not all(np.isfinite(columns[name]).all() for name in ('centroid', 'colour', 'occupancy', 'probs')):
        raise MapFileError(f'{path}: non-finite values in the voxel data (corrupt file)')
    mapper.restore(keys, columns, header['frame'], header['next_instance'])


def _check_header(path: Path, header: dict, mapper: Any) -> None:
    if not isinstance(header, dict) or header.get('format') != FORMAT:
        raise MapFileError(f'{path}: not a {FORMAT} file')
    if header.get('version') != VERSION:
        raise MapFileError(f'{path}: map format version {header.get("version")!r}, this reader reads {VERSION}')
    for key in ('voxel_size', 'class_names', 'frame', 'next_instance'):
        if key not in header:
            raise MapFileError(f'{path}: header lacks {key!r}')
    if abs(float(header['voxel_size']) - mapper.voxels.voxel_size) > 1e-9:
        raise MapFileError(f'{path}: voxel size {header["voxel_size"]} m, but the map is configured with '
                           f'{mapper.voxels.voxel_size} m')
    if tuple(header['class_names']) != tuple(mapper.class_names):
        raise MapFileError(f'{path}: made with classes {header["class_names"]}, the model has '
                           f'{list(mapper.class_names)}')


def _read_npz(path: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        header = json.loads(str(arrays.pop('header')))
        keys = arrays.pop('keys')
    except KeyError as exc:
        raise MapFileError(f'{path}: not a map file ({exc.args[0]!r} missing)') from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MapFileError(f'{path}: not a readable .npz map ({type(exc).__name__}: {exc})') from None
    return header, keys.astype(np.int64), arrays


# --- PLY -----------------------------------------------------------------------------------------------------

_PLY_TYPES = {'f4': 'float', 'u1': 'uchar', 'i4': 'int', 'u4': 'uint', 'u2': 'ushort'}
_PLY_NUMPY = {v: k for k, v in _PLY_TYPES.items()}


def _ply_dtype(num_classes: int) -> np.dtype:
    fields = [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'),
              ('label', 'u1'), ('instance', 'i4'), ('confidence', 'f4'), ('ix', 'i4'), ('iy', 'i4'), ('iz', 'i4'),
              ('colour_r', 'f4'), ('colour_g', 'f4'), ('colour_b', 'f4'), ('hits', 'u4'), ('occupancy', 'f4'),
              ('observations', 'u2'), ('last_seen', 'i4')] + [(f'prob_{c}', 'f4') for c in range(num_classes)]
    return np.dtype([(name, '<' + kind) for name, kind in fields])


def _ply_records(mapper: Any) -> np.ndarray:
    t = mapper.voxels.table
    num_classes = len(mapper.class_names)
    records = np.zeros(len(t), dtype=_ply_dtype(num_classes))
    labels, scores = labels_of(t['probs'], t['observations'])
    colour = class_colour_table(num_classes)[np.where(labels >= 0, labels, num_classes)]
    for axis, name in enumerate('xyz'):
        records[name] = t['centroid'][:, axis]
        records['i' + name] = unpack_voxels(t.keys)[:, axis]
    for axis, name in enumerate(('red', 'green', 'blue')):
        records[name] = colour[:, axis]
    for axis, name in enumerate(('colour_r', 'colour_g', 'colour_b')):
        records[name] = t['colour'][:, axis]
    records['label'] = np.where(labels >= 0, labels, 255)
    records['confidence'] = scores
    for name in ('instance', 'hits', 'occupancy', 'observations', 'last_seen'):
        records[name] = t[name]
    for c in range(num_classes):
        records[f'prob_{c}'] = t['probs'][:, c]
    return records


def _ply_header(meta: dict, dtype: np.dtype, count: int) -> str:
    lines = ['ply', 'format binary_little_endian 1.0', f'comment {FORMAT} {json.dumps(meta)}',
             f'element vertex {count}']
    lines += [f'property {_PLY_TYPES[dtype[name].str[1:]]} {name}' for name in dtype.names]
    return '\n'.join(lines + ['end_header']) + '\n'


def _read_ply(path: Path, num_classes: int) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    data = path.read_bytes()
    end = data.find(b'end_header\n')
    if not data.startswith(b'ply\n') or end < 0:
        raise MapFileError(f'{path}: not a PLY file (no ply / end_header lines)')
    lines = data[:end].decode('ascii', errors='replace').splitlines()
    if 'format binary_little_endian 1.0' not in lines:
        raise MapFileError(f'{path}: only binary little-endian PLY maps are read')
    meta = [line[len(f'comment {FORMAT} '):] for line in lines if line.startswith(f'comment {FORMAT} ')]
    if not meta:
        raise MapFileError(f'{path}: a PLY file, but not a {FORMAT} (no map header comment)')
    try:
        header = json.loads(meta[0])
        count = int(next(line.split()[2] for line in lines if line.startswith('element vertex ')))
        fields = [(line.split()[2], '<' + _PLY_NUMPY[line.split()[1]]) for line in lines
                  if line.startswith('property ')]
        dtype = np.dtype(fields)
    except (ValueError, StopIteration, KeyError, IndexError) as exc:
        raise MapFileError(f'{path}: bad PLY header ({type(exc).__name__}: {exc})') from None
    if dtype != _ply_dtype(num_classes):
        raise MapFileError(f'{path}: PLY properties differ from a {num_classes}-class map')
    body = data[end + len(b'end_header\n'):]
    if len(body) != count * dtype.itemsize:
        raise MapFileError(f'{path}: truncated or padded: {len(body)} bytes of vertex data for {count} vertices '
                           f'({count * dtype.itemsize} expected)')
    records = np.frombuffer(body, dtype=dtype)
    keys = pack_voxels(np.stack([records['ix'], records['iy'], records['iz']], 1).astype(np.int64))
    columns = {'centroid': np.stack([records[a] for a in 'xyz'], 1),
               'colour': np.stack([records[a] for a in ('colour_r', 'colour_g', 'colour_b')], 1),
               'probs': np.stack([records[f'prob_{c}'] for c in range(num_classes)], 1).reshape(count, num_classes)}
    for name in ('hits', 'occupancy', 'observations', 'instance', 'last_seen'):
        columns[name] = np.array(records[name])
    return header, keys, columns
