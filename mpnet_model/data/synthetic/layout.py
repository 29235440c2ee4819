"""Room layouts: oriented boxes ("parts") grouped into labelled instances, placed the way S3DIS rooms are furnished.

A room is built in its own frame: floor at z = 0, walls at x = 0, x = L, y = 0, y = W (slabs just outside).
`build_scene` lays out one room (structure, columns and beams, doors, windows, boards, furniture, clutter, rare
arrangements); `mpnet_model.data.synthetic.floors` joins rooms and a corridor into a floor through doorways.
Nothing here makes points: `sampling` scans a scene with static scanners, `raycast` with virtual sensors.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from mpnet_model.data.synthetic.shading import _METAL, CLASS_INDEX, _colour, _jitter

__all__ = ['CLASS_INDEX', 'ROOM_TYPES', 'RARE_KINDS', 'Doorway', 'build_scene']
ROOM_TYPES = ('office', 'conferenceRoom', 'hallway', 'lobby', 'storage')
ROOM_TYPE_WEIGHTS = (0.5, 0.16, 0.12, 0.08, 0.14)
RARE_KINDS = ('stacked_chairs', 'back_to_back_chairs', 'sofa_in_middle', 'rotated_table', 'chair_on_table',
              'tipped_chair')
# Surface materials: they decide lidar intensity and RGB-D holes (see `raycast`); the static scans ignore them.
MATERIALS = ('matte', 'metal', 'glass', 'glossy')


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
    material: str = 'matte'       # one of MATERIALS


@dataclass
class _LocalPart:
    """A part in its object's frame (origin at the footprint centre, z=0 on the support, +y = front)."""
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    rgb: np.ndarray
    faces: tuple[bool, ...] = (True, True, True, True, False, True)
    density: float = 1.0
    occluder: bool = True
    material: str = 'matte'


@dataclass
class _Instance:
    cls: str
    rare: str | None = None
    # The object's true oriented box (ground truth for box estimates): centre (3,) in the scene frame, size (3,)
    # along the object's own axes, yaw [rad] about z (None when the object is tilted out of the horizontal).
    centre: tuple[float, float, float] | None = None
    size: tuple[float, float, float] | None = None
    yaw: float | None = None


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
        lo = np.min([p.lo for p in local_parts], axis=0)
        hi = np.max([p.hi for p in local_parts], axis=0)
        level = abs(rot[2, 2]) > 1 - 1e-6
        self.instances.append(_Instance(cls, rare, tuple(float(v) for v in rot @ ((lo + hi) / 2) + trans),
                                        tuple(float(v) for v in hi - lo),
                                        float(np.arctan2(rot[1, 0], rot[0, 0])) if level else None))
        for p in local_parts:
            lo, hi = np.asarray(p.lo, float), np.asarray(p.hi, float)
            centre = rot @ ((lo + hi) / 2) + trans
            self.parts.append(_Part(inst, centre, (hi - lo) / 2, rot, p.faces, p.rgb, p.density, solid, p.occluder,
                                    p.material))
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


def _box(lo, hi, rgb, faces=(True, True, True, True, False, True), density=1.0, occluder=True,
         material: str = 'matte') -> _LocalPart:
    return _LocalPart(tuple(lo), tuple(hi), rgb, faces, density, occluder, material)


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
        parts.append(_box((-0.025, -0.025, 0.06), (0.025, 0.025, leg_top), frame, material='metal'))
        parts.append(_box((-0.3, -0.03, 0.0), (0.3, 0.03, 0.06), frame, material='metal'))
        parts.append(_box((-0.03, -0.3, 0.0), (0.03, 0.3, 0.06), frame, material='metal'))
        return parts
    r = 0.015
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - 0.03), sy * (d / 2 - 0.03)
            parts.append(_box((cx - r, cy - r, 0.0), (cx + r, cy + r, leg_top), frame, material='metal'))
    return parts


def _table_parts(rng: np.random.Generator, w: float, d: float, h: float) -> list[_LocalPart]:
    top_t = rng.uniform(0.025, 0.05)
    rgb = _colour(rng, 'table')
    wooden = rng.random() < 0.5
    legs = _jitter(rng, rgb * 0.7) if wooden else _jitter(rng, np.array(colorsys.hsv_to_rgb(*_METAL)))
    leg_material = 'matte' if wooden else 'metal'
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
                parts.append(_box((cx - r, cy - r, 0.0), (cx + r, cy + r, h - top_t), legs, material=leg_material))
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
                    _box((-sw / 2, -0.05, 0.1), (sw / 2, -0.02, 0.1 + sh), dark, faces=(True,) * 6, material='glossy')]
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
def _structure(scene: _Scene, doorways: tuple[Doorway, ...] = ()) -> None:
    """Floor, ceiling and 4 walls as slabs just outside the room, sampled on their inner face only; a wall with
    doorways is split into pieces around each opening (the same instance)."""
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
    for index, (cls, lo, hi, faces) in enumerate(slabs):
        rgb = _jitter(rng, wall_rgb, 0.015) if cls == 'wall' else _colour(rng, cls)
        pieces = [(lo, hi)]
        for door in doorways:
            if cls == 'wall' and door.wall == index - 2:
                pieces = [piece for lo_, hi_ in pieces for piece in _cut_opening(scene.size, door, lo_, hi_)]
        scene.add(cls, [_LocalPart(a, b, rgb, faces, occluder=False) for a, b in pieces], np.eye(3), np.zeros(3),
                  solid=False)


@dataclass(frozen=True)
class Doorway:
    """An open doorway `width` wide centred `s` metres along wall `wall` (see `_wall_pose`); `door` adds the door
    (frame lining the opening through both rooms' walls, leaf open into this room); the room on the other side
    gets the same opening with door=False."""
    wall: int
    s: float
    width: float = 0.95
    door: bool = True
    height: float = 2.1


def _cut_opening(size: np.ndarray, door: Doorway, lo, hi) -> list[tuple[tuple, tuple]]:
    """A wall slab (lo, hi) minus the doorway's opening: up to three boxes (left, right, lintel)."""
    axis = 0 if door.wall % 2 == 0 else 1                        # walls 0, 2 run along x; 1, 3 along y
    along = _wall_length(size, door.wall)
    centre = door.s if door.wall in (0, 1) else along - door.s   # walls 2, 3 count s backwards
    a, b = centre - door.width / 2, centre + door.width / 2
    lo, hi = list(lo), list(hi)
    if b <= lo[axis] or a >= hi[axis]:
        return [(tuple(lo), tuple(hi))]
    pieces = []
    if a > lo[axis]:
        left_hi = list(hi)
        left_hi[axis] = a
        pieces.append((tuple(lo), tuple(left_hi)))
    if b < hi[axis]:
        right_lo = list(lo)
        right_lo[axis] = b
        pieces.append((tuple(right_lo), tuple(hi)))
    if door.height < hi[2]:
        top_lo, top_hi = list(lo), list(hi)
        top_lo[axis], top_hi[axis], top_lo[2] = max(a, lo[axis]), min(b, hi[axis]), door.height
        pieces.append((tuple(top_lo), tuple(top_hi)))
    return pieces


def _doorway(scene: _Scene, door: Doorway) -> None:
    """Reserve the opening (wall span and floor in front of it); with `door.door` add the door instance: a frame
    lining the opening through both walls (0.2 m) and the leaf opened 90 degrees into the room."""
    rng = scene.rng
    w, hd, frame = door.width, door.height, 0.04
    rot, trans = _wall_pose(scene.size, door.wall, door.s)
    scene.wall_spans.setdefault(door.wall, []).append((door.s - w / 2 - 0.05, door.s + w / 2 + 0.05, 0.0, hd))
    reserve = [_box((-w / 2 - 0.05, 0.0, 0.0), (w / 2 + 0.05, 1.1, 0.1), np.zeros(3))]
    scene.footprints.append(_footprint(reserve, rot, trans))
    if not door.door:
        return
    rgb = _colour(rng, 'door')
    frame_rgb = _jitter(rng, rgb * 0.8)
    leaf = w - 2 * frame
    parts = [_box((-w / 2, -0.21, 0.0), (-w / 2 + frame, 0.02, hd), frame_rgb, faces=(True,) * 6),
             _box((w / 2 - frame, -0.21, 0.0), (w / 2, 0.02, hd), frame_rgb, faces=(True,) * 6),
             _box((-w / 2, -0.21, hd - frame), (w / 2, 0.02, hd), frame_rgb, faces=(True,) * 6),
             _box((w / 2 - frame - 0.04, 0.02, 0.01), (w / 2 - frame, 0.02 + leaf, hd - frame - 0.01), rgb,
                  faces=(True,) * 6),
             _box((w / 2 - frame - 0.1, 0.02 + leaf - 0.14, 0.98), (w / 2 - frame - 0.04, 0.02 + leaf - 0.06, 1.02),
                  np.array([0.6, 0.6, 0.6]), material='metal')]
    scene.add('door', parts, rot, trans)


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
                 _box((w / 2 - 0.14, proud, 0.98), (w / 2 - 0.06, proud + 0.06, 1.02), np.array([0.6, 0.6, 0.6]),
                      material='metal')]
        _place_on_wall(scene, 'door', parts, w + 2 * frame, -0.005, h + frame, floor_depth=0.8)
    walls = [int(rng.integers(4))]
    for _ in range(n_windows):
        w = rng.uniform(1.0, 2.5)
        sill = rng.uniform(0.6, 0.95)
        h = min(rng.uniform(1.2, 1.8), height - sill - 0.2)
        bar, proud = 0.05, rng.uniform(0.015, 0.05)
        rgb = _colour(rng, 'window')
        glass = _jitter(rng, np.array([0.35, 0.42, 0.5]) * rng.uniform(0.6, 1.3), 0.05)
        parts = [_box((-w / 2, -0.06, 0.0), (w / 2, 0.005, h), glass, faces=back, density=0.5, occluder=False,
                      material='glass'),
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
        parts = [_box((-w / 2, -0.03, 0.0), (w / 2, proud, h), rgb, faces=back, material='glossy'),
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


# ----------------------------------------------------------------------------------------------- rooms
def build_scene(rng: np.random.Generator, room_type: str | None = None, rare_prob: float = 0.2,
                size: tuple[float, float, float] | None = None,
                doorways: tuple[Doorway, ...] = ()) -> tuple[_Scene, str, list[str]]:
    """Lay out one room: (scene, room type, rare arrangements placed).

    `doorways` cut open doorways (see `Doorway`) into the walls, for rooms joined into a floor; without them the
    room and its random stream are exactly the static benchmark's.
    """
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

    _structure(scene, doorways)
    for door in doorways:
        _doorway(scene, door)
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

    return scene, room_type, rare_done
