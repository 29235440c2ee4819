"""Writers of tiny datasets in the exact on-disk formats of the real releases, with the values a loader must return.

Expected coordinates are what the written decimal text parses to, so the round trip can be checked exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES, SCANNET_CLASSES

# Raw S3DIS rooms: annotation file names in the order the loader must assign instance ids (natural sort).
S3DIS_ROOMS = {
    'office_1': ['ceiling_1', 'chair_1', 'chair_2', 'chair_10', 'floor_1', 'stairs_1'],
    'hallway_6': ['table_1', 'wall_1'],   # named after the real room with the garbled line
}
# Malformed lines the writer inserts: (room, annotation, 1-based line number, text).
S3DIS_BAD_LINES = [
    ('hallway_6', 'wall_1', 3, '1.250 2.500 0.750 185\x00187 182'),   # garbled token, as in Area_5/hallway_6
    ('office_1', 'chair_2', 5, '0.100 0.200 0.300 10 20 30 40'),      # 7 fields
]


def _decimal_text(values: np.ndarray, fmt: str) -> tuple[list[str], np.ndarray]:
    """Format rows as text and return (lines, the float64 values those lines parse to)."""
    lines = [' '.join(fmt % v for v in row) for row in values]
    parsed = np.array([[float(tok) for tok in line.split()] for line in lines], dtype=np.float64)
    return lines, parsed


def write_s3dis_area(root: Path, area: int = 5, points_per_object: int = 7, seed: int = 0) -> dict[str, dict]:
    """Write `root/Area_<area>/<room>/Annotations/*.txt` (plus the whole-room `<room>.txt`) for `S3DIS_ROOMS`.

    Returns {room: {'xyz' (N,3) float32, 'rgb' (N,3) float32 in [0,1], 'sem' (N,), 'ins' (N,)}} as the loader
    must produce them (bad lines excluded).
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for room, annotation_names in S3DIS_ROOMS.items():
        annotation_dir = root / f'Area_{area}' / room / 'Annotations'
        annotation_dir.mkdir(parents=True, exist_ok=True)
        xyz_parts, rgb_parts, sem, ins, room_lines = [], [], [], [], []
        for instance, annotation in enumerate(annotation_names):
            xyz = rng.uniform(0.0, 4.0, size=(points_per_object, 3)) + [10.0, -3.0, 0.0]   # not at the origin
            rgb = rng.integers(0, 256, size=(points_per_object, 3))
            xyz_lines, xyz_parsed = _decimal_text(xyz, '%.3f')
            lines = [f'{a} {b} {c} {d}' for a, (b, c, d) in zip(xyz_lines, rgb)]
            for bad_room, bad_annotation, line_number, text in S3DIS_BAD_LINES:
                if (bad_room, bad_annotation) == (room, annotation):
                    lines.insert(line_number - 1, text)
            (annotation_dir / f'{annotation}.txt').write_text('\n'.join(lines) + '\n', encoding='latin-1')
            room_lines += lines
            class_name = annotation.rsplit('_', 1)[0]
            class_name = 'clutter' if class_name == 'stairs' else class_name
            xyz_parts.append(xyz_parsed)
            rgb_parts.append(rgb)
            sem += [S3DIS_CLASSES.index(class_name)] * points_per_object
            ins += [instance] * points_per_object
        (root / f'Area_{area}' / room / f'{room}.txt').write_text('\n'.join(room_lines) + '\n', encoding='latin-1')
        expected[room] = dict(
            xyz=np.concatenate(xyz_parts).astype(np.float32),
            rgb=(np.concatenate(rgb_parts) / 255.0).astype(np.float32),
            sem=np.array(sem, dtype=np.int64),
            ins=np.array(ins, dtype=np.int64),
        )
    return expected


# ScanNet fixture: (objectId, raw label, segment ids). `ceiling` is not a benchmark class, `mystery` is not in the
# label map, segment 3001 belongs to no object: their vertices must come out as sem = ins = -1.
SCANNET_GROUPS = [
    (0, 'office chair', [5, 17]),
    (1, 'wall', [200]),
    (2, 'ceiling', [9]),
    (3, 'kitchen counter', [44]),
    (4, 'mystery', [60]),
]
SCANNET_LABEL_ROWS = [   # raw_category, category, nyu40id
    ('office chair', 'chair', 5), ('wall', 'wall', 1), ('ceiling', 'ceiling', 22),
    ('kitchen counter', 'counter', 12), ('chair', 'chair', 5),
]
_NYU40_TO_CLASS = {5: 'chair', 1: 'wall', 12: 'counter'}


def write_scannet_label_map(path: Path) -> Path:
    """A `scannetv2-labels.combined.tsv` with the real column layout and a few rows."""
    header = ['id', 'raw_category', 'category', 'count', 'nyu40id', 'eigen13id', 'nyuClass', 'nyu40class',
              'eigen13class', 'ModelNet40', 'ModelNet10', 'ShapeNetCore55', 'synsetoffset', 'wnsynsetid',
              'wnsynsetkey', 'mpcat40', 'mpcat40index']
    rows = ['\t'.join(header)]
    for i, (raw, category, nyu40) in enumerate(SCANNET_LABEL_ROWS, start=1):
        rows.append('\t'.join([str(i), raw, category, '10', str(nyu40), '1', category, category, category,
                               '', '', '', '', '', '', category, '1']))
    path.write_text('\n'.join(rows) + '\n', encoding='utf-8')
    return path


def write_scannet_scene(root: Path, scene: str = 'scene0000_00', seed: int = 0) -> tuple[Path, Path, dict]:
    """Write `root/scans/<scene>/` (binary PLY mesh with faces, segs json, aggregation json) and the label tsv.

    Returns (scene_dir, label_map_tsv, expected {'xyz', 'rgb', 'sem', 'ins'}).
    """
    rng = np.random.default_rng(seed)
    scene_dir = root / 'scans' / scene
    scene_dir.mkdir(parents=True, exist_ok=True)
    segment_ids = np.array([5, 17, 200, 9, 44, 60, 3001])
    vertex_segments = rng.permutation(np.repeat(segment_ids, 4))        # (28,) every segment has 4 vertices
    n = vertex_segments.shape[0]
    xyz = rng.uniform(-2.0, 5.0, size=(n, 3)).astype(np.float32)
    rgba = rng.integers(0, 256, size=(n, 4)).astype(np.uint8)
    faces = rng.integers(0, n, size=(6, 3)).astype(np.int32)

    header = (f'ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\nelement vertex {n}\n'
              'property float x\nproperty float y\nproperty float z\n'
              'property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n'
              f'element face {faces.shape[0]}\nproperty list uchar int vertex_indices\nend_header\n')
    vertex_dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                             ('red', 'u1'), ('green', 'u1'), ('blue', 'u1'), ('alpha', 'u1')])
    vertices = np.empty(n, dtype=vertex_dtype)
    vertices['x'], vertices['y'], vertices['z'] = xyz.T
    vertices['red'], vertices['green'], vertices['blue'], vertices['alpha'] = rgba.T
    face_dtype = np.dtype([('count', 'u1'), ('indices', '<i4', (3,))])
    face_records = np.empty(faces.shape[0], dtype=face_dtype)
    face_records['count'], face_records['indices'] = 3, faces
    with open(scene_dir / f'{scene}_vh_clean_2.ply', 'wb') as handle:
        handle.write(header.encode('ascii'))
        handle.write(vertices.tobytes())
        handle.write(face_records.tobytes())

    segs = {'params': {'kThresh': '0.0001', 'segMinVerts': '20'}, 'sceneId': scene,
            'segIndices': vertex_segments.tolist()}
    (scene_dir / f'{scene}_vh_clean_2.0.010000.segs.json').write_text(json.dumps(segs))
    aggregation = {'sceneId': f'scannet.{scene}', 'appId': 'Aggregator.v2', 'segmentsFile': 'x',
                   'segGroups': [{'id': oid, 'objectId': oid, 'segments': segs_, 'label': label}
                                 for oid, label, segs_ in SCANNET_GROUPS]}
    (scene_dir / f'{scene}.aggregation.json').write_text(json.dumps(aggregation))
    label_map = write_scannet_label_map(root / 'scannetv2-labels.combined.tsv')

    raw_to_nyu = {raw: nyu for raw, _, nyu in SCANNET_LABEL_ROWS}
    sem = np.full(n, -1, dtype=np.int64)
    ins = np.full(n, -1, dtype=np.int64)
    for object_id, label, segments in SCANNET_GROUPS:
        class_name = _NYU40_TO_CLASS.get(raw_to_nyu.get(label, -1))
        if class_name is None:
            continue
        member = np.isin(vertex_segments, segments)
        sem[member] = SCANNET_CLASSES.index(class_name)
        ins[member] = object_id
    expected = dict(xyz=xyz, rgb=(rgba[:, :3] / 255.0).astype(np.float32), sem=sem, ins=ins)
    return scene_dir, label_map, expected
