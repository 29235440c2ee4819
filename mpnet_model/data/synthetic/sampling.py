"""Static multi-station scans of a room (the S3DIS look): points sampled on the parts' faces, then the points
no tripod scanner sees are removed, random holes cut, colours shaded and positions jittered.

1. points outside the room or inside any solid part are dropped (floor under a bookcase, wall behind a door);
2. a point is kept only if at least one virtual scanner sees its face (back-face test) without another
   object's box in between (ray / oriented-box slab test);
3. random elliptical holes, Gaussian position noise (~5 mm), per-instance colours with per-point noise and
   low-frequency shading on floor/walls/ceiling.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.data.synthetic.layout import CLASS_INDEX, _Part, _Scene, build_scene
from mpnet_model.data.synthetic.shading import _shade

DEFAULT_DENSITY = 1500.0      # points per m^2 of surface before occlusion: ~100-300k points per room
DEFAULT_NOISE = 0.005         # metres, std of the Gaussian position noise
DEFAULT_RARE_PROB = 0.2       # probability that a room gets rare arrangements (1-2 of them)


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
    scene, room_type, rare_done = build_scene(rng, room_type, rare_prob, size)

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


