"""Ray-casting libraries for the virtual sensors, measured in one run on the same scenes and rays.

Casts a full OS-1-128 frame (128 x 1024 rays, spinning from the room's centre) and a 640 x 480 depth-camera frame
into generated rooms with every backend that imports (trimesh + embreex, Open3D's RaycastingScene), checks that
they agree on the hit triangles, and prints rays per second and each backend's speed relative to the first one.
Also times building the scene (mesh -> acceleration structure), which the sensors pay once per scene.

    python benchmarks/bench_raycast.py [--rooms 4] [--repeats 5] [--out benchmarks/results/raycast.md]

Run it in an environment that has both libraries (see docs/raycasting.md for how the figures were taken).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
from pathlib import Path

import numpy as np

from mpnet_model.data.synthetic.layout import build_scene
from mpnet_model.data.synthetic.raycast import BACKENDS, RayCaster, SceneMesh


def lidar_rays(centre: np.ndarray, rows: int = 128, cols: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    alt = np.radians(np.linspace(21.0, -21.8, rows))[:, None]
    az = np.linspace(0, 2 * np.pi, cols, endpoint=False)[None, :]
    d = np.stack([np.cos(alt) * np.cos(az), np.cos(alt) * np.sin(az), np.sin(alt) * np.ones_like(az)], -1)
    return np.broadcast_to(centre, d.shape).reshape(-1, 3).copy(), d.reshape(-1, 3)


def camera_rays(centre: np.ndarray, width: int = 640, height: int = 480, f: float = 525.0):
    u, v = np.meshgrid(np.arange(width) - width / 2 + 0.5, np.arange(height) - height / 2 + 0.5)
    d = np.stack([np.ones_like(u) * f, -u, -v], -1).reshape(-1, 3)       # looking along +x
    return np.broadcast_to(centre, d.shape).copy(), d / np.linalg.norm(d, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rooms', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    backends = [b for b in BACKENDS if _importable(b)]
    if not backends:
        raise SystemExit('no ray-casting backend installed (pip install trimesh embreex, or open3d)')
    meshes = []
    for i in range(args.rooms):
        scene, _, _ = build_scene(np.random.default_rng([7, i]), 'office' if i % 2 == 0 else 'conferenceRoom')
        meshes.append((SceneMesh.from_scene(scene), np.array([*scene.size[:2] / 2, 1.0])))
    rows = []
    reference = {}
    for backend in backends:
        build, lidar, camera, agree = [], [], [], []
        for k, (mesh, centre) in enumerate(meshes):
            t0 = time.perf_counter()
            caster = RayCaster(mesh, backend)
            build.append(time.perf_counter() - t0)
            for kind, (o, d), store in (('lidar', lidar_rays(centre), lidar), ('camera', camera_rays(centre), camera)):
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    hits = caster.cast(o, d)
                    times.append(time.perf_counter() - t0)
                store.append(len(o) / np.median(times))
                key = (k, kind)
                if key in reference:
                    agree.append(np.mean(reference[key] == hits.triangle))
                else:
                    reference[key] = hits.triangle
        rows.append((backend, np.median(build) * 1e3, np.median(lidar), np.median(camera),
                     np.mean(agree) if agree else 1.0, len(meshes[0][0].triangles)))
    base = rows[0]
    lines = ['| backend | scene build [ms] | lidar frame rays/s | camera frame rays/s | lidar speed vs '
             f'{base[0]} | same hit triangle as {base[0]} |', '|---|---|---|---|---|---|']
    for name, build_ms, lid, cam, agree, _ in rows:
        lines.append(f'| {name} ({_version(name)}) | {build_ms:.1f} | {lid / 1e6:.2f} M | {cam / 1e6:.2f} M | '
                     f'{lid / base[2]:.2f}x | {agree * 100:.2f} % |')
    text = '\n'.join(lines)
    print(text)
    if args.out:
        from mpnet_model.io.atomic import atomic_write_text

        header = (f'# Ray casting for the virtual sensors\n\n`python benchmarks/bench_raycast.py`, {args.rooms} rooms '
                  f'(~{rows[0][5]} triangles each), median of {args.repeats} casts, one process, '
                  f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs.\n\n')
        atomic_write_text(Path(args.out), header + text + '\n')


def _importable(backend: str) -> bool:
    modules = ('trimesh', 'embreex') if backend == 'embree' else ('open3d',)
    try:
        for m in modules:
            importlib.import_module(m)
        return True
    except ImportError:
        return False


def _version(backend: str) -> str:
    if backend == 'embree':
        import embreex
        import trimesh

        return f'trimesh {trimesh.__version__}, embreex {getattr(embreex, "__version__", "?")}'
    import open3d

    return f'open3d {open3d.__version__}'


if __name__ == '__main__':
    main()
