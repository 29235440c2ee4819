"""Manipulation views (`mpnet-synth --scenes tabletop`): an RGB-D camera above a table top, looking down at the
objects on it, as on a mobile manipulator's head, or a wrist camera before a grasp.

The scene is an office or a conference room (`layout.build_scene`, no rare arrangements) with one of its tables
chosen and dressed with up to 16 more table-top objects (`table_objects`: cups and mugs, bottles, cans, books and
stacks of books, boxes, bowls, keyboards, laptops, and the layout's desk clutter: monitors, papers), each its own
instance of class `clutter`, placed without overlap with each other and with the layout's own desk clutter.

Views (`sample_view`): pitch (30-70 deg below the horizon, of the optical axis) and a small roll (|roll| <= 5 deg)
are drawn per sequence: they are what tf knows of the mounting (the sequence's `level_from_sensor`, as for the other
cameras) plus the usual pose noise (N(0, 0.5 deg), clipped at 1 deg, so the true pitch stays in 30-70 deg). Per
frame: a height above the table top (0.3-1.2 m, of the true pose), a yaw (any) and an aim point on the table top
(next to an object half of the time); the camera is put on the optical axis through the aim point. A view is kept
when the camera is inside the room (0.15 m from walls, floor and ceiling) and a coarse probe cast (64 x 48 rays)
sees, of all its rays, hits within the camera's depth range on the chosen table and its objects on >= 60 %, on the
table alone on >= 45 % and on its objects on >= 2 %: the table top fills most of the view and objects are in it.
Otherwise the next draw is tried (a few to a few hundred draws; a probe costs 20-30 ms on a loaded 2-core VM);
a sequence whose pitch fits no view in 80 draws is re-drawn. The heights that pass depend on the table (a 1.3 x
0.7 m desk allows less than a 3 x 1.2 m conference table) and on the camera's minimum depth (Kinect 0.5 m: few
views below 0.4 m).

Frames are `rgbd.CameraFrame`s written by `frames.write_sequence`, exactly as the drive frames are (optical frame,
organised, NaN holes, labels, pose); `sequence.json` also gets the chosen table in `scene.rooms[0]['table']`.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from mpnet_model.data.synthetic.floors import SensorScene
from mpnet_model.data.synthetic.layout import (
    _METAL,
    _box,
    _clutter_parts,
    _colour,
    _corners,
    _jitter,
    _LocalPart,
    _rest_on,
    _rot_z,
    build_scene,
)
from mpnet_model.data.synthetic.raycast import RayCaster, SceneMesh
from mpnet_model.data.synthetic.shading import StainField

ROOM_TYPES = ('office', 'conferenceRoom')
HEIGHT_RANGE = (0.3, 1.2)                  # camera above the table top [m], true pose
PITCH_RANGE = (30.0, 70.0)                 # optical axis below the horizon [deg], true pose
ROLL_MAX = 5.0                             # |nominal roll| [deg]
TILT_SIGMA, TILT_CLIP = 0.5, 1.0           # pose noise of pitch and roll [deg]
MIN_TOP_SHARE = 0.6                        # table and its objects, of all probe rays (hits within the depth range)
MIN_TABLE_SHARE = 0.45                     # the table alone
MIN_OBJECT_SHARE = 0.02                    # its objects
PROBE_STEP = 10                            # probe every 10th pixel (64 x 48 rays for 640 x 480)
VIEW_TRIES = 80                            # draws per frame before the sequence's pitch is re-drawn
PITCH_TRIES = 20


@dataclass
class TableTop:
    """The dressed table: pose of its footprint centre (rot (3,3) about z, trans (3,)), size, top height, its
    instance and the instances of the objects on it."""
    rot: np.ndarray
    trans: np.ndarray
    width: float
    depth: float
    top_z: float
    instance: int
    objects: list[int]

    def describe(self) -> dict:
        return {'instance': self.instance, 'objects': list(self.objects), 'top_z': round(self.top_z, 6),
                'centre': np.round(self.trans[:2], 6).tolist(), 'size': [round(self.width, 6), round(self.depth, 6)],
                'yaw': round(float(np.arctan2(self.rot[1, 0], self.rot[0, 0])), 6)}


@dataclass
class TabletopScene(SensorScene):
    table: TableTop | None = None
    bounds: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))    # room interior (lo, hi)


# ----------------------------------------------------------------------------------------------- objects
def _object_parts(rng: np.random.Generator) -> tuple[str, list[_LocalPart]]:
    """(kind, parts) of one table-top object in its own frame (z = 0 on the support)."""
    rgb = _colour(rng, 'clutter')
    kind = str(rng.choice(['mug', 'cup', 'bottle', 'can', 'book', 'books', 'box', 'bowl', 'keyboard', 'laptop',
                           'desk'], p=[0.12, 0.08, 0.1, 0.08, 0.1, 0.08, 0.14, 0.06, 0.06, 0.06, 0.12]))
    if kind in ('mug', 'cup'):
        r, h = rng.uniform(0.035, 0.05), rng.uniform(0.07, 0.12)
        material = 'glossy' if rng.random() < 0.4 else 'matte'
        parts = [_box((-r, -r, 0.0), (r, r, h), rgb, material=material)]
        if kind == 'mug':          # handle
            parts.append(_box((r, -0.008, h * 0.25), (r + 0.025, 0.008, h * 0.8), rgb, material=material))
        return kind, parts
    if kind == 'bottle':
        r, h = rng.uniform(0.03, 0.045), rng.uniform(0.18, 0.3)
        glass = rng.random() < 0.3
        body = _jitter(rng, np.array([0.35, 0.5, 0.4])) if glass else rgb
        return kind, [_box((-r, -r, 0.0), (r, r, h * 0.7), body, material='glass' if glass else 'matte'),
                      _box((-r / 2.5, -r / 2.5, h * 0.7), (r / 2.5, r / 2.5, h), body,
                           material='glass' if glass else 'matte')]
    if kind == 'can':
        r, h = 0.033, rng.uniform(0.1, 0.16)
        return kind, [_box((-r, -r, 0.0), (r, r, h), rgb, material='metal')]
    if kind in ('book', 'books'):
        parts, z = [], 0.0
        for _ in range(1 if kind == 'book' else int(rng.integers(2, 5))):
            a, b, t = rng.uniform(0.15, 0.24), rng.uniform(0.2, 0.3), rng.uniform(0.015, 0.05)
            cover = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.8)))
            dx, dy = rng.normal(0.0, 0.01, 2)
            parts.append(_box((dx - a / 2, dy - b / 2, z), (dx + a / 2, dy + b / 2, z + t), cover))
            z += t
        return kind, parts
    if kind == 'box':
        a, b, c = rng.uniform(0.06, 0.3), rng.uniform(0.04, 0.25), rng.uniform(0.04, 0.3)
        return kind, [_box((-a / 2, -b / 2, 0.0), (a / 2, b / 2, c), rgb)]
    if kind == 'bowl':           # a shallow open box: bottom and four rims
        r, h, t = rng.uniform(0.06, 0.11), rng.uniform(0.04, 0.08), 0.008
        return kind, [_box((-r, -r, 0.0), (r, r, t), rgb),
                      _box((-r, -r, t), (-r + t, r, h), rgb), _box((r - t, -r, t), (r, r, h), rgb),
                      _box((-r + t, -r, t), (r - t, -r + t, h), rgb), _box((-r + t, r - t, t), (r - t, r, h), rgb)]
    if kind == 'keyboard':
        dark = _jitter(rng, np.array([0.12, 0.12, 0.13]) * rng.uniform(1.0, 5.0), 0.02)
        return kind, [_box((-0.22, -0.07, 0.0), (0.22, 0.07, 0.025), dark)]
    if kind == 'laptop':         # base and the open lid standing at its back edge
        shell = _jitter(rng, np.array(colorsys.hsv_to_rgb(*_METAL)) * rng.uniform(0.6, 2.0), 0.03)
        a, b = rng.uniform(0.3, 0.38), rng.uniform(0.21, 0.26)
        return kind, [_box((-a / 2, -b / 2, 0.0), (a / 2, b / 2, 0.02), shell, material='metal'),
                      _box((-a / 2, -b / 2 - 0.01, 0.02), (a / 2, -b / 2, 0.02 + b), shell, faces=(True,) * 6,
                           material='glossy')]
    return kind, _clutter_parts(rng, 'table')        # the layout's desk clutter: monitor, papers, bottle, box


def _local_rect(parts: list[_LocalPart], rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    c = _corners(parts, rot, trans)
    return np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])


def table_objects(scene, table_index: int, rng: np.random.Generator, count: int) -> list[int]:
    """Put up to `count` objects on `scene.tables[table_index]`, without overlap with each other or with what is
    on the top already; returns the instance ids of all clutter standing on the top (the layout's desk clutter
    first, then the new objects)."""
    rot, trans, w, d, h = scene.tables[table_index]
    top = h - 0.005        # the table stands 5 mm in the floor; objects rest on it as the layout's desk clutter does
    taken, standing = [], []
    for part in scene.parts:                # what already stands on (or pokes above) the top, in table coordinates
        local = (_corners([_LocalPart(tuple(-part.half), tuple(part.half), part.rgb)], part.rot, part.centre)
                 - trans) @ rot
        if local[:, 2].max() > top + 0.003 and local[:, 2].min() < top + 1.0:
            taken.append([local[:, 0].min(), local[:, 1].min(), local[:, 0].max(), local[:, 1].max()])
            centre = local.mean(0)
            if (scene.instances[part.inst].cls == 'clutter' and top - 0.006 <= local[:, 2].min() <= top + 0.001
                    and abs(centre[0]) < w / 2 and abs(centre[1]) < d / 2 and part.inst not in standing):
                standing.append(part.inst)
    for _ in range(count):
        kind, parts = _object_parts(rng)
        for _ in range(30):
            yaw = rng.uniform(0, 2 * np.pi) if kind not in ('keyboard', 'laptop', 'desk') else rng.normal(np.pi, 0.3)
            r = _rot_z(yaw)
            rect = _local_rect(parts, r, np.zeros(3))
            lo, hi = -np.array([w, d]) / 2 + 0.03 - rect[:2], np.array([w, d]) / 2 - 0.03 - rect[2:]
            if np.any(hi <= lo):
                break
            xy = rng.uniform(lo, hi)
            placed = rect + np.r_[xy, xy]
            boxes = np.array(taken).reshape(-1, 4)
            if np.any((placed[0] < boxes[:, 2] + 0.02) & (placed[2] > boxes[:, 0] - 0.02)
                      & (placed[1] < boxes[:, 3] + 0.02) & (placed[3] > boxes[:, 1] - 0.02)):
                continue
            taken.append(placed.tolist())
            world_rot = rot @ r
            pos = rot @ np.array([xy[0], xy[1], 0.0]) + trans
            standing.append(scene.add('clutter', parts, world_rot, _rest_on(parts, world_rot, pos[0], pos[1], h)))
            break
    return standing


def tabletop_scene(rng: np.random.Generator, name: str = 'tabletop') -> TabletopScene:
    """An office or conference room with one table dressed with objects (the camera's target)."""
    for _ in range(20):
        scene, room_type, _ = build_scene(rng, str(rng.choice(ROOM_TYPES)), rare_prob=0.0)
        if scene.tables:
            break
    else:                                                           # pragma: no cover - conference rooms have one
        raise ValueError('could not lay out a room with a table in 20 tries')
    index = int(rng.integers(len(scene.tables)))
    rot, trans, w, d, h = scene.tables[index]
    count = int(rng.integers(3, 6)) + int(w * d * rng.uniform(1.5, 3.5))
    objects = table_objects(scene, index, rng, min(count, 16))
    table_ids = [i for i, inst in enumerate(scene.instances) if inst.cls == 'table']
    table_id = table_ids[index]                 # tables are added in the order of scene.tables
    mesh = SceneMesh.from_scene(scene)
    top_z = float(mesh.vertices[mesh.triangles[mesh.instance == table_id]].reshape(-1, 3)[:, 2].max())
    table = TableTop(rot, trans, float(w), float(d), top_z, table_id, objects)
    rooms = [{'type': room_type, 'origin': [0.0, 0.0], 'size': scene.size.tolist(), 'table': table.describe()}]
    return TabletopScene(name, mesh, list(scene.instances), StainField.draw(rng), rooms=rooms, table=table,
                         bounds=np.array([[0.0, 0.0, 0.0], scene.size]))


# ----------------------------------------------------------------------------------------------- views
def _rig(rng: np.random.Generator):
    from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL
    from mpnet_model.data.synthetic.trajectory import SensorRig

    pitch = rng.uniform(PITCH_RANGE[0] + TILT_CLIP, PITCH_RANGE[1] - TILT_CLIP)
    return SensorRig(height=0.0, pitch=-float(np.radians(pitch)), roll=float(np.radians(rng.uniform(-1, 1) * ROLL_MAX)),
                     body_from_sensor=BODY_FROM_OPTICAL, tilt_sigma=np.radians(TILT_SIGMA),
                     tilt_clip=np.radians(TILT_CLIP))


def view_geometry(world_from_sensor: np.ndarray, top_z: float) -> tuple[float, float, float]:
    """(height above the table top [m], pitch of the optical axis below the horizon [deg], roll [deg]) of a pose."""
    rot = world_from_sensor[:3, :3]
    axis, right = rot[:, 2], rot[:, 0]                   # optical z forward, x right
    pitch = float(np.degrees(np.arcsin(np.clip(-axis[2], -1.0, 1.0))))
    level_right = np.cross(axis, [0.0, 0.0, 1.0])
    level_right /= max(np.linalg.norm(level_right), 1e-12)
    roll = float(np.degrees(np.arctan2(np.dot(np.cross(level_right, right), axis), np.dot(level_right, right))))
    return float(world_from_sensor[2, 3] - top_z), pitch, roll


def probe_rays(preset) -> np.ndarray:
    """(R,3) every PROBE_STEP-th pixel's ray in the optical frame (z = 1)."""
    return preset.rays()[PROBE_STEP // 2::PROBE_STEP, PROBE_STEP // 2::PROBE_STEP].reshape(-1, 3)


def probe(caster: RayCaster, preset, pose: np.ndarray, table: TableTop, rays: np.ndarray | None = None
          ) -> tuple[float, float]:
    """(share of probe rays on the table, share on its objects), of all probe rays, counting only hits within the
    camera's depth range (nearer or farther gives no depth)."""
    rays = probe_rays(preset) if rays is None else rays
    direction = rays @ pose[:3, :3].T
    hits = caster.cast(np.broadcast_to(pose[:3, 3], direction.shape), direction)
    ok = hits.valid & (hits.distance >= preset.min_depth) & (hits.distance <= preset.max_depth)
    inst = np.where(ok, caster.mesh.instance[np.maximum(hits.triangle, 0)], -1)
    return float(np.mean(inst == table.instance)), float(np.mean(np.isin(inst, table.objects)))


def sample_view(caster: RayCaster, preset, scene: TabletopScene, rig, rng: np.random.Generator, ideal: bool = False,
                tries: int = VIEW_TRIES) -> np.ndarray | None:
    """A world_from_sensor (4,4) looking down at the table (module docstring), or None after `tries` draws."""
    from mpnet_model.data.synthetic.trajectory import rot_x, rot_y, rot_z

    table = scene.table
    level = rig.level_from_sensor()
    rays = probe_rays(preset)
    objects = [np.asarray(caster.mesh.vertices[caster.mesh.triangles[caster.mesh.instance == i]]).reshape(-1, 3)
               for i in table.objects]
    for _ in range(tries):
        height = rng.uniform(*HEIGHT_RANGE)
        yaw = rng.uniform(-np.pi, np.pi)
        tilt_pitch, tilt_roll, _ = rig.noise(rng) if not ideal else (0.0, 0.0, 0.0)
        if objects and rng.random() < 0.5:                  # next to an object
            aim = objects[int(rng.integers(len(objects)))].mean(0)[:2] + rng.normal(0.0, 0.1, 2)
        else:
            aim = (table.rot @ np.array([rng.uniform(-0.4, 0.4) * table.width, rng.uniform(-0.4, 0.4) * table.depth,
                                         0.0]) + table.trans)[:2]
        pose = np.eye(4)
        pose[:3, :3] = rot_z(yaw) @ rot_y(tilt_pitch) @ rot_x(tilt_roll) @ level
        axis = pose[:3, 2]
        target = np.array([aim[0], aim[1], table.top_z])
        pose[:3, 3] = target - axis * (height / -axis[2])    # on the optical axis, `height` above the top
        lo, hi = scene.bounds
        if np.any(pose[:3, 3] < lo + 0.15) or np.any(pose[:3, 3] > hi - 0.15):
            continue
        on_table, on_objects = probe(caster, preset, pose, table, rays)
        if on_table >= MIN_TABLE_SHARE and on_table + on_objects >= MIN_TOP_SHARE and on_objects >= MIN_OBJECT_SHARE:
            return pose
    return None


def plan_views(caster: RayCaster, preset, scene: TabletopScene, count: int, rng: np.random.Generator,
               ideal: bool = False):
    """(rig, `count` poses) of one sequence: the rig's pitch and roll are re-drawn until every view fits."""
    for _ in range(PITCH_TRIES):
        rig = _rig(rng)
        poses = []
        for _ in range(count):
            pose = sample_view(caster, preset, scene, rig, rng, ideal=ideal)
            if pose is None:
                break
            poses.append(pose)
        if len(poses) == count:
            return rig, poses
    raise ValueError(f'{scene.name}: no view of the table fits {HEIGHT_RANGE} m and {PITCH_RANGE} deg '
                     f'in {PITCH_TRIES} x {VIEW_TRIES} draws')


def simulate_views(scene: TabletopScene, spec, rng: np.random.Generator, ideal: bool = False):
    """`frames.simulate_sequence` for scene 'tabletop': (frames, stamps, level_from_sensor, sensor description)."""
    from mpnet_model.data.synthetic.frames import CAMERA_SENSORS, START_STAMP_NS
    from mpnet_model.data.synthetic.rgbd import camera_preset, simulate_camera

    if spec.sensor not in CAMERA_SENSORS:
        raise ValueError(f'scene kind tabletop (manipulation views) is for the RGB-D cameras {CAMERA_SENSORS}, '
                         f'not {spec.sensor!r}')
    if not isinstance(scene, TabletopScene) or scene.table is None:
        raise ValueError(f'scene {scene.name!r} is not a tabletop scene (use tabletop.tabletop_scene)')
    caster = RayCaster(scene.mesh)
    preset = camera_preset(spec.sensor)
    rig, poses = plan_views(caster, preset, scene, spec.frames, rng, ideal=ideal)
    frames = [simulate_camera(caster, preset, pose, scene.stains, rng, ideal=ideal) for pose in poses]
    stamps = [START_STAMP_NS + int(round(k * spec.spacing / rig.speed * 1e9)) for k in range(len(frames))]
    return frames, stamps, rig.level_from_sensor(), preset.describe()


__all__ = ['HEIGHT_RANGE', 'PITCH_RANGE', 'ROOM_TYPES', 'TableTop', 'TabletopScene', 'plan_views', 'probe',
           'sample_view', 'simulate_views', 'table_objects', 'tabletop_scene', 'view_geometry']
