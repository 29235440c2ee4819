"""ScanNetV2 loader: mesh vertices of `<scene>_vh_clean_2.ply` with the 20 benchmark classes and object instances.

Files of a scene directory `<scene>/`:
  `<scene>_vh_clean_2.ply`                 binary PLY, vertex x y z (float) red green blue (alpha) (uchar)
  `<scene>_vh_clean_2.0.010000.segs.json`  `segIndices`: over-segment id per vertex
  `<scene>.aggregation.json`               `segGroups`: objects with `objectId`, `label` (raw category), `segments`
plus the label map `scannetv2-labels.combined.tsv` (`raw_category` -> `nyu40id`). Vertices outside every object,
or whose object is not one of the 20 benchmark classes, get sem = -1 and ins = -1.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import IGNORE_LABEL, SCANNET_CLASSES, SCANNET_NYU40_IDS
from mpnet_model.data.room import Room, load_room_npz

# PLY scalar type names (both spellings of the spec) -> numpy type codes.
_PLY_TYPES = {
    'char': 'i1', 'int8': 'i1', 'uchar': 'u1', 'uint8': 'u1', 'short': 'i2', 'int16': 'i2',
    'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4', 'uint': 'u4', 'uint32': 'u4',
    'float': 'f4', 'float32': 'f4', 'double': 'f8', 'float64': 'f8',
}
_PLY_ENDIAN = {'binary_little_endian': '<', 'binary_big_endian': '>'}
_NYU40_TO_INDEX = {nyu: i for i, nyu in enumerate(SCANNET_NYU40_IDS)}


class PlyFormatError(ValueError):
    """A PLY file is malformed or uses a layout this reader does not support."""


def read_ply_vertices(path: str | os.PathLike) -> np.ndarray:
    """The vertex element of a binary PLY file as a numpy structured array (one field per scalar property).

    The vertex element must come first and have only scalar properties (true for ScanNet meshes); the face
    element after it is not read.
    """
    path = Path(path)
    with open(path, 'rb') as handle:
        if handle.readline().strip() != b'ply':
            raise PlyFormatError(f'{path}: not a PLY file (missing "ply" magic line)')
        endian = None
        elements: list[tuple[str, int, list[tuple[str, str]]]] = []
        while True:
            raw = handle.readline()
            if not raw:
                raise PlyFormatError(f'{path}: header has no end_header line')
            words = raw.decode('ascii', errors='replace').split()
            if not words or words[0] in ('comment', 'obj_info'):
                continue
            if words[0] == 'end_header':
                break
            if words[0] == 'format':
                if len(words) < 2 or words[1] not in _PLY_ENDIAN:
                    raise PlyFormatError(f'{path}: unsupported PLY format {" ".join(words[1:])!r}; '
                                         f'supported: {sorted(_PLY_ENDIAN)}')
                endian = _PLY_ENDIAN[words[1]]
            elif words[0] == 'element':
                elements.append((words[1], int(words[2]), []))
            elif words[0] == 'property':
                if not elements:
                    raise PlyFormatError(f'{path}: property before any element: {raw!r}')
                if words[1] == 'list':
                    elements[-1][2].append((words[-1], 'list'))
                elif words[1] in _PLY_TYPES:
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
                else:
                    raise PlyFormatError(f'{path}: unknown PLY property type {words[1]!r}')
        if endian is None:
            raise PlyFormatError(f'{path}: header has no format line')
        if not elements or elements[0][0] != 'vertex':
            raise PlyFormatError(f'{path}: the first PLY element must be "vertex", got {[e[0] for e in elements]}')
        _, count, properties = elements[0]
        if any(kind == 'list' for _, kind in properties):
            raise PlyFormatError(f'{path}: list properties in the vertex element are not supported')
        dtype = np.dtype([(name, endian + code) for name, code in properties])
        vertices = np.fromfile(handle, dtype=dtype, count=count)
    if vertices.shape[0] != count:
        raise PlyFormatError(f'{path}: truncated: header declares {count} vertices, file holds {vertices.shape[0]}')
    return vertices


def read_label_map(tsv_path: str | os.PathLike, label_from: str = 'raw_category',
                   label_to: str = 'nyu40id') -> dict[str, int]:
    """`scannetv2-labels.combined.tsv` as {raw_category: nyu40id}; rows with an empty target are skipped."""
    tsv_path = Path(tsv_path)
    with open(tsv_path, newline='', encoding='utf-8') as handle:
        reader = csv.DictReader(handle, delimiter='\t')
        missing = [c for c in (label_from, label_to) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{tsv_path}: label map lacks column(s) {missing}; columns: {reader.fieldnames}')
        mapping = {}
        for line_number, row in enumerate(reader, start=2):
            target = (row[label_to] or '').strip()
            if not target:
                continue
            try:
                mapping[row[label_from]] = int(target)
            except ValueError as exc:
                raise ValueError(f'{tsv_path}:{line_number}: {label_to}={target!r} is not an integer') from exc
    return mapping


def scene_files(scene_dir: str | os.PathLike) -> dict[str, Path]:
    """Paths of a scene's mesh, over-segmentation and aggregation (ScanNetV2 or `_vh_clean` aggregation name)."""
    scene_dir = Path(scene_dir)
    scene = scene_dir.name
    aggregation = scene_dir / f'{scene}.aggregation.json'
    if not aggregation.exists():
        aggregation = scene_dir / f'{scene}_vh_clean.aggregation.json'
    return {
        'mesh': scene_dir / f'{scene}_vh_clean_2.ply',
        'segs': scene_dir / f'{scene}_vh_clean_2.0.010000.segs.json',
        'aggregation': aggregation,
    }


def load_scene(scene_dir: str | os.PathLike, label_map_tsv: str | os.PathLike | dict[str, int]) -> Room:
    """Load a ScanNetV2 scene directory (or a room cache `.npz`) as a `Room` with the 20 benchmark classes.

    `label_map_tsv` may also be a mapping already read with `read_label_map` (saves re-reading it per scene).
    Instance ids are the aggregation's `objectId`s.
    """
    scene_dir = Path(scene_dir)
    if scene_dir.suffix == '.npz':
        return load_room_npz(scene_dir)
    files = scene_files(scene_dir)
    for key, path in files.items():
        if not path.exists():
            raise FileNotFoundError(f'ScanNet scene {scene_dir.name}: missing {key} file {path}')
    label_map = label_map_tsv if isinstance(label_map_tsv, dict) else read_label_map(label_map_tsv)

    vertices = read_ply_vertices(files['mesh'])
    for field in ('x', 'y', 'z', 'red', 'green', 'blue'):
        if field not in vertices.dtype.names:
            raise PlyFormatError(f'{files["mesh"]}: vertex element lacks property {field!r}')
    xyz = np.stack([vertices['x'], vertices['y'], vertices['z']], axis=1).astype(np.float32)        # (N, 3)
    rgb = np.stack([vertices['red'], vertices['green'], vertices['blue']], axis=1) / 255.0   # float64 then Room casts

    seg_indices = np.asarray(_read_json(files['segs'])['segIndices'], dtype=np.int64)          # (N,)
    if seg_indices.shape[0] != xyz.shape[0]:
        raise ValueError(f'{files["segs"]}: {seg_indices.shape[0]} segIndices for {xyz.shape[0]} mesh vertices')
    groups = _read_json(files['aggregation'])['segGroups']
    sem, ins = _labels_from_groups(seg_indices, groups, label_map, files['aggregation'])
    return Room(name=scene_dir.name, xyz=xyz, rgb=rgb, sem=sem, ins=ins, class_names=SCANNET_CLASSES)


def _labels_from_groups(seg_indices: np.ndarray, groups: list[dict], label_map: dict[str, int],
                        source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (sem, ins): each vertex takes the object whose `segments` contain its segment id.

    A segment listed by several objects goes to the last one, as in ScanNet's own export scripts.
    """
    unique_segments, vertex_to_segment = np.unique(seg_indices, return_inverse=True)
    segment_sem = np.full(unique_segments.shape[0], IGNORE_LABEL, dtype=np.int64)
    segment_ins = np.full(unique_segments.shape[0], IGNORE_LABEL, dtype=np.int64)
    for group in groups:
        try:
            label, object_id, segments = group['label'], int(group['objectId']), group['segments']
        except KeyError as exc:
            raise ValueError(f'{source}: segGroup lacks key {exc}: {str(group)[:200]}') from exc
        class_index = _NYU40_TO_INDEX.get(label_map.get(label, -1), IGNORE_LABEL)
        if class_index == IGNORE_LABEL:
            continue   # unknown raw label or not a benchmark class: leave the vertices unannotated
        segments = np.asarray(segments, dtype=np.int64)
        position = np.searchsorted(unique_segments, segments).clip(max=unique_segments.shape[0] - 1)
        position = position[unique_segments[position] == segments]   # drop segments absent from the mesh
        segment_sem[position] = class_index
        segment_ins[position] = object_id
    return segment_sem[vertex_to_segment], segment_ins[vertex_to_segment]


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path}: invalid JSON: {exc}') from exc


def list_scenes(root: str | os.PathLike, split_file: str | os.PathLike | None = None) -> list[Path]:
    """Scene directories under `root` (`scans/`), restricted to the names in `split_file` (one per line) if given."""
    root = Path(root)
    if split_file is None:
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith('scene'))
    names = [line.strip() for line in Path(split_file).read_text().splitlines() if line.strip()]
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f'{len(missing)} scene(s) of {split_file} missing under {root}: {missing[:5]}')
    return [root / n for n in names]


LABEL_MAP_NAME = 'scannetv2-labels.combined.tsv'


def load_room(path: str | os.PathLike, label_map_tsv: str | os.PathLike | dict[str, int] | None = None) -> Room:
    """`load_scene` with the label map found next to the data when not given (scene dir, `scans/` or its parent)."""
    path = Path(path)
    if label_map_tsv is None and path.suffix != '.npz':
        candidates = [path / LABEL_MAP_NAME, path.parent / LABEL_MAP_NAME, path.parent.parent / LABEL_MAP_NAME]
        label_map_tsv = next((c for c in candidates if c.exists()), None)
        if label_map_tsv is None:
            raise FileNotFoundError(f'ScanNet label map {LABEL_MAP_NAME} not found in {[str(c) for c in candidates]}; '
                                    'pass label_map_tsv')
    return load_scene(path, label_map_tsv)
