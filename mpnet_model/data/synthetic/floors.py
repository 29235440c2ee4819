"""Scenes for the virtual sensors: single rooms, and floors of rooms along a corridor joined by open doorways
(a lidar's range crosses rooms, so a robot's frames hold several rooms at once).

A floor: a corridor (a 'hallway' room) along x, rooms on one or both sides, each with an open doorway onto the
corridor (`layout.Doorway`: frame through both walls, leaf open into the room) and 0.2 m walls between neighbours.
Every room keeps its own layout stream, so the same room looks the same whatever else is on the floor.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mpnet_model.data.synthetic.layout import Doorway, _Instance, build_scene
from mpnet_model.data.synthetic.raycast import SceneMesh
from mpnet_model.data.synthetic.shading import StainField

WALL_GAP = 0.2        # two 0.1 m wall slabs back to back


@dataclass
class SensorScene:
    """Everything a virtual sensor needs: the labelled mesh, instance classes, stains and where to drive."""
    name: str
    mesh: SceneMesh
    instances: list[_Instance]
    stains: StainField
    anchors: list[np.ndarray] = field(default_factory=list)    # (2,) spots a trajectory visits, in order
    rooms: list[dict] = field(default_factory=list)

    def instance_names(self) -> list[str]:
        """`<class>_<k>` per instance id (k counts per class from 1, in id order)."""
        seen: dict[str, int] = {}
        names = []
        for inst in self.instances:
            seen[inst.cls] = seen.get(inst.cls, 0) + 1
            names.append(f'{inst.cls}_{seen[inst.cls]}')
        return names


def _moved(instance: _Instance, offset: np.ndarray) -> _Instance:
    """The instance's true box moved with its room by `offset` (3,)."""
    if instance.centre is None:
        return instance
    return replace(instance, centre=tuple(float(c + o) for c, o in zip(instance.centre, offset)))


def room_scene(rng: np.random.Generator, name: str = 'room', room_type: str | None = None) -> SensorScene:
    scene, room_type, _ = build_scene(rng, room_type, rare_prob=0.2)
    mesh = SceneMesh.from_scene(scene)
    return SensorScene(name, mesh, list(scene.instances), StainField.draw(rng),
                       rooms=[{'type': room_type, 'origin': [0.0, 0.0], 'size': scene.size.tolist()}])


def floor_scene(rng: np.random.Generator, name: str = 'floor', rooms_per_side: tuple[int, int] | None = None
                ) -> SensorScene:
    """A corridor with 2-4 rooms on one side and 0-4 on the other."""
    south, north = rooms_per_side or (int(rng.integers(2, 5)), int(rng.integers(0, 5)))
    height = float(rng.uniform(2.7, 3.2))
    corridor_w = float(rng.uniform(1.8, 2.6))
    plans = []                                # (side, x0, length, depth, room type, door centre along x)
    ends = []
    for side, count in (('south', south), ('north', north)):
        x = 0.0
        for _ in range(count):
            length, depth = float(rng.uniform(3.0, 6.0)), float(rng.uniform(3.0, 6.0))
            room_type = str(rng.choice(['office', 'office', 'conferenceRoom', 'storage', 'lobby']))
            door_x = float(rng.uniform(0.8, length - 0.8))
            plans.append((side, x, length, depth, room_type, door_x))
            x += length + WALL_GAP
        ends.append(x - WALL_GAP if count else 0.0)
    corridor_len = max(max(ends), 6.0)
    meshes, instances, offsets, rooms, anchors = [], [], [], [], []
    corridor_doors = []
    for k, (side, x0, length, depth, room_type, door_x) in enumerate(plans):
        room_rng = np.random.default_rng(rng.integers(2 ** 63))
        if side == 'south':      # room below the corridor, its wall 2 (y = W) faces it; s counts from x = L
            door = Doorway(2, length - door_x)
            origin = np.array([x0, -WALL_GAP - depth, 0.0])
            corridor_doors.append(Doorway(0, x0 + door_x, door=False))
        else:                    # above the corridor, its wall 0 (y = 0) faces it
            door = Doorway(0, door_x)
            origin = np.array([x0, corridor_w + WALL_GAP, 0.0])
            corridor_doors.append(Doorway(2, corridor_len - (x0 + door_x), door=False))
        scene, room_type, _ = build_scene(room_rng, room_type, rare_prob=0.2, size=(length, depth, height),
                                          doorways=(door,))
        offsets.append(len(instances))
        instances.extend(_moved(i, origin) for i in scene.instances)
        meshes.append(SceneMesh.from_scene(scene).transformed(np.eye(3), origin))
        rooms.append({'type': room_type, 'origin': origin[:2].tolist(), 'size': scene.size.tolist()})
        door_y = corridor_w / 2
        anchors.append((k, np.array([x0 + door_x, door_y]), origin[:2] + scene.size[:2] / 2))
    corridor_rng = np.random.default_rng(rng.integers(2 ** 63))
    scene, _, _ = build_scene(corridor_rng, 'hallway', rare_prob=0.0, size=(corridor_len, corridor_w, height),
                              doorways=tuple(corridor_doors))
    offsets.append(len(instances))
    instances.extend(scene.instances)
    meshes.append(SceneMesh.from_scene(scene))
    rooms.append({'type': 'corridor', 'origin': [0.0, 0.0], 'size': scene.size.tolist()})
    # drive: along the corridor, stepping into every room through its door and back, in x order
    path = [np.array([0.6, corridor_w / 2])]
    for _, door_spot, centre in sorted(anchors, key=lambda a: a[1][0]):
        path += [door_spot, centre, door_spot]
    path.append(np.array([corridor_len - 0.6, corridor_w / 2]))
    return SensorScene(name, SceneMesh.concatenate(meshes, offsets), instances, StainField.draw(rng), path, rooms)
