"""Scenes as triangle meshes and first-hit ray casting with a well-kept library, for the virtual sensors.

`SceneMesh.from_scene` turns every part (an oriented box) into 12 outward-facing triangles that remember their part,
so a hit gives the instance, class, base colour and material of the surface. `RayCaster` casts rays with
Embree through trimesh (`trimesh` + `embreex`, the default: measured fastest to install and as fast or faster to
run, see docs/raycasting.md) or with Open3D's `RaycastingScene` when that is what is installed.

    caster = RayCaster(SceneMesh.from_scene(scene))
    hit = caster.cast(origins, directions)          # distance (R,) inf on a miss, triangle (R,) -1 on a miss
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpnet_model.data.synthetic.layout import CLASS_INDEX, MATERIALS, _Scene

# Corners of the unit box in local order (x, y, z in {-1, +1}) and its 12 triangles, counter-clockwise seen from
# outside (so the geometric normal (b - a) x (c - a) points out).
_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)   # (8,3)
_TRIANGLES = np.array([[0, 1, 3], [0, 3, 2],      # -x
                       [4, 6, 7], [4, 7, 5],      # +x
                       [0, 4, 5], [0, 5, 1],      # -y
                       [2, 3, 7], [2, 7, 6],      # +y
                       [0, 2, 6], [0, 6, 4],      # -z
                       [1, 5, 7], [1, 7, 3]], dtype=np.int64)
BACKENDS = ('embree', 'open3d')


@dataclass
class SceneMesh:
    """Triangles of a scene with per-triangle surface attributes (all arrays indexed by triangle)."""
    vertices: np.ndarray      # (V,3) float64
    triangles: np.ndarray     # (T,3) int64
    normals: np.ndarray       # (T,3) float64, outward unit normals
    instance: np.ndarray      # (T,) int64, scene instance index
    semantic: np.ndarray      # (T,) int64, S3DIS class index
    rgb: np.ndarray           # (T,3) float64 base colour in [0, 1]
    material: np.ndarray      # (T,) int64 index into MATERIALS

    @classmethod
    def from_scene(cls, scene: _Scene) -> SceneMesh:
        parts = scene.parts
        centre = np.array([p.centre for p in parts])                     # (P,3)
        half = np.array([p.half for p in parts])
        rot = np.array([p.rot for p in parts])                           # (P,3,3)
        local = _CORNERS[None, :, :] * half[:, None, :]                   # (P,8,3)
        vertices = np.einsum('pij,pkj->pki', rot, local) + centre[:, None, :]
        triangles = (_TRIANGLES[None, :, :] + 8 * np.arange(len(parts))[:, None, None]).reshape(-1, 3)
        vertices = vertices.reshape(-1, 3)
        part = np.repeat(np.arange(len(parts)), len(_TRIANGLES))
        a, b, c = (vertices[triangles[:, k]] for k in range(3))
        normals = np.cross(b - a, c - a)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        inst = np.array([p.inst for p in parts])
        classes = np.array([CLASS_INDEX[i.cls] for i in scene.instances])
        material = np.array([MATERIALS.index(p.material) for p in parts])
        return cls(vertices, triangles, normals, inst[part], classes[inst[part]],
                   np.array([p.rgb for p in parts])[part], material[part])

    def transformed(self, rotation: np.ndarray, translation: np.ndarray) -> SceneMesh:
        """The mesh moved by x -> R x + t (rooms placed on a floor)."""
        rotation = np.asarray(rotation, float)
        return SceneMesh(self.vertices @ rotation.T + translation, self.triangles, self.normals @ rotation.T,
                         self.instance, self.semantic, self.rgb, self.material)

    @staticmethod
    def concatenate(meshes: list[SceneMesh], instance_offsets: list[int]) -> SceneMesh:
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return SceneMesh(np.concatenate([m.vertices for m in meshes]),
                         np.concatenate([m.triangles + o for m, o in zip(meshes, offsets)]),
                         np.concatenate([m.normals for m in meshes]),
                         np.concatenate([m.instance + k for m, k in zip(meshes, instance_offsets)]),
                         np.concatenate([m.semantic for m in meshes]), np.concatenate([m.rgb for m in meshes]),
                         np.concatenate([m.material for m in meshes]))


@dataclass
class Hits:
    distance: np.ndarray      # (R,) float64, inf where the ray hits nothing
    triangle: np.ndarray      # (R,) int64, -1 where the ray hits nothing

    @property
    def valid(self) -> np.ndarray:
        return self.triangle >= 0


class RayCaster:
    """First-hit ray casting against a `SceneMesh` (Embree through trimesh, or Open3D)."""

    def __init__(self, mesh: SceneMesh, backend: str = 'auto'):
        self.mesh = mesh
        if backend == 'auto':
            backend = available_backend()
        if backend not in BACKENDS:
            raise ValueError(f'ray-casting backend {backend!r}: choose one of {BACKENDS} (or auto)')
        self.backend = backend
        if backend == 'embree':
            import trimesh
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            tm = trimesh.Trimesh(mesh.vertices, mesh.triangles, process=False)
            self._intersector = RayMeshIntersector(tm)
        else:
            import open3d as o3d

            self._scene = o3d.t.geometry.RaycastingScene()
            self._scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                                      o3d.core.Tensor(mesh.triangles.astype(np.uint32)))

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> Hits:
        """Nearest hit of each ray; `directions` (R,3) need not be unit length (distance is in their units)."""
        origins = np.ascontiguousarray(origins, dtype=np.float64)
        directions = np.ascontiguousarray(directions, dtype=np.float64)
        if origins.shape != directions.shape or origins.ndim != 2 or origins.shape[1] != 3:
            raise ValueError(f'origins {origins.shape} and directions {directions.shape} must both be (R, 3)')
        if len(origins) == 0:
            return Hits(np.zeros(0), np.zeros(0, np.int64))
        if self.backend == 'embree':
            triangle = np.asarray(self._intersector.intersects_first(origins, directions), dtype=np.int64)
            # exact distance along the ray to the hit triangle's plane (float64, unlike Embree's float32 t)
            distance = np.full(len(origins), np.inf)
            hit = triangle >= 0
            normal = self.mesh.normals[triangle[hit]]
            anchor = self.mesh.vertices[self.mesh.triangles[triangle[hit], 0]]
            denom = np.einsum('ij,ij->i', normal, directions[hit])
            distance[hit] = np.einsum('ij,ij->i', normal, anchor - origins[hit]) / np.where(denom == 0, 1e-12, denom)
            return Hits(distance, triangle)
        import open3d as o3d

        rays = o3d.core.Tensor(np.concatenate([origins, directions], axis=1).astype(np.float32))
        result = self._scene.cast_rays(rays)
        distance = result['t_hit'].numpy().astype(np.float64)
        triangle = result['primitive_ids'].numpy().astype(np.int64)
        miss = ~np.isfinite(distance)
        triangle[miss] = -1
        return Hits(np.where(miss, np.inf, distance), triangle)


def available_backend() -> str:
    """'embree' when trimesh + embreex import, else 'open3d' when it imports; raises naming the install otherwise."""
    try:
        import embreex  # noqa: F401
        import trimesh  # noqa: F401
        return 'embree'
    except ImportError:
        pass
    try:
        import open3d  # noqa: F401
        return 'open3d'
    except ImportError:
        raise ImportError('virtual sensors need a ray caster: pip install trimesh embreex '
                          '(or open3d); see docs/raycasting.md') from None
