"""Synthetic labelled indoor rooms written in the S3DIS raw on-disk layout.

Why: the real S3DIS cannot be downloaded here, so training, evaluation and the rare-case study run on rooms
that look like S3DIS to every consumer (same 13 classes, same files, similar class imbalance and scanner
artefacts). Each room is a set of oriented boxes ("parts") grouped into instances; points are sampled on
the box faces, then hidden points are removed the way a multi-station scanner would miss them:

1. points outside the room or inside any solid part are dropped (floor under a bookcase, wall behind a door);
2. a point is kept only if at least one virtual scanner sees its face (back-face test) without another
   object's box in between (ray / oriented-box slab test);
3. random elliptical holes, Gaussian position noise (~5 mm), per-instance colours with per-point noise and
   low-frequency shading on floor/walls/ceiling.

Layout on disk (what `mpnet_model.data.s3dis.load_room` reads)::

    <root>/Area_<a>/<room>/<room>.txt                  all points, "x y z r g b"
    <root>/Area_<a>/<room>/Annotations/<class>_<k>.txt  one instance, "%.3f %.3f %.3f %d %d %d"
    <root>/Area_<a>/<room>/synthetic_meta.json          sidecar: room type, bounds, instances, rare cases

The room file is the concatenation of the annotation files in instance-id order, as in S3DIS.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.io.atomic import atomic_write, atomic_write_text

CLASS_INDEX = {name: i for i, name in enumerate(S3DIS_CLASSES)}
META_FILENAME = 'synthetic_meta.json'
DEFAULT_DENSITY = 1500.0      # points per m^2 of surface before occlusion: ~100-300k points per room
DEFAULT_NOISE = 0.005         # metres, std of the Gaussian position noise
DEFAULT_RARE_PROB = 0.2       # probability that a room gets rare arrangements (1-2 of them)
ROOM_TYPES = ('office', 'conferenceRoom', 'hallway', 'lobby', 'storage')
ROOM_TYPE_WEIGHTS = (0.5, 0.16, 0.12, 0.08, 0.14)
RARE_KINDS = ('stacked_chairs', 'back_to_back_chairs', 'sofa_in_middle', 'rotated_table', 'chair_on_table',
              'tipped_chair')

# Class-typical colours as (hue, saturation, value) choices; each object jitters the chosen one.
_PALETTES: dict[str, list[tuple[float, float, float]]] = {
    'ceiling': [(0.12, 0.04, 0.88), (0.6, 0.03, 0.80), (0.1, 0.08, 0.75)],
    'floor': [(0.6, 0.08, 0.38), (0.08, 0.45, 0.45), (0.1, 0.2, 0.62), (0.55, 0.15, 0.30)],
    'wall': [(0.12, 0.08, 0.82), (0.1, 0.15, 0.75), (0.6, 0.05, 0.70), (0.3, 0.06, 0.78)],
    'beam': [(0.12, 0.05, 0.80), (0.6, 0.04, 0.72)],
    'column': [(0.12, 0.08, 0.78), (0.6, 0.05, 0.68)],
    'window': [(0.58, 0.15, 0.55), (0.6, 0.05, 0.80)],
    'door': [(0.08, 0.55, 0.50), (0.6, 0.06, 0.55), (0.07, 0.4, 0.30), (0.55, 0.25, 0.45)],
    'table': [(0.09, 0.5, 0.55), (0.1, 0.05, 0.85), (0.6, 0.04, 0.45), (0.08, 0.6, 0.35)],
    'chair': [(0.0, 0.0, 0.15), (0.62, 0.5, 0.35), (0.0, 0.6, 0.45), (0.6, 0.05, 0.40), (0.1, 0.4, 0.5)],
    'sofa': [(0.6, 0.4, 0.40), (0.05, 0.5, 0.40), (0.3, 0.3, 0.35), (0.1, 0.2, 0.70), (0.0, 0.0, 0.2)],
    'bookcase': [(0.08, 0.5, 0.45), (0.6, 0.04, 0.55), (0.1, 0.3, 0.70)],
    'board': [(0.0, 0.0, 0.93), (0.35, 0.4, 0.30), (0.6, 0.02, 0.88)],
}
_METAL = (0.6, 0.04, 0.35)


@dataclass
class _Part:
    """An oriented box: world point = rot @ local + centre, local in [-half, half]."""
    inst: int
    centre: np.ndarray            # (3,)
    half: np.ndarray              # (3,)
    rot: np.ndarray               # (3,3)
    faces: tuple[bool, ...]       # sampled faces in local order -x, +x, -y, +y, -z, +z
    rgb: np.ndarray               # (3,) in [0, 1]
    density: float = 1.0          # multiplier of the room's sampling density (glass is sparse)
    solid: bool = True            # points of other parts inside it are removed
    occluder: bool = True         # casts shadows towards the scanners


@dataclass
class _LocalPart:
    """A part in its object's frame (origin at the footprint centre, z=0 on the support, +y = front)."""
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    rgb: np.ndarray
    faces: tuple[bool, ...] = (True, True, True, True, False, True)
    density: float = 1.0
    occluder: bool = True


@dataclass
class _Instance:
    cls: str
    rare: str | None = None


@dataclass
class _Scene:
    """Mutable layout state of one room while objects are placed."""
    rng: np.random.Generator
    size: np.ndarray                                  # (3,) L, W, H
    parts: list[_Part] = field(default_factory=list)
    instances: list[_Instance] = field(default_factory=list)
    footprints: list[tuple[float, float, float, float]] = field(default_factory=list)   # xmin ymin xmax ymax
    wall_spans: dict[int, list[tuple[float, float, float, float]]] = field(default_factory=dict)  # s0 s1 z0 z1
    tables: list[tuple[np.ndarray, np.ndarray, float, float, float]] = field(default_factory=list)  # R t w d h

    def add(self, cls: str, local_parts: list[_LocalPart], rot: np.ndarray, trans: np.ndarray,
            rare: str | None = None, solid: bool = True) -> int:
        inst = len(self.instances)
        self.instances.append(_Instance(cls, rare))
        for p in local_parts:
            lo, hi = np.asarray(p.lo, float), np.asarray(p.hi, float)
            centre = rot @ ((lo + hi) / 2) + trans
            self.parts.append(_Part(inst, centre, (hi - lo) / 2, rot, p.faces, p.rgb, p.density, solid, p.occluder))
        return inst


# ----------------------------------------------------------------------------------------------- geometry
def _rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _corners(local_parts: list[_LocalPart], rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """World corners (8*P, 3) of an object's parts."""
    lo = np.array([p.lo for p in local_parts])
    hi = np.array([p.hi for p in local_parts])
    pick = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing='ij')).reshape(3, 8).T     # (8,3)
    corners = np.where(pick[None, :, :] == 1, hi[:, None, :], lo[:, None, :]).reshape(-1, 3)
    return corners @ rot.T + trans


def _footprint(local_parts, rot, trans) -> tuple[float, float, float, float]:
    c = _corners(local_parts, rot, trans)
    return float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max())


def _rest_on(local_parts, rot, x: float, y: float, support_z: float) -> np.ndarray:
    """Translation that puts the rotated object's lowest corner 5 mm into its support (hides the contact)."""
    zmin = _corners(local_parts, rot, np.zeros(3))[:, 2].min()
    return np.array([x, y, support_z - zmin - 0.005])


def _wall_pose(size: np.ndarray, wall: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose of a point `s` metres along wall `wall` (0: y=0, 1: x=L, 2: y=W, 3: x=0, counter-clockwise):
    local x runs along the wall, local +y points into the room."""
    length, width = size[0], size[1]
    origin = [(s, 0.0), (length, s), (length - s, width), (0.0, width - s)][wall]
    return _rot_z(wall * np.pi / 2), np.array([origin[0], origin[1], 0.0])


def _wall_length(size: np.ndarray, wall: int) -> float:
    return float(size[0] if wall % 2 == 0 else size[1])


# ----------------------------------------------------------------------------------------------- colours
def _colour(rng: np.random.Generator, cls: str) -> np.ndarray:
    """An object's base colour: a class-typical palette entry with per-object hue/saturation/value jitter."""
    if cls == 'clutter':
        h, s, v = rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.25, 0.9)
    else:
        options = _PALETTES[cls]
        h, s, v = options[rng.integers(len(options))]
        h, s, v = h + rng.normal(0, 0.02), s + rng.normal(0, 0.04), v + rng.normal(0, 0.05)
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0.05, 1))))


def _jitter(rng: np.random.Generator, rgb: np.ndarray, amount: float = 0.04) -> np.ndarray:
    return np.clip(rgb + rng.normal(0, amount, 3), 0, 1)


def _box(lo, hi, rgb, faces=(True, True, True, True, False, True), density=1.0, occluder=True) -> _LocalPart:
    return _LocalPart(tuple(lo), tuple(hi), rgb, faces, density, occluder)


# ----------------------------------------------------------------------------------------------- objects
def _chair_parts(rng: np.random.Generator, swivel: bool | None = None) -> list[_LocalPart]:
    """Seat + back + 4 legs (or a swivel base); back at -y, the sitter faces +y."""
    w, d = rng.uniform(0.42, 0.52), rng.uniform(0.40, 0.50)
    seat_h, seat_t = rng.uniform(0.42, 0.48), 0.05
    back_h, back_t = rng.uniform(0.35, 0.55), 0.04
    fabric, frame = _colour(rng, 'chair'), _jitter(rng, np.array(colorsys.hsv_to_rgb(*_METAL)))
    parts = [_box((-w / 2, -d / 2, seat_h - seat_t), (w / 2, d / 2, seat_h), fabric, faces=(True,) * 6),
             _box((-w / 2, -d / 2 - back_t, seat_h - seat_t), (w / 2, -d / 2, seat_h + back_h), fabric)]
    leg_top = seat_h - seat_t
    if (rng.random() < 0.35) if swivel is None else swivel:      # swivel chair: pole + cross base
        parts.append(_box((-0.025, -0.025, 0.06), (0.025, 0.025, leg_top), frame))
        parts.append(_box((-0.3, -0.03, 0.0), (0.3, 0.03, 0.06), frame))
        parts.append(_box((-0.03, -0.3, 0.0), (0.03, 0.3, 0.06), frame))
        return parts
    r = 0.015
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - 0.03), sy * (d / 2 - 0.03)
            parts.append(_box((cx - r, cy - r, 0.0), (cx + r, cy + r, leg_top), frame))
    return parts


def _table_parts(rng: np.random.Generator, w: float, d: float, h: float) -> list[_LocalPart]:
    top_t = rng.uniform(0.025, 0.05)
    rgb = _colour(rng, 'table')
    legs = _jitter(rng, rgb * 0.7) if rng.random() < 0.5 else _jitter(rng, np.array(colorsys.hsv_to_rgb(*_METAL)))
    parts = [_box((-w / 2, -d / 2, h - top_t), (w / 2, d / 2, h), rgb, faces=(True,) * 6)]
    if rng.random() < 0.3:     # panel ends
        for sx in (-1, 1):
            x0 = sx * (w / 2 - 0.04)
            parts.append(_box((min(x0, x0 + sx * 0.03), -d / 2 + 0.05, 0.0), (max(x0, x0 + sx * 0.03),
                              d / 2 - 0.05, h - top_t), legs))
    else:
        r = 0.025
        for sx in (-1, 1):
            for sy in (-1, 1):
                cx, cy = sx * (w / 2 - 0.06), sy * (d / 2 - 0.06)
                parts.append(_box((cx - r, cy - r, 0.0), (cx + r, cy + r, h - top_t), legs))
    return parts


def _sofa_parts(rng: np.random.Generator) -> list[_LocalPart]:
    w, d, seat_h = rng.uniform(1.5, 2.3), rng.uniform(0.8, 0.95), rng.uniform(0.38, 0.45)
    rgb = _colour(rng, 'sofa')
    arm = rng.uniform(0.12, 0.22)
    return [_box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, seat_h), rgb),
            _box((-w / 2, -d / 2, seat_h), (w / 2, -d / 2 + 0.22, seat_h + rng.uniform(0.3, 0.45)), rgb),
            _box((-w / 2, -d / 2 + 0.22, seat_h), (-w / 2 + arm, d / 2, seat_h + 0.2), rgb),
            _box((w / 2 - arm, -d / 2 + 0.22, seat_h), (w / 2, d / 2, seat_h + 0.2), rgb)]


def _bookcase_parts(rng: np.random.Generator, w: float, d: float, h: float) -> list[_LocalPart]:
    """Open shelves with rows of books (labelled bookcase, as in S3DIS), or a closed cabinet."""
    rgb = _colour(rng, 'bookcase')
    if rng.random() < 0.3:
        return [_box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), rgb)]
    t = 0.02
    parts = [_box((-w / 2, -d / 2, 0.0), (-w / 2 + t, d / 2, h), rgb),
             _box((w / 2 - t, -d / 2, 0.0), (w / 2, d / 2, h), rgb),
             _box((-w / 2, -d / 2, 0.0), (w / 2, -d / 2 + 0.01, h), rgb),
             _box((-w / 2, -d / 2, h - t), (w / 2, d / 2, h), rgb),
             _box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, 0.08), rgb)]
    n_shelves = max(1, int(round((h - 0.1) / 0.36)))
    levels = np.linspace(0.08, h - t, n_shelves + 1)
    for z0, z1 in zip(levels[:-1], levels[1:], strict=True):
        if z0 > 0.08:
            parts.append(_box((-w / 2 + t, -d / 2, z0 - t), (w / 2 - t, d / 2, z0), rgb))
        if rng.random() < 0.75:   # a row of books standing on this shelf
            x = -w / 2 + t
            while x < w / 2 - t - 0.05:
                bw = min(rng.uniform(0.05, 0.3), w / 2 - t - x)
                if rng.random() < 0.8:
                    bh = min(rng.uniform(0.15, 0.3), z1 - z0 - t - 0.02)
                    book = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.8)))
                    parts.append(_box((x, -d / 2 + 0.01, z0), (x + bw, -d / 2 + 0.01 + rng.uniform(0.15, d - 0.03),
                                                                z0 + bh), book, occluder=False))
                x += bw
    return parts


def _clutter_parts(rng: np.random.Generator, where: str) -> list[_LocalPart]:
    """Small objects: monitors, boxes, paper stacks, bottles on tables; boxes, bins, plants on the floor."""
    rgb = _colour(rng, 'clutter')
    kind = rng.random()
    if where == 'table':
        if kind < 0.3:      # monitor on a stand
            sw, sh = rng.uniform(0.4, 0.6), rng.uniform(0.28, 0.38)
            dark = _jitter(rng, np.array([0.08, 0.08, 0.09]), 0.02)
            return [_box((-0.12, -0.1, 0.0), (0.12, 0.1, 0.015), dark),
                    _box((-0.025, -0.02, 0.015), (0.025, 0.02, 0.12), dark),
                    _box((-sw / 2, -0.05, 0.1), (sw / 2, -0.02, 0.1 + sh), dark, faces=(True,) * 6)]
        if kind < 0.55:     # paper stack / laptop base
            return [_box((-0.15, -0.11, 0.0), (0.15, 0.11, rng.uniform(0.01, 0.05)), _jitter(rng, rgb))]
        if kind < 0.75:     # bottle / cup
            r, h = rng.uniform(0.03, 0.05), rng.uniform(0.08, 0.28)
            return [_box((-r, -r, 0.0), (r, r, h), rgb)]
        a, b, c = rng.uniform(0.08, 0.35, 3)
        return [_box((-a / 2, -b / 2, 0.0), (a / 2, b / 2, c), rgb)]
    if where == 'wall':     # picture, poster, switch box: thin, proud of the wall
        a, c = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.8)
        return [_box((-a / 2, -0.02, 0.0), (a / 2, rng.uniform(0.01, 0.05), c), rgb,
                     faces=(True, True, False, True, True, True))]
    if kind < 0.35:         # bin / pot plant
        r, h = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.5)
        parts = [_box((-r, -r, 0.0), (r, r, h), rgb)]
        if rng.random() < 0.5:
            leaf = np.array(colorsys.hsv_to_rgb(rng.uniform(0.22, 0.36), 0.6, rng.uniform(0.25, 0.5)))
            parts.append(_box((-r * 1.8, -r * 1.8, h), (r * 1.8, r * 1.8, h + rng.uniform(0.3, 0.8)), leaf))
        return parts
    a, b, c = rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.6)
    parts = [_box((-a / 2, -b / 2, 0.0), (a / 2, b / 2, c), rgb)]
    if rng.random() < 0.4:  # a second box on top
        a2, b2 = a * rng.uniform(0.5, 0.9), b * rng.uniform(0.5, 0.9)
        parts.append(_box((-a2 / 2, -b2 / 2, c), (a2 / 2, b2 / 2, c + rng.uniform(0.1, 0.4)), _jitter(rng, rgb, 0.1)))
    return parts


# ----------------------------------------------------------------------------------------------- placement
def _free(scene: _Scene, rect: tuple[float, float, float, float], clearance: float = 0.05) -> bool:
    """True when the rectangle lies inside the room and overlaps no placed footprint."""
    x0, y0, x1, y1 = rect
    length, width = scene.size[0], scene.size[1]
    if x0 < -0.01 or y0 < -0.01 or x1 > length + 0.01 or y1 > width + 0.01:
        return False
    if not scene.footprints:
        return True
    fp = np.asarray(scene.footprints)
    overlap = (x0 < fp[:, 2] + clearance) & (x1 > fp[:, 0] - clearance) & \
              (y0 < fp[:, 3] + clearance) & (y1 > fp[:, 1] - clearance)
    return not bool(overlap.any())


def _wall_free(scene: _Scene, wall: int, s0: float, s1: float, z0: float, z1: float) -> bool:
    for a0, a1, b0, b1 in scene.wall_spans.get(wall, []):
        if s0 < a1 + 0.1 and s1 > a0 - 0.1 and z0 < b1 and z1 > b0:
            return False
    return True


def _place_on_wall(scene: _Scene, cls: str, parts: list[_LocalPart], width: float, z0: float, z1: float,
                   wall: int | None = None, tries: int = 20, offset: float = 0.0,
                   floor_depth: float = 0.0) -> int | None:
    """Put an object flat against a wall (local y=0 on the wall plane, +offset), not overlapping other
    wall objects in the same height band; floor_depth > 0 also reserves floor space in front of it."""
    rng = scene.rng
    for _ in range(tries):
        w = int(rng.integers(4)) if wall is None else wall
        length = _wall_length(scene.size, w)
        if length < width + 0.2:
            continue
        s = rng.uniform(0.1 + width / 2, length - 0.1 - width / 2)
        if not _wall_free(scene, w, s - width / 2, s + width / 2, z0, z1):
            continue
        rot, trans = _wall_pose(scene.size, w, s)
        trans = trans + rot @ np.array([0.0, offset, z0])
        if floor_depth > 0:
            reserve = [_box((-width / 2, -offset, -z0), (width / 2, floor_depth - offset, 0.1 - z0), parts[0].rgb)]
            rect = _footprint(reserve, rot, trans)
            if not _free(scene, rect, 0.02):
                continue
            scene.footprints.append(rect)
        scene.wall_spans.setdefault(w, []).append((s - width / 2, s + width / 2, z0, z1))
        return scene.add(cls, parts, rot, trans)
    return None


def _place_on_floor(scene: _Scene, cls: str, parts: list[_LocalPart], against_wall: bool, tries: int = 30,
                    rare: str | None = None, yaw: float | None = None, clearance: float = 0.05,
                    region: tuple[float, float, float, float] | None = None) -> int | None:
    """Place an object on the floor, either back to a wall (facing into the room) or free-standing."""
    rng = scene.rng
    lo = np.array([p.lo for p in parts]).min(0)
    hi = np.array([p.hi for p in parts]).max(0)
    for _ in range(tries):
        if against_wall:
            w = int(rng.integers(4))
            length, width = _wall_length(scene.size, w), hi[0] - lo[0]
            if length < width + 0.1:
                continue
            s = rng.uniform(width / 2 + 0.02, length - width / 2 - 0.02)
            if hi[2] > 0.9 and not _wall_free(scene, w, s - width / 2, s + width / 2, 0.0, hi[2]):
                continue
            rot, base = _wall_pose(scene.size, w, s)
            trans = base + rot @ np.array([0.0, -lo[1] + rng.uniform(0.0, 0.04), 0.0])
            trans[2] = -0.005
        else:
            x0, y0, x1, y1 = region or (0.3, 0.3, scene.size[0] - 0.3, scene.size[1] - 0.3)
            if x1 <= x0 or y1 <= y0:
                return None
            rot = _rot_z(rng.uniform(0, 2 * np.pi) if yaw is None else yaw)
            trans = _rest_on(parts, rot, rng.uniform(x0, x1), rng.uniform(y0, y1), 0.0)
        rect = _footprint(parts, rot, trans)
        if not _free(scene, rect, clearance):
            continue
        scene.footprints.append(rect)
        if against_wall and hi[2] > 0.9:
            scene.wall_spans.setdefault(w, []).append((s - (hi[0] - lo[0]) / 2, s + (hi[0] - lo[0]) / 2, 0.0, hi[2]))
        return scene.add(cls, parts, rot, trans, rare=rare)
    return None


def _place_table_group(scene: _Scene, w: float, d: float, n_sides: int, against_wall: bool = False,
                       yaw: float | None = None, rare: str | None = None, centre: tuple[float, float] | None = None,
                       tries: int = 30) -> bool:
    """A table with chairs facing it (pushed in or pulled out, slightly turned). Placed as one footprint."""
    rng = scene.rng
    h = rng.uniform(0.71, 0.77)
    table = _table_parts(rng, w, d, h)
    chair_sets: list[tuple[list[_LocalPart], np.ndarray, np.ndarray]] = []   # chair parts, local rot, local pos
    sides = [(0.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0)][:n_sides]
    if against_wall:
        sides = [(0.0, 1.0)]
    for sx, sy in sides:
        edge = w if sx == 0 else d
        n = max(1, int(edge // 0.65)) if not against_wall else 1
        n = int(rng.integers(max(1, n - 1), n + 1))
        along = (np.arange(n) + 0.5) / n * edge - edge / 2
        for a in along:
            parts = _chair_parts(rng)
            out = (d / 2 if sx == 0 else w / 2) + rng.uniform(0.05, 0.45)
            pos = np.array([a, out * sy, 0.0]) if sx == 0 else np.array([out * sx, a, 0.0])
            # yaw that turns the chair's front (+y) towards the table: Rz(yaw) @ (0,1) = (-sx, -sy)
            facing = (np.pi if sy > 0 else 0.0) if sx == 0 else sx * np.pi / 2
            rot = _rot_z(facing + rng.normal(0, 0.25))
            chair_sets.append((parts, rot, pos))
    for _ in range(tries):
        if against_wall:
            wall = int(rng.integers(4))
            length = _wall_length(scene.size, wall)
            if length < w + 0.2:
                continue
            s = rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05)
            g_rot, base = _wall_pose(scene.size, wall, s)
            # the desk faces the wall: its chair side (+y local) points into the room
            g_trans = base + g_rot @ np.array([0.0, d / 2 + 0.02, 0.0])
        else:
            g_rot = _rot_z(rng.choice([0.0, np.pi / 2]) if yaw is None else yaw)
            if centre is not None:
                cx, cy = centre
            else:   # sample the centre where the whole group (table + chairs) fits inside the room
                ext = np.array([_footprint(table, g_rot, np.zeros(3))]
                               + [_footprint(p, g_rot @ r, g_rot @ q) for p, r, q in chair_sets])
                lo_x, lo_y = 0.05 - ext[:, 0].min(), 0.05 - ext[:, 1].min()
                hi_x, hi_y = scene.size[0] - 0.05 - ext[:, 2].max(), scene.size[1] - 0.05 - ext[:, 3].max()
                if hi_x <= lo_x or hi_y <= lo_y:
                    return False
                cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            g_trans = np.array([cx, cy, 0.0])
        rects = [_footprint(table, g_rot, g_trans)]
        for parts, rot, pos in chair_sets:
            rects.append(_footprint(parts, g_rot @ rot, g_rot @ pos + g_trans))
        r = np.array(rects)
        group = (r[:, 0].min(), r[:, 1].min(), r[:, 2].max(), r[:, 3].max())
        if not _free(scene, group, 0.1):
            continue
        scene.footprints.append(group)
        scene.add('table', table, g_rot, g_trans + np.array([0, 0, -0.005]), rare=rare)
        scene.tables.append((g_rot, g_trans, w, d, h))
        for parts, rot, pos in chair_sets:
            scene.add('chair', parts, g_rot @ rot, g_rot @ pos + g_trans + np.array([0, 0, -0.005]))
        return True
    return False


def _add_table_clutter(scene: _Scene, count: int) -> None:
    rng = scene.rng
    for _ in range(count):
        if not scene.tables:
            return
        rot, trans, w, d, h = scene.tables[int(rng.integers(len(scene.tables)))]
        parts = _clutter_parts(rng, 'table')
        lx, ly = rng.uniform(-w / 2 + 0.2, w / 2 - 0.2), rng.uniform(-d / 2 + 0.15, d / 2 - 0.15)
        yaw = rng.normal(0, 0.3) + np.arctan2(rot[1, 0], rot[0, 0])
        pos = rot @ np.array([lx, ly, 0.0]) + trans
        r = _rot_z(yaw)
        scene.add('clutter', parts, r, _rest_on(parts, r, pos[0], pos[1], h))


# ----------------------------------------------------------------------------------------------- layouts
def _structure(scene: _Scene) -> None:
    """Floor, ceiling and 4 walls as slabs just outside the room, sampled on their inner face only."""
    rng = scene.rng
    length, width, height = scene.size
    t = 0.1
    only = [tuple(i == k for i in range(6)) for k in range(6)]
    slabs = [('floor', (-t, -t, -t), (length + t, width + t, 0.0), only[5]),
             ('ceiling', (-t, -t, height), (length + t, width + t, height + t), only[4]),
             ('wall', (0.0, -t, 0.0), (length, 0.0, height), only[3]),
             ('wall', (length, 0.0, 0.0), (length + t, width, height), only[0]),
             ('wall', (0.0, width, 0.0), (length, width + t, height), only[2]),
             ('wall', (-t, 0.0, 0.0), (0.0, width, height), only[1])]
    wall_rgb = _colour(rng, 'wall')
    for cls, lo, hi, faces in slabs:
        rgb = _jitter(rng, wall_rgb, 0.015) if cls == 'wall' else _colour(rng, cls)
        scene.add(cls, [_LocalPart(lo, hi, rgb, faces, occluder=False)], np.eye(3), np.zeros(3), solid=False)


def _columns_and_beams(scene: _Scene, p_column: float, p_beam: float) -> None:
    rng = scene.rng
    length, width, height = scene.size
    if rng.random() < p_column:
        rgb = _colour(rng, 'column')
        for _ in range(int(rng.integers(1, 3))):
            cw, cd = rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.5)
            wall = int(rng.integers(4))
            wl = _wall_length(scene.size, wall)
            s = cw / 2 - 0.05 if rng.random() < 0.5 else rng.uniform(cw, wl - cw)   # corner or along the wall
            rot, base = _wall_pose(scene.size, wall, s)
            parts = [_box((-cw / 2, -0.05, -0.01), (cw / 2, cd, height + 0.01), _jitter(rng, rgb, 0.02),
                          faces=(True, True, True, True, False, False))]
            x0, y0, x1, y1 = _footprint(parts, rot, base)      # the part inside the wall does not count
            rect = (max(x0, 0.0), max(y0, 0.0), min(x1, length), min(y1, width))
            if _free(scene, rect, 0.0):
                scene.footprints.append(rect)
                scene.wall_spans.setdefault(wall, []).append((s - cw / 2, s + cw / 2, 0.0, height))
                scene.add('column', parts, rot, base)
    if rng.random() < p_beam:
        rgb = _colour(rng, 'beam')
        along_x = rng.random() < 0.5
        span = length if along_x else width
        across = width if along_x else length
        for pos in rng.uniform(0.5, across - 0.5, size=int(rng.integers(1, 3))):
            bw, bd = rng.uniform(0.2, 0.45), rng.uniform(0.25, 0.5)
            if along_x:
                lo, hi = (-0.05, pos - bw / 2, height - bd), (span + 0.05, pos + bw / 2, height + 0.01)
            else:
                lo, hi = (pos - bw / 2, -0.05, height - bd), (pos + bw / 2, span + 0.05, height + 0.01)
            scene.add('beam', [_box(lo, hi, _jitter(rng, rgb, 0.02), faces=(True, True, True, True, True, False))],
                      np.eye(3), np.zeros(3))


def _openings(scene: _Scene, n_doors: int, n_windows: int, n_boards: int) -> None:
    """Doors, windows and boards embedded in the walls, slightly proud of the wall plane (as in S3DIS)."""
    rng = scene.rng
    height = scene.size[2]
    back = (True, True, False, True, True, True)
    for _ in range(n_doors):
        w, h = (rng.uniform(0.8, 1.0) * (2 if rng.random() < 0.1 else 1)), min(rng.uniform(2.0, 2.2), height - 0.2)
        proud, frame = rng.uniform(0.01, 0.04), 0.06
        rgb = _colour(rng, 'door')
        frame_rgb = _jitter(rng, rgb * 0.8 if rng.random() < 0.5 else np.array([0.8, 0.8, 0.78]))
        parts = [_box((-w / 2, -0.06, 0.0), (w / 2, proud, h), rgb, faces=back),
                 _box((-w / 2 - frame, -0.06, 0.0), (-w / 2, proud + 0.015, h + frame), frame_rgb, faces=back),
                 _box((w / 2, -0.06, 0.0), (w / 2 + frame, proud + 0.015, h + frame), frame_rgb, faces=back),
                 _box((-w / 2, -0.06, h), (w / 2, proud + 0.015, h + frame), frame_rgb, faces=back),
                 _box((w / 2 - 0.14, proud, 0.98), (w / 2 - 0.06, proud + 0.06, 1.02), np.array([0.6, 0.6, 0.6]))]
        _place_on_wall(scene, 'door', parts, w + 2 * frame, -0.005, h + frame, floor_depth=0.8)
    walls = [int(rng.integers(4))]
    for _ in range(n_windows):
        w = rng.uniform(1.0, 2.5)
        sill = rng.uniform(0.6, 0.95)
        h = min(rng.uniform(1.2, 1.8), height - sill - 0.2)
        bar, proud = 0.05, rng.uniform(0.015, 0.05)
        rgb = _colour(rng, 'window')
        glass = _jitter(rng, np.array([0.35, 0.42, 0.5]) * rng.uniform(0.6, 1.3), 0.05)
        parts = [_box((-w / 2, -0.06, 0.0), (w / 2, 0.005, h), glass, faces=back, density=0.5, occluder=False),
                 _box((-w / 2, -0.06, 0.0), (w / 2, proud, bar), rgb, faces=back),
                 _box((-w / 2, -0.06, h - bar), (w / 2, proud, h), rgb, faces=back),
                 _box((-w / 2, -0.06, bar), (-w / 2 + bar, proud, h - bar), rgb, faces=back),
                 _box((w / 2 - bar, -0.06, bar), (w / 2, proud, h - bar), rgb, faces=back)]
        if w > 1.2:
            parts.append(_box((-bar / 2, -0.06, bar), (bar / 2, proud, h - bar), rgb, faces=back))
        _place_on_wall(scene, 'window', parts, w, sill, sill + h, wall=walls[0] if rng.random() < 0.8 else None)
    for _ in range(n_boards):
        w, h = rng.uniform(1.0, 3.0), rng.uniform(0.9, 1.3)
        bottom = rng.uniform(0.8, 1.0)
        proud = rng.uniform(0.01, 0.025)
        rgb = _colour(rng, 'board')
        parts = [_box((-w / 2, -0.03, 0.0), (w / 2, proud, h), rgb, faces=back),
                 _box((-w / 2, -0.03, -0.03), (w / 2, proud + 0.06, 0.0), _jitter(rng, np.array([0.6, 0.6, 0.6])),
                      faces=back)]
        _place_on_wall(scene, 'board', parts, w, bottom - 0.03, bottom + h)


def _furniture(scene: _Scene, room_type: str) -> None:
    rng = scene.rng
    length, width, height = scene.size
    area = length * width
    if room_type == 'conferenceRoom':
        w, d = min(rng.uniform(2.4, 4.0), max(length, width) - 2.0), rng.uniform(1.0, 1.4)
        yaw = 0.0 if length >= width else np.pi / 2
        _place_table_group(scene, max(w, 1.2), d, 4, yaw=yaw, centre=(length / 2 + rng.normal(0, 0.2),
                                                                        width / 2 + rng.normal(0, 0.2)))
        n_bookcases, n_sofas = int(rng.integers(0, 2)), int(rng.random() < 0.15)
        n_floor_clutter = int(rng.integers(2, 5))
        for _ in range(int(rng.integers(0, 5))):    # spare chairs lined up along the walls
            _place_on_floor(scene, 'chair', _chair_parts(rng), against_wall=True)
    elif room_type == 'office':
        for _ in range(int(rng.integers(2, 4 + int(area > 25)))):
            w, d = rng.uniform(1.2, 1.8), rng.uniform(0.6, 0.8)
            if rng.random() < 0.6:
                _place_table_group(scene, w, d, 1, against_wall=True)
            else:
                _place_table_group(scene, w, d, 2)
        n_bookcases, n_sofas = int(rng.integers(1, 4)), int(rng.random() < 0.1)
        n_floor_clutter = int(rng.integers(3, 7))
        for _ in range(int(rng.integers(0, 3))):    # visitor chairs
            _place_on_floor(scene, 'chair', _chair_parts(rng), against_wall=rng.random() < 0.5)
    elif room_type == 'lobby':
        n_sofas = int(rng.integers(1, 3))
        _place_table_group(scene, rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.7), int(rng.integers(0, 3)))
        n_bookcases, n_floor_clutter = int(rng.integers(0, 2)), int(rng.integers(3, 7))
    elif room_type == 'storage':
        n_bookcases, n_sofas, n_floor_clutter = int(rng.integers(2, 6)), 0, int(rng.integers(5, 12))
        if rng.random() < 0.5:
            _place_table_group(scene, rng.uniform(1.0, 1.6), rng.uniform(0.6, 0.8), 0, against_wall=False)
    else:  # hallway
        n_bookcases, n_sofas, n_floor_clutter = int(rng.random() < 0.3), int(rng.random() < 0.05), 2
    for _ in range(n_sofas):
        _place_on_floor(scene, 'sofa', _sofa_parts(rng), against_wall=True)
    for _ in range(n_bookcases):
        w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.3, 0.45), min(rng.uniform(0.9, 2.2), height - 0.3)
        _place_on_floor(scene, 'bookcase', _bookcase_parts(rng, w, d, h), against_wall=True)
    for _ in range(n_floor_clutter):
        _place_on_floor(scene, 'clutter', _clutter_parts(rng, 'floor'), against_wall=rng.random() < 0.7)
    _add_table_clutter(scene, int(rng.integers(1, 3)) * len(scene.tables) + int(rng.integers(0, 2)))
    for _ in range(int(rng.integers(1, 6))):
        parts = _clutter_parts(rng, 'wall')
        top = max(p.hi[2] for p in parts)
        z0 = rng.uniform(1.0, max(1.05, height - 0.3 - top))
        _place_on_wall(scene, 'clutter', parts, max(p.hi[0] - p.lo[0] for p in parts), z0, z0 + top)


def _rare(scene: _Scene, kind: str) -> bool:
    """One rare arrangement (the paper's "pattern imbalance"); its instances are flagged with `kind`."""
    rng = scene.rng
    length, width = scene.size[0], scene.size[1]
    if kind == 'stacked_chairs':     # identical chairs nested 9 cm apart; the overlap is hidden by solids
        base = _chair_parts(rng, swivel=False)
        first = _place_on_floor(scene, 'chair', base, against_wall=rng.random() < 0.6, rare=kind, clearance=0.1)
        if first is None:
            return False
        head = scene.parts[-len(base)]
        anchor = head.centre - head.rot @ ((np.array(base[0].lo) + np.array(base[0].hi)) / 2)
        for level in range(1, int(rng.integers(2, 5))):
            scene.add('chair', base, head.rot, anchor + np.array([0.0, 0.0, 0.09 * level]), rare=kind)
        return True
    if kind == 'back_to_back_chairs':
        a, b = _chair_parts(rng), _chair_parts(rng)
        gap = max(-p.lo[1] for p in a) + max(-p.lo[1] for p in b)    # backs touch
        rot_a = _rot_z(rng.uniform(0, 2 * np.pi))
        rot_b = rot_a @ _rot_z(np.pi)
        for _ in range(30):
            trans = np.array([rng.uniform(0.6, length - 0.6), rng.uniform(0.6, width - 0.6), -0.005])
            trans_b = trans + rot_a @ np.array([0.0, -gap, 0.0])
            r = np.array([_footprint(a, rot_a, trans), _footprint(b, rot_b, trans_b)])
            rect = (r[:, 0].min(), r[:, 1].min(), r[:, 2].max(), r[:, 3].max())
            if _free(scene, rect, 0.1):
                scene.footprints.append(rect)
                scene.add('chair', a, rot_a, trans, rare=kind)
                scene.add('chair', b, rot_b, trans_b, rare=kind)
                return True
        return False
    if kind == 'sofa_in_middle':
        region = (length * 0.3, width * 0.3, length * 0.7, width * 0.7)
        return _place_on_floor(scene, 'sofa', _sofa_parts(rng), False, rare=kind, region=region) is not None
    if kind == 'rotated_table':
        yaw = rng.choice([-1, 1]) * rng.uniform(np.pi / 12, 5 * np.pi / 12)
        before = len(scene.instances)
        if not _place_table_group(scene, rng.uniform(1.0, 1.6), rng.uniform(0.6, 0.9), int(rng.integers(0, 3)),
                                  yaw=yaw):
            return False
        scene.instances[before].rare = kind      # only the table itself is unusual
        return True
    if kind == 'chair_on_table':
        if not scene.tables:
            return False
        rot, trans, w, d, h = scene.tables[int(rng.integers(len(scene.tables)))]
        parts = _chair_parts(rng)
        r = _rot_z(rng.uniform(0, 2 * np.pi))
        pos = rot @ np.array([rng.uniform(-w / 4, w / 4), rng.uniform(-d / 6, d / 6), 0.0]) + trans
        scene.add('chair', parts, r, _rest_on(parts, r, pos[0], pos[1], h), rare=kind)
        return True
    if kind == 'tipped_chair':   # lying on its back on the floor
        parts = _chair_parts(rng)
        rot = _rot_z(rng.uniform(0, 2 * np.pi)) @ _rot_x(np.pi / 2)
        for _ in range(30):
            trans = _rest_on(parts, rot, rng.uniform(0.6, length - 0.6), rng.uniform(0.6, width - 0.6), 0.0)
            rect = _footprint(parts, rot, trans)
            if _free(scene, rect, 0.1):
                scene.footprints.append(rect)
                scene.add('chair', parts, rot, trans, rare=kind)
                return True
        return False
    raise ValueError(f'unknown rare arrangement {kind!r}; expected one of {RARE_KINDS}')


# ----------------------------------------------------------------------------------------------- points
@dataclass
class _PartArrays:
    centre: np.ndarray     # (P,3)
    half: np.ndarray       # (P,3)
    rot: np.ndarray        # (P,3,3)
    faces: np.ndarray      # (P,6) bool
    rgb: np.ndarray        # (P,3)
    density: np.ndarray    # (P,)
    solid: np.ndarray      # (P,) bool
    occluder: np.ndarray   # (P,) bool
    inst: np.ndarray       # (P,) int64

    @classmethod
    def from_parts(cls, parts: list[_Part]) -> _PartArrays:
        return cls(np.array([p.centre for p in parts]), np.array([p.half for p in parts]),
                   np.array([p.rot for p in parts]), np.array([p.faces for p in parts], bool),
                   np.array([p.rgb for p in parts]), np.array([p.density for p in parts]),
                   np.array([p.solid for p in parts], bool), np.array([p.occluder for p in parts], bool),
                   np.array([p.inst for p in parts], np.int64))

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds (P,3), (P,3) of every part."""
        extent = np.einsum('pij,pj->pi', np.abs(self.rot), self.half)
        return self.centre - extent, self.centre + extent


def _sample_faces(arr: _PartArrays, density: float, rng: np.random.Generator):
    """Uniform points on the enabled faces: xyz (n,3), outward normal (n,3), part index (n,)."""
    part, face = np.nonzero(arr.faces)                      # (F,)
    axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
    u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3
    rows = np.arange(part.size)
    half = arr.half[part]                                   # (F,3)
    rot = arr.rot[part]                                     # (F,3,3)
    normal = rot[rows, :, axis] * sign[:, None]             # (F,3) world
    centre = arr.centre[part] + normal * half[rows, axis][:, None]
    u = rot[rows, :, u_axis] * half[rows, u_axis][:, None]  # (F,3) half-edge vectors
    v = rot[rows, :, v_axis] * half[rows, v_axis][:, None]
    area = 4.0 * half[rows, u_axis] * half[rows, v_axis]
    counts = rng.poisson(area * density * arr.density[part])
    of_point = np.repeat(rows, counts)                      # (n,)
    st = rng.uniform(-1.0, 1.0, size=(of_point.size, 2))
    xyz = centre[of_point] + st[:, :1] * u[of_point] + st[:, 1:] * v[of_point]
    return xyz, normal[of_point], part[of_point]


def _inside_solids(xyz_sorted: np.ndarray, arr: _PartArrays, shrink: float = 0.002) -> np.ndarray:
    """Mask (n,) of points strictly inside any solid part. Points must be sorted by x so each part only
    tests the slice of points within its x-range (a loop over parts, vectorised over points)."""
    inside = np.zeros(len(xyz_sorted), bool)
    lo, hi = arr.aabb()
    xs = xyz_sorted[:, 0]
    for k in np.flatnonzero(arr.solid):
        a, b = np.searchsorted(xs, [lo[k, 0], hi[k, 0]])
        if a == b:
            continue
        local = (xyz_sorted[a:b] - arr.centre[k]) @ arr.rot[k]     # (m,3) = R^T (p - c)
        inside[a:b] |= np.all(np.abs(local) < arr.half[k] - shrink, axis=1)
    return inside


def _visible(xyz: np.ndarray, normal: np.ndarray, inst: np.ndarray, arr: _PartArrays,
             scanners: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Mask (n,) of points seen by at least one scanner: the face turns towards it and no other object's
    box cuts the segment scanner->point.

    Vectorised over (point, occluder) pairs: a cheap cone test against each occluder's bounding sphere
    picks candidate pairs, then an exact slab test in the occluder's frame decides.
    """
    unseen = np.ones(len(xyz), bool)
    # thin sticks (legs, poles, handles) cast negligible shadows: only parts at least 8 cm wide in two axes
    occ = np.flatnonzero(arr.occluder & (np.sort(arr.half, axis=1)[:, 1] >= 0.04))
    if occ.size == 0:
        return np.ones(len(xyz), bool)
    centre, half, rot, occ_inst = arr.centre[occ], arr.half[occ], arr.rot[occ], arr.inst[occ]
    radius = np.linalg.norm(half, axis=1)                                       # (K,)
    for scanner in scanners:
        cand = np.flatnonzero(unseen & (np.einsum('ij,ij->i', normal, scanner - xyz) > 0))
        to_occ = centre - scanner                                               # (K,3)
        occ_dist = np.linalg.norm(to_occ, axis=1)
        occ_dir = to_occ / occ_dist[:, None]
        # cosine of the half-angle of the cone that holds the sphere; -1 when the scanner is inside it
        cos_cone = np.where(occ_dist > radius, np.sqrt(np.clip(1 - (radius / occ_dist) ** 2, 0, 1)), -1.0)
        origin_local = np.einsum('kji,kj->ki', rot, scanner - centre)           # (K,3) = R^T (s - c)
        shadow = np.zeros(cand.size, bool)
        for a in range(0, cand.size, chunk):
            idx = cand[a:a + chunk]
            ray = xyz[idx] - scanner                                            # (m,3)
            dist = np.linalg.norm(ray, axis=1)
            near = (ray / dist[:, None]).astype(np.float32) @ occ_dir.T.astype(np.float32) > cos_cone   # (m,K)
            near &= dist[:, None] > (occ_dist - radius)
            near &= inst[idx][:, None] != occ_inst
            pi, ki = np.nonzero(near)                                           # candidate pairs
            if pi.size == 0:
                continue
            seg = np.einsum('pji,pj->pi', rot[ki], ray[pi])                     # (pairs,3) local direction
            with np.errstate(divide='ignore', invalid='ignore'):
                inv = 1.0 / seg
                t1 = (-half[ki] - origin_local[ki]) * inv
                t2 = (half[ki] - origin_local[ki]) * inv
                t_near = np.minimum(t1, t2).max(axis=1)
                t_far = np.maximum(t1, t2).min(axis=1)
                # the box must sit at least 1 cm in front of the point
                hit = (t_near <= t_far) & (t_far > 0) & (t_near < 1.0 - 0.01 / dist[pi])
            shadow[a + pi[hit]] = True
        unseen[cand[~shadow]] = False
    return ~unseen


def _scanner_positions(scene: _Scene, arr: _PartArrays) -> np.ndarray:
    """2-4 tripod positions (1.3-1.7 m high) in free floor space, not inside any object."""
    rng = scene.rng
    length, width = scene.size[0], scene.size[1]
    count = int(np.clip(round(length * width / 12.0) + 1, 2, 4))
    lo, hi = arr.aabb()
    lo, hi = lo[arr.occluder] - 0.1, hi[arr.occluder] + 0.1
    positions = []
    for i in range(count):
        best = None
        for _ in range(60):
            # spread the stations: station i samples its x in the i-th slice of the longer side
            frac = (i + rng.uniform(0.15, 0.85)) / count
            p = np.array([frac * length, rng.uniform(0.4, width - 0.4), rng.uniform(1.3, 1.7)])
            if width > length:
                p[:2] = rng.uniform(0.4, length - 0.4), frac * width
            best = p
            if not np.any(np.all((p >= lo) & (p <= hi), axis=1)):
                break
        positions.append(best)
    return np.array(positions)


def _elliptical_holes(xyz_sorted: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Mask (n,) of points inside `count` random ellipsoids centred on existing points (missing returns)."""
    drop = np.zeros(len(xyz_sorted), bool)
    if count == 0 or len(xyz_sorted) == 0:
        return drop
    xs = xyz_sorted[:, 0]
    for c in rng.integers(len(xyz_sorted), size=count):
        axes = rng.uniform(0.04, 0.3, 3)
        centre = xyz_sorted[c]
        a, b = np.searchsorted(xs, [centre[0] - axes[0], centre[0] + axes[0]])
        drop[a:b] |= np.sum(((xyz_sorted[a:b] - centre) / axes) ** 2, axis=1) < 1.0
    return drop


def _shade(xyz: np.ndarray, normal: np.ndarray, base: np.ndarray, sem: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Point colours (n,3) uint8: base colour x face lighting x low-frequency stains (strong on floor, walls
    and ceiling, so they are not uniform) + per-point sensor noise."""
    light = 0.82 + 0.18 * normal[:, 2] + 0.05 * normal[:, 0] - 0.03 * normal[:, 1]      # (n,)
    waves = rng.normal(0, 1, (4, 3))
    waves *= (2 * np.pi / rng.uniform(0.6, 4.0, 4) / np.linalg.norm(waves, axis=1))[:, None]
    stain = np.sin(xyz @ waves.T + rng.uniform(0, 2 * np.pi, 4)).mean(axis=1)           # (n,)
    structural = np.isin(sem, [CLASS_INDEX['ceiling'], CLASS_INDEX['floor'], CLASS_INDEX['wall']])
    amount = np.where(structural, 0.12, 0.04)
    rgb = base * (light * (1.0 + amount * stain))[:, None] + rng.normal(0, 0.025, base.shape)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def generate_room(rng: np.random.Generator, room_type: str | None = None, density: float = DEFAULT_DENSITY,
                  noise: float = DEFAULT_NOISE, rare_prob: float = DEFAULT_RARE_PROB,
                  size: tuple[float, float, float] | None = None, offset: bool = True,
                  hole_rate: float = 0.15, min_instance_points: int = 10):
    """One labelled room. Returns (xyz (N,3) float32, rgb (N,3) uint8, sem (N,) int64, ins (N,) int64, meta).

    Points are ordered by instance id; instance i is the annotation file `meta['instances'][i]['name']`
    (`<class>_<k>`), ids in the natural order of those names, so `s3dis.load_room` gives back the same ids.
    `density` is points per m^2 before occlusion, `rare_prob` the chance that the room receives 1-2 rare
    arrangements (see RARE_KINDS), `offset` moves the room away from the origin like S3DIS area coordinates,
    `hole_rate` is elliptical holes per m^2 of room surface.
    """
    if density <= 0:
        raise ValueError(f'density must be > 0 points/m^2, got {density}')
    if noise < 0:
        raise ValueError(f'noise must be >= 0 m, got {noise}')
    if not 0.0 <= rare_prob <= 1.0:
        raise ValueError(f'rare_prob must be in [0, 1], got {rare_prob}')
    if room_type is None:
        room_type = str(rng.choice(ROOM_TYPES, p=ROOM_TYPE_WEIGHTS))
    elif room_type not in ROOM_TYPES:
        raise ValueError(f'unknown room_type {room_type!r}; expected one of {ROOM_TYPES}')
    if size is None:
        ranges = {'office': ((3, 8), (3, 8)), 'conferenceRoom': ((4.5, 8), (4, 8)), 'lobby': ((5, 8), (5, 8)),
                  'storage': ((3, 5), (3, 5)), 'hallway': ((1.8, 3.0), (6, 10))}[room_type]
        dims = [rng.uniform(*ranges[0]), rng.uniform(*ranges[1])]
        if rng.random() < 0.5:
            dims.reverse()
        size = (dims[0], dims[1], rng.uniform(2.6, 3.5))
    if min(size) < 1.5:
        raise ValueError(f'room size {size} too small: every side must be >= 1.5 m')
    scene = _Scene(rng, np.asarray(size, float))

    _structure(scene)
    _columns_and_beams(scene, p_column=0.35, p_beam=0.25)
    n_doors = int(rng.integers(2, 5)) if room_type == 'hallway' else int(rng.integers(1, 4))
    n_windows = 0 if room_type in ('hallway', 'storage') else int(rng.integers(1, 4))
    p_board = {'office': 0.5, 'conferenceRoom': 0.85, 'hallway': 0.1, 'lobby': 0.1, 'storage': 0.05}[room_type]
    _openings(scene, n_doors, n_windows, int(rng.random() < p_board) + int(rng.random() < p_board / 4))
    _furniture(scene, room_type)
    rare_done: list[str] = []
    if rng.random() < rare_prob:
        wanted = int(rng.integers(1, 3))
        for kind in rng.permutation(RARE_KINDS):     # a kind that does not fit this room yields to the next
            if len(rare_done) < wanted and _rare(scene, str(kind)):
                rare_done.append(str(kind))

    arr = _PartArrays.from_parts(scene.parts)
    xyz, normal, part = _sample_faces(arr, density, rng)
    in_room = np.all((xyz >= -1e-6) & (xyz <= scene.size + 1e-6), axis=1)
    xyz, normal, part = xyz[in_room], normal[in_room], part[in_room]
    order = np.argsort(xyz[:, 0], kind='stable')
    xyz, normal, part = xyz[order], normal[order], part[order]
    keep = ~_inside_solids(xyz, arr)
    keep &= _visible(xyz, normal, arr.inst[part], arr, _scanner_positions(scene, arr))
    xyz, normal, part = xyz[keep], normal[keep], part[keep]
    surface = float(np.prod(scene.size[:2]) * 2 + 2 * scene.size[2] * scene.size[:2].sum())
    keep = ~_elliptical_holes(xyz, rng, int(rng.poisson(hole_rate * surface)))
    xyz, normal, part = xyz[keep], normal[keep], part[keep]

    # Instance ids follow the natural order of the annotation names (class name, then k), which is the order
    # in which `s3dis.load_room` numbers them; instances left with too few points are dropped.
    inst = arr.inst[part]
    counts = np.bincount(inst, minlength=len(scene.instances))
    classes = np.array([CLASS_INDEX[i.cls] for i in scene.instances])
    alphabetical = np.argsort(np.argsort(np.array(S3DIS_CLASSES)))       # class index -> rank of its name
    alive = np.flatnonzero(counts >= max(1, min_instance_points))
    alive = alive[np.lexsort((alive, alphabetical[classes[alive]]))]
    new_id = np.full(len(scene.instances), -1, np.int64)
    new_id[alive] = np.arange(alive.size)
    ins = new_id[inst]
    keep = ins >= 0
    order = np.argsort(ins[keep], kind='stable')
    xyz, normal, part, ins = xyz[keep][order], normal[keep][order], part[keep][order], ins[keep][order]
    sem = classes[arr.inst[part]].astype(np.int64)
    rgb = _shade(xyz, normal, arr.rgb[part], sem, rng)
    xyz = xyz + rng.normal(0.0, noise, xyz.shape) if noise > 0 else xyz
    origin = np.array([rng.uniform(0, 30), rng.uniform(0, 30), 0.0]) if offset else np.zeros(3)
    xyz = (xyz + origin).astype(np.float32)

    per_class: dict[str, int] = {}
    instances = []
    for new, old in enumerate(alive):
        cls = scene.instances[old].cls
        per_class[cls] = per_class.get(cls, 0) + 1
        instances.append({'id': new, 'name': f'{cls}_{per_class[cls]}', 'class': cls,
                          'num_points': int(counts[old]), 'rare': scene.instances[old].rare})
    meta = {
        'room_type': room_type, 'size': [round(float(v), 4) for v in scene.size],
        'origin': [round(float(v), 4) for v in origin],
        'bounds_min': [round(float(v), 4) for v in origin],
        'bounds_max': [round(float(v), 4) for v in origin + scene.size],
        'num_points': int(len(xyz)), 'density': float(density), 'noise': float(noise),
        'rare_arrangements': rare_done, 'instances': instances,
        'rare_instances': [i['name'] for i in instances if i['rare']],
    }
    return xyz, rgb, sem, ins, meta


# ----------------------------------------------------------------------------------------------- writing
def _format_points(xyz: np.ndarray, rgb: np.ndarray) -> str:
    """S3DIS text lines '%.3f %.3f %.3f %d %d %d' (one big %-format: ~10x faster than np.savetxt)."""
    if len(xyz) == 0:
        return ''
    table = np.concatenate([np.asarray(xyz, np.float64), np.asarray(rgb, np.float64)], axis=1)
    return ('%.3f %.3f %.3f %d %d %d\n' * len(table)) % tuple(table.ravel().tolist())


def write_room(root: str | os.PathLike, area: int, room_name: str, xyz: np.ndarray, rgb: np.ndarray,
               sem: np.ndarray, ins: np.ndarray, meta: dict) -> Path:
    """Write one room in the S3DIS raw layout (see module docstring); returns the room folder.

    Annotation files are named from `meta['instances']` (id -> name); stale `*.txt` annotations left from an
    earlier run in the same folder are removed so the folder always describes exactly this room.
    """
    n = len(xyz)
    if not (len(rgb) == len(sem) == len(ins) == n):
        raise ValueError(f'room {room_name}: xyz/rgb/sem/ins lengths differ: {n}, {len(rgb)}, {len(sem)}, {len(ins)}')
    names = {i['id']: i['name'] for i in meta['instances']}
    if n and (ins.min() < 0 or int(ins.max()) not in names or len(names) != int(ins.max()) + 1):
        raise ValueError(f'room {room_name}: instance ids must be 0..K-1 and all listed in meta["instances"]')
    room_dir = Path(root) / f'Area_{int(area)}' / room_name
    ann_dir = room_dir / 'Annotations'
    ann_dir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(ins, kind='stable')
    xyz, rgb, sem, ins = xyz[order], rgb[order], sem[order], ins[order]
    bounds = np.searchsorted(ins, np.arange(len(names) + 1))
    chunks = []
    for k in range(len(names)):
        a, b = bounds[k], bounds[k + 1]
        if S3DIS_CLASSES[int(sem[a])] != meta['instances'][k]['class']:
            raise ValueError(f'room {room_name}: instance {k} semantic label disagrees with meta')
        text = _format_points(xyz[a:b], rgb[a:b])
        atomic_write_text(ann_dir / f'{names[k]}.txt', text)
        chunks.append(text)
    wanted = {f'{v}.txt' for v in names.values()}
    for stale in ann_dir.glob('*.txt'):
        if stale.name not in wanted:
            stale.unlink()
    atomic_write_text(room_dir / f'{room_name}.txt', ''.join(chunks))
    atomic_write_text(room_dir / META_FILENAME, json.dumps({'area': int(area), 'room': room_name, **meta}, indent=1))
    return room_dir


def room_rng(seed: int, area: int, index: int) -> np.random.Generator:
    """Independent stream per (seed, area, room index): a room does not change when others are added."""
    return np.random.default_rng([int(seed), int(area), int(index)])


def generate_dataset(root: str | os.PathLike, areas: dict[int, int] | None = None, seed: int = 0,
                     density: float = DEFAULT_DENSITY, noise: float = DEFAULT_NOISE,
                     rare_prob: float = DEFAULT_RARE_PROB, progress: bool = True, preview: bool = False) -> dict:
    """Generate `areas[a]` rooms in each Area_<a> under `root`; returns (and writes to
    `<root>/synthetic_dataset.json`) a summary with per-room names, point counts, rare cases and timing."""
    from tqdm import tqdm

    areas = {1: 2} if areas is None else dict(areas)
    for area, count in areas.items():
        if int(area) < 1 or int(count) < 0:
            raise ValueError(f'areas must map area number >= 1 to a room count >= 0, got {area}: {count}')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary = {'seed': int(seed), 'density': float(density), 'noise': float(noise), 'rare_prob': float(rare_prob),
               'classes': list(S3DIS_CLASSES), 'rooms': []}
    class_points = np.zeros(len(S3DIS_CLASSES), np.int64)
    bar = tqdm(total=sum(areas.values()), desc='synthetic rooms', unit='room', disable=not progress)
    start = time.perf_counter()
    for area in sorted(areas):
        type_counts: dict[str, int] = {}
        for index in range(int(areas[area])):
            xyz, rgb, sem, ins, meta = generate_room(room_rng(seed, area, index), density=density, noise=noise,
                                                     rare_prob=rare_prob)
            type_counts[meta['room_type']] = type_counts.get(meta['room_type'], 0) + 1
            name = f"{meta['room_type']}_{type_counts[meta['room_type']]}"
            room_dir = write_room(root, area, name, xyz, rgb, sem, ins, meta)
            if preview:
                render_preview(xyz, sem, room_dir / 'preview.png', title=f'Area_{area}/{name}', ins=ins, meta=meta)
            class_points += np.bincount(sem, minlength=len(S3DIS_CLASSES))
            summary['rooms'].append({'area': int(area), 'room': name, 'points': int(len(xyz)),
                                     'instances': len(meta['instances']), 'rare_instances': meta['rare_instances']})
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    total = max(int(class_points.sum()), 1)
    summary['seconds'] = round(elapsed, 2)
    summary['seconds_per_room'] = round(elapsed / max(len(summary['rooms']), 1), 3)
    summary['class_fraction'] = {c: round(int(n) / total, 4) for c, n in zip(S3DIS_CLASSES, class_points, strict=True)}
    atomic_write_text(root / 'synthetic_dataset.json', json.dumps(summary, indent=1))
    return summary


def render_preview(xyz: np.ndarray, sem: np.ndarray, path: str | os.PathLike, title: str = '',
                   ins: np.ndarray | None = None, meta: dict | None = None) -> Path:
    """Top view PNG coloured by class (ceiling and beams hidden so the furniture shows); rare instances
    are circled in red when `ins` and `meta` are given."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mpnet_model.data.classes import palette

    colours = np.array(palette(len(S3DIS_CLASSES))) / 255.0
    hidden = np.isin(sem, [CLASS_INDEX['ceiling'], CLASS_INDEX['beam']])
    order = np.argsort(xyz[:, 2][~hidden])
    pts, lab = xyz[~hidden][order], sem[~hidden][order]
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.scatter(pts[:, 0], pts[:, 1], c=colours[lab], s=1.0, linewidths=0)
    if ins is not None and meta is not None:
        for info in meta['instances']:
            if info['rare']:
                p = xyz[ins == info['id']]
                ax.add_patch(plt.Circle(p[:, :2].mean(0), 0.6, fill=False, color='red', lw=1.5))
    handles = [plt.Line2D([], [], marker='o', ls='', color=colours[i], label=c) for i, c in enumerate(S3DIS_CLASSES)]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_aspect('equal')
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_write(path, suffix='.tmp.png') as stream:
            fig.savefig(stream, format='png')
    finally:
        plt.close(fig)
    return path


def _parse_areas(text: str) -> list[int]:
    """'5' -> areas 1..5; '1,3,5' -> those areas."""
    try:
        if ',' in text:
            areas = [int(a) for a in text.split(',') if a.strip()]
        else:
            areas = list(range(1, int(text) + 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'--areas: expected a count (5) or a list (1,3,5), got {text!r}') from exc
    if not areas or min(areas) < 1:
        raise argparse.ArgumentTypeError(f'--areas: area numbers must be >= 1, got {text!r}')
    return areas


def main(argv: list[str] | None = None) -> int:
    """Console entry `mpnet-synth`: write a synthetic S3DIS-layout dataset."""
    parser = argparse.ArgumentParser(prog='mpnet-synth', description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='dataset root; Area_<a>/<room>/ folders are created in it')
    parser.add_argument('--areas', type=_parse_areas, default=_parse_areas('5'),
                        help='number of areas (1..N) or a comma list of area numbers (default 5)')
    parser.add_argument('--rooms-per-area', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--density', type=float, default=DEFAULT_DENSITY, help='points per m^2 before occlusion')
    parser.add_argument('--noise', type=float, default=DEFAULT_NOISE, help='position noise std in metres')
    parser.add_argument('--rare-prob', type=float, default=DEFAULT_RARE_PROB,
                        help='probability that a room gets 1-2 rare arrangements')
    parser.add_argument('--preview', action='store_true', help='also write a top-view preview.png per room')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.rooms_per_area < 1:
        parser.error(f'--rooms-per-area must be >= 1, got {args.rooms_per_area}')
    try:
        summary = generate_dataset(args.out, {a: args.rooms_per_area for a in args.areas}, seed=args.seed,
                                   density=args.density, noise=args.noise, rare_prob=args.rare_prob,
                                   progress=not args.quiet, preview=args.preview)
    except ValueError as exc:
        parser.error(str(exc))
    points = [r['points'] for r in summary['rooms']]
    print(f"wrote {len(points)} rooms to {args.out}: {int(np.mean(points))} points/room on average, "
          f"{summary['seconds_per_room']} s/room")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
