"""Simulated sensor sequences: a robot drives through a scene, a virtual lidar or RGB-D camera records frames.

On-disk layout (what `load_frame` / `load_window` and the `frames` dataset of the trainer read)::

    <root>/sensor_frames.json                        summary: sequences, sensors, frame counts, timing
    <root>/Area_<a>/<sequence>/sequence.json         sensor description (beams / intrinsics), scene (rooms,
                                                     instance names), per frame: file, stamp_ns,
                                                     world_from_sensor (4x4), level_from_sensor (3x3)
    <root>/Area_<a>/<sequence>/frame_<k>.npz         one frame, valid returns only (compressed):
        xyz (N,3) float32 in the sensor's own frame (lidar: os_lidar; camera: optical), sem (N,) int16,
        ins (N,) int32 (scene instance id, the same across the sequence), pixel (N,) int32 (row * width + col)
        lidar: intensity float32, reflectivity uint16, ambient uint16, range_mm uint32
        camera: rgb (H,W,3) uint8 for every pixel (holes keep their colour, as registered clouds do)

Training and the benchmark see a frame in its *level* frame (`level_from_sensor`: the mounting rotation a robot's
tf knows, sensor at the origin); lidar colour channels are made exactly as the runtime makes them from a real
lidar (`SceneSegmenter.colours`: intensity grey, or the constant when `lidar_colour='grey'`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.room import Room
from mpnet_model.io.atomic import atomic_write, atomic_write_text

SUMMARY_FILENAME = 'sensor_frames.json'
SEQUENCE_FILENAME = 'sequence.json'
LIDAR_SENSORS = ('os1-64', 'os1-128', 'os0-128')
CAMERA_SENSORS = ('kinect', 'realsense')
SENSORS = LIDAR_SENSORS + CAMERA_SENSORS
SCENE_KINDS = ('room', 'floor')                    # the default mix of drives
TABLETOP_SCENE_TRIES = 5                          # rooms laid out for a manipulation sequence before giving up
VIEW_KINDS = ('tabletop',)                         # manipulation views (cameras only, `tabletop.py`)
ALL_SCENE_KINDS = SCENE_KINDS + VIEW_KINDS
START_STAMP_NS = 1_700_000_000 * 10 ** 9


@dataclass
class SequenceSpec:
    sensor: str
    scene: str                 # 'room' | 'floor' | 'tabletop'
    frames: int = 8
    spacing: float = 1.0       # metres driven between recorded frames
    columns: int = 1024        # lidar columns


def _rig(sensor: str, rng: np.random.Generator):
    from mpnet_model.data.synthetic.rgbd import BODY_FROM_OPTICAL
    from mpnet_model.data.synthetic.trajectory import SensorRig

    if sensor in LIDAR_SENSORS:       # on top of a mobile base (Jackal ~0.4 m ... Husky / Spot mast ~1 m)
        return SensorRig(height=float(rng.uniform(0.4, 1.0)))
    # head or mast camera, level or looking down at the floor in front of the robot
    return SensorRig(height=float(rng.uniform(0.3, 1.5)), pitch=-float(np.radians(rng.uniform(0.0, 35.0))),
                     body_from_sensor=BODY_FROM_OPTICAL)


def simulate_sequence(scene, spec: SequenceSpec, rng: np.random.Generator, ideal: bool = False):
    """Frames (LidarFrame / CameraFrame list), stamps (ns list), level_from_sensor (3,3) and the sensor's
    description for one drive through `scene` (a `floors.SensorScene`)."""
    from mpnet_model.data.synthetic.lidar import lidar_preset, simulate_lidar
    from mpnet_model.data.synthetic.raycast import RayCaster
    from mpnet_model.data.synthetic.rgbd import camera_preset, simulate_camera
    from mpnet_model.data.synthetic.trajectory import plan_path, resample

    if spec.sensor not in SENSORS:
        raise ValueError(f'unknown sensor {spec.sensor!r}; choose one of {SENSORS}')
    if spec.scene == 'tabletop':
        from mpnet_model.data.synthetic.tabletop import simulate_views

        return simulate_views(scene, spec, rng, ideal=ideal)
    caster = RayCaster(scene.mesh)
    rig = _rig(spec.sensor, rng)
    path = plan_path(scene.mesh, rng, anchors=scene.anchors or None)
    xy, heading = resample(path, spec.spacing)
    # consecutive frames `spacing` apart (so windows of them overlap), from a random point of the drive
    first = int(rng.integers(0, max(1, len(xy) - spec.frames + 1)))
    pick = np.arange(first, min(first + spec.frames, len(xy)))
    lidar = spec.sensor in LIDAR_SENSORS
    preset = lidar_preset(spec.sensor, spec.columns) if lidar else camera_preset(spec.sensor)
    frames, stamps = [], []
    pan = 0.0
    for i in pick:
        pan = 0.7 * pan + rng.normal(0.0, np.radians(15.0)) if not lidar else 0.0   # a camera looks around
        pose = rig.world_from_sensor(xy[i], heading[i] + pan, rig.noise(rng) if not ideal else (0.0, 0.0, 0.0))
        if lidar:
            frames.append(simulate_lidar(caster, preset, rig.moving(pose), rng, ideal=ideal))
        else:
            frames.append(simulate_camera(caster, preset, pose, scene.stains, rng, ideal=ideal))
        stamps.append(START_STAMP_NS + int(round(float(i) * spec.spacing / rig.speed * 1e9)))
    return frames, stamps, rig.level_from_sensor(), preset.describe()


def _frame_arrays(frame) -> dict[str, np.ndarray]:
    valid = frame.valid
    pixel = np.flatnonzero(valid.reshape(-1)).astype(np.int32)
    out = {'xyz': frame.xyz.reshape(-1, 3)[pixel], 'sem': frame.sem.reshape(-1)[pixel].astype(np.int16),
           'ins': frame.ins.reshape(-1)[pixel].astype(np.int32), 'pixel': pixel}
    if hasattr(frame, 'range_mm'):
        for key in ('intensity', 'reflectivity', 'ambient', 'range_mm'):
            out[key] = getattr(frame, key).reshape(-1)[pixel]
    else:
        out['rgb'] = frame.rgb
    return out


def _true_box(instance) -> dict:
    """The instance's true oriented box in the scene frame for sequence.json (empty when it has none)."""
    if getattr(instance, 'centre', None) is None:
        return {}
    return {'box': {'centre': [round(v, 6) for v in instance.centre], 'size': [round(v, 6) for v in instance.size],
                    'yaw': None if instance.yaw is None else round(instance.yaw, 9)}}


def write_sequence(seq_dir: str | os.PathLike, scene, frames, stamps, level_from_sensor, sensor: dict) -> Path:
    seq_dir = Path(seq_dir)
    seq_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (frame, stamp) in enumerate(zip(frames, stamps)):
        name = f'frame_{k:04d}.npz'
        with atomic_write(seq_dir / name) as stream:
            np.savez_compressed(stream, **_frame_arrays(frame))
        entries.append({'file': name, 'stamp_ns': int(stamp), 'points': int(frame.valid.sum()),
                        'world_from_sensor': np.round(frame.world_from_sensor, 6).tolist()})
    names = scene.instance_names()
    meta = {'sequence': seq_dir.name, 'sensor': sensor, 'level_from_sensor': np.round(level_from_sensor, 9).tolist(),
            'scene': {'name': scene.name, 'rooms': scene.rooms,
                      'instances': [{'id': i, 'name': n, 'class': inst.cls, **_true_box(inst)}
                                    for i, (n, inst) in enumerate(zip(names, scene.instances))]},
            'classes': list(S3DIS_CLASSES), 'frames': entries}
    for stale in seq_dir.glob('frame_*.npz'):
        if stale.name not in {e['file'] for e in entries}:
            stale.unlink()
    atomic_write_text(seq_dir / SEQUENCE_FILENAME, json.dumps(meta, indent=1))
    return seq_dir


def sequence_rng(seed: int, area: int, index: int, sensor: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(area), int(index), SENSORS.index(sensor), 7])


def generate_frames(root: str | os.PathLike, areas: dict[int, int], sensors: tuple[str, ...] = ('os1-128',),
                    scenes: tuple[str, ...] = SCENE_KINDS, frames: int = 8, spacing: float = 1.0,
                    columns: int = 1024, seed: int = 0, progress: bool = True) -> dict:
    """`areas[a]` sequences per sensor in each Area_<a>, scene kinds alternating over areas and drives; returns
    (and writes to `<root>/sensor_frames.json`) a summary."""
    from tqdm import tqdm

    from mpnet_model.data.synthetic.floors import floor_scene, room_scene
    from mpnet_model.data.synthetic.tabletop import tabletop_scene

    for s in sensors:
        if s not in SENSORS:
            raise ValueError(f'unknown sensor {s!r}; choose from {SENSORS}')
    for s in scenes:
        if s not in ALL_SCENE_KINDS:
            raise ValueError(f'unknown scene kind {s!r}; choose from {ALL_SCENE_KINDS}')
    if 'tabletop' in scenes and set(sensors) - set(CAMERA_SENSORS):
        raise ValueError(f'scene kind tabletop (manipulation views) is for the RGB-D cameras {CAMERA_SENSORS}; '
                         f'got {", ".join(s for s in sensors if s not in CAMERA_SENSORS)}')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(a, i, s) for a in sorted(areas) for i in range(int(areas[a])) for s in sensors]
    summary = {'seed': seed, 'sensors': list(sensors), 'scenes': list(scenes), 'frames_per_sequence': frames,
               'spacing': spacing, 'columns': columns, 'sequences': []}
    start = time.perf_counter()
    for area, index, sensor in tqdm(jobs, desc='sensor sequences', unit='seq', disable=not progress):
        rng = sequence_rng(seed, area, index, sensor)
        kind = scenes[(area + index) % len(scenes)]            # alternate over areas and drives
        name = f'{sensor}_{kind}_{area}_{index + 1}'
        build = {'floor': floor_scene, 'room': room_scene, 'tabletop': tabletop_scene}[kind]
        for attempt in range(TABLETOP_SCENE_TRIES if kind == 'tabletop' else 1):
            scene = build(rng, name=f'{kind}_{area}_{index + 1}')
            try:
                result = simulate_sequence(scene, SequenceSpec(sensor, kind, frames, spacing, columns), rng)
                break
            except ValueError:          # a table no view fits (a small desk in a corner): lay out another room
                if attempt == TABLETOP_SCENE_TRIES - 1 or kind != 'tabletop':
                    raise
        write_sequence(root / f'Area_{area}' / name, scene, *result)
        summary['sequences'].append({'area': area, 'sequence': name, 'sensor': sensor, 'scene': kind,
                                     'frames': len(result[0]),
                                     'points_per_frame': int(np.mean([f.valid.sum() for f in result[0]]))})
    summary['seconds'] = round(time.perf_counter() - start, 1)
    atomic_write_text(root / SUMMARY_FILENAME, json.dumps(summary, indent=1))
    return summary


# ----------------------------------------------------------------------------------------------- reading
def read_sequence(seq_dir: str | os.PathLike) -> dict:
    path = Path(seq_dir) / SEQUENCE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f'{seq_dir}: not a sensor sequence (no {SEQUENCE_FILENAME})')
    return json.loads(path.read_text())


def list_frames(root: str | os.PathLike, areas) -> list[Path]:
    """Frame files of the given areas, in (area, sequence, frame) order."""
    root = Path(root)
    return [p for a in areas for p in sorted((root / f'Area_{a}').glob('*/frame_*.npz'))]


def frame_colours(arrays, meta: dict, lidar_colour: str = 'intensity') -> np.ndarray:
    """(N,3) float32 colour channels as the runtime makes them: camera rgb; lidar intensity grey or 0.5 grey."""
    if 'rgb' in arrays:
        rgb = np.asarray(arrays['rgb']).reshape(-1, 3)
        return rgb[np.asarray(arrays['pixel'])] / np.float32(255.0)
    from mpnet_model.infer.scene import intensity_to_grey

    n = len(arrays['xyz'])
    if lidar_colour == 'intensity' and n:
        return intensity_to_grey(np.asarray(arrays['intensity'], np.float32), arrays['xyz'])   # sensor frame
    if lidar_colour not in ('intensity', 'grey'):
        raise ValueError(f"lidar_colour={lidar_colour!r}: choose 'intensity' or 'grey'")
    return np.full((n, 3), 0.5, np.float32)


def load_frame(path: str | os.PathLike, lidar_colour: str = 'intensity', frame: str = 'level') -> Room:
    """One frame as a `Room` (level frame by default; frame='sensor' keeps the sensor's own frame)."""
    path = Path(path)
    meta = read_sequence(path.parent)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    xyz = arrays['xyz'].astype(np.float32)
    if frame == 'level':
        xyz = xyz @ np.asarray(meta['level_from_sensor'], np.float32).T
    elif frame != 'sensor':
        raise ValueError(f"frame={frame!r}: choose 'level' or 'sensor'")
    names = tuple(i['name'] for i in meta['scene']['instances'])
    return Room(f'{path.parent.name}/{path.stem}', xyz, frame_colours(arrays, meta, lidar_colour),
                arrays['sem'].astype(np.int64), arrays['ins'].astype(np.int64), tuple(meta['classes']), names,
                origin=(0.0, 0.0, 0.0))


def load_window(seq_dir: str | os.PathLike, last: int, size: int, lidar_colour: str = 'intensity') -> Room:
    """Frames last-size+1 .. last accumulated in the level frame of frame `last` with the true poses (a robot
    with perfect odometry and tf)."""
    seq_dir = Path(seq_dir)
    meta = read_sequence(seq_dir)
    level = np.asarray(meta['level_from_sensor'])
    last_pose = np.asarray(meta['frames'][last]['world_from_sensor'])
    to_last = np.eye(4)
    to_last[:3, :3] = level @ last_pose[:3, :3].T
    to_last[:3, 3] = -to_last[:3, :3] @ last_pose[:3, 3]
    parts = []
    for k in range(max(0, last - size + 1), last + 1):
        room = load_frame(seq_dir / meta['frames'][k]['file'], lidar_colour, frame='sensor')
        pose = np.asarray(meta['frames'][k]['world_from_sensor'])
        m = to_last @ pose
        parts.append(Room(room.name, room.xyz @ m[:3, :3].T.astype(np.float32) + m[:3, 3].astype(np.float32),
                          room.rgb, room.sem, room.ins, room.class_names, room.instance_names))
    return Room(f'{seq_dir.name}/window_{last:04d}x{len(parts)}', np.concatenate([p.xyz for p in parts]),
                np.concatenate([p.rgb for p in parts]), np.concatenate([p.sem for p in parts]),
                np.concatenate([p.ins for p in parts]), parts[0].class_names, parts[0].instance_names,
                origin=(0.0, 0.0, 0.0))


def frame_true_boxes(path: str | os.PathLike) -> dict[int, dict]:
    """True oriented boxes of the scene's instances in the level frame of one frame (`load_frame`'s frame):
    {instance id: {'centre' (3,), 'size' (3,) along the object's axes, 'yaw' [rad] about z or None}}. Empty for
    data written before the boxes were recorded (regenerate it with the same command to get them)."""
    path = Path(path)
    meta = read_sequence(path.parent)
    entry = next(e for e in meta['frames'] if e['file'] == path.name)
    pose = np.asarray(entry['world_from_sensor'], np.float64)
    level_from_world = np.asarray(meta['level_from_sensor'], np.float64) @ pose[:3, :3].T
    boxes = {}
    for instance in meta['scene']['instances']:
        box = instance.get('box')
        if not box:
            continue
        centre = level_from_world @ (np.asarray(box['centre']) - pose[:3, 3])
        yaw = None
        if box['yaw'] is not None:
            axis = level_from_world @ np.array([np.cos(box['yaw']), np.sin(box['yaw']), 0.0])
            yaw = float(np.arctan2(axis[1], axis[0]))
        boxes[int(instance['id'])] = {'centre': centre, 'size': np.asarray(box['size'], np.float64), 'yaw': yaw}
    return boxes


def frame_ranges(path: str | os.PathLike) -> np.ndarray:
    """(N,) distance of each return from the sensor [m] (for range-band metrics)."""
    with np.load(path, allow_pickle=False) as data:
        return np.linalg.norm(data['xyz'], axis=1)
