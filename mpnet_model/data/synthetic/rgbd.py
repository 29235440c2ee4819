"""Virtual RGB-D camera (Kinect v1, RealSense D435): organised depth-registered XYZRGB frames in the optical frame.

Optical frame (REP 103): x right, y down, z forward; pixel (row v, column u) looks along
((u - cx) / fx, (v - cy) / fy, 1).

Presets (values used, and where they come from):
- kinect: 640 x 480, fx = fy = 525, cx = 319.5, cy = 239.5 (the ROS openni default calibration); depth 0.5-8 m;
  axial noise sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m (Nguyen, Izadi, Lovell 2012, Kinect v1), then disparity
  quantised to 1/8 pixel with f_ir = 580 px and a 7.5 cm projector baseline; the projector's shadow (its position
  7.5 cm along +x) is a hole.
- realsense: D435 depth aligned to colour at 640 x 480, fx = fy = 615, cx = 320, cy = 240 (typical colour
  intrinsics); depth 0.3-6 m; RMS error z^2 x 0.08 / (f_depth 383 px x 0.05 m baseline) (Intel's depth-RMS formula,
  subpixel 0.08); the second imager's occlusion (5 cm along +x) is a hole.

Holes (NaN), besides range limits and shadows: dark surfaces (albedo luminance < 0.12) with probability 0.7,
metal / glossy surfaces near normal incidence (cos > 0.97, specular saturation) with 0.8 and elsewhere with 0.25,
glass with 0.9, grazing incidence (cos < 0.15) with 0.8, and depth edges (a 4-neighbour more than 5 % nearer or
farther) with 0.6, the band of invalid pixels real structured-light and stereo cameras leave at object boundaries,
and beyond half the maximum depth a share growing linearly to 35 % at the maximum (weak, sparse far returns).
Colour comes from the scene (the same shading as the static scans, one stain field per scene) for every pixel,
holes included, as registered XYZRGB clouds carry it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpnet_model.data.synthetic.layout import MATERIALS
from mpnet_model.data.synthetic.raycast import RayCaster
from mpnet_model.data.synthetic.shading import StainField

# body (x forward, y left, z up) <- optical (x right, y down, z forward)
BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraPreset:
    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    min_depth: float
    max_depth: float
    baseline: float          # projector / second imager offset along +x [m]: its occlusions are holes
    noise: str               # 'kinect' | 'realsense'

    def rays(self) -> np.ndarray:
        """(H, W, 3) ray directions in the optical frame with z = 1 (so the hit distance along it is depth)."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], axis=-1)

    def depth_sigma(self, z: np.ndarray) -> np.ndarray:
        if self.noise == 'kinect':
            return 0.0012 + 0.0019 * (z - 0.4) ** 2
        return z ** 2 * 0.08 / (383.0 * 0.05)

    def quantise(self, z: np.ndarray) -> np.ndarray:
        if self.noise != 'kinect':
            return z
        fb = 580.0 * 0.075
        disparity = np.round(fb / np.maximum(z, 1e-3) * 8.0) / 8.0
        return fb / np.maximum(disparity, 1e-3)

    def describe(self) -> dict:
        return {'kind': 'rgbd', 'preset': self.name, 'width': self.width, 'height': self.height, 'fx': self.fx,
                'fy': self.fy, 'cx': self.cx, 'cy': self.cy, 'min_depth': self.min_depth,
                'max_depth': self.max_depth, 'baseline': self.baseline, 'noise': self.noise}


CAMERA_PRESETS = {
    'kinect': CameraPreset('kinect', 640, 480, 525.0, 525.0, 319.5, 239.5, 0.5, 8.0, 0.075, 'kinect'),
    'realsense': CameraPreset('realsense', 640, 480, 615.0, 615.0, 320.0, 240.0, 0.3, 6.0, 0.05, 'realsense'),
}


def camera_preset(name: str) -> CameraPreset:
    if name.lower() not in CAMERA_PRESETS:
        raise ValueError(f'unknown camera preset {name!r}; choose one of {sorted(CAMERA_PRESETS)}')
    return CAMERA_PRESETS[name.lower()]


@dataclass
class CameraFrame:
    """One organised frame (H, W): NaN xyz where the camera has no depth."""
    xyz: np.ndarray            # (H,W,3) float32, optical frame, NaN = hole
    rgb: np.ndarray            # (H,W,3) uint8
    sem: np.ndarray            # (H,W) int32, -1 = hole
    ins: np.ndarray            # (H,W) int32, -1 = hole
    world_from_sensor: np.ndarray   # (4,4) world <- optical frame

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.xyz[..., 2])


def simulate_camera(caster: RayCaster, preset: CameraPreset, world_from_optical: np.ndarray,
                    stains: StainField, rng: np.random.Generator, ideal: bool = False) -> CameraFrame:
    """Cast one frame from `world_from_optical` (4,4). `ideal`: exact depth, holes only where nothing is hit or
    outside the depth range (for analytic checks)."""
    mesh = caster.mesh
    rays = preset.rays()                                                    # (H,W,3), z = 1
    shape = rays.shape[:2]
    rot, trans = world_from_optical[:3, :3], world_from_optical[:3, 3]
    direction = rays.reshape(-1, 3) @ rot.T
    origin = np.broadcast_to(trans, direction.shape)
    hits = caster.cast(origin, direction)                                   # distance = depth (z-unit rays)
    valid = hits.valid & np.isfinite(hits.distance)
    tri = np.where(valid, hits.triangle, 0)
    depth = np.where(valid, hits.distance, np.nan)
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    cos_inc = np.abs(np.einsum('ij,ij->i', mesh.normals[tri], unit))
    world_hit = origin + direction * np.where(valid, hits.distance, 0.0)[:, None]
    # colour of every pixel from the scene (holes keep their colour, as registered clouds do)
    sem = mesh.semantic[tri]
    normal = mesh.normals[tri] * np.sign(-np.einsum('ij,ij->i', mesh.normals[tri], unit))[:, None]
    rgb = stains.shade(world_hit, normal, mesh.rgb[tri], sem, rng, noise=0.0 if ideal else 0.02)
    rgb[~valid] = 0
    keep = valid & (depth >= preset.min_depth) & (depth <= preset.max_depth)
    if not ideal:
        keep &= ~_shadowed(caster, trans + rot[:, 0] * preset.baseline, world_hit, keep)
        luminance = mesh.rgb[tri] @ np.array([0.299, 0.587, 0.114])
        material = mesh.material[tri]
        shiny = np.isin(material, [MATERIALS.index('metal'), MATERIALS.index('glossy')])
        p_hole = np.zeros(len(tri))
        p_hole = np.maximum(p_hole, np.where(luminance < 0.12, 0.7, 0.0))
        p_hole = np.maximum(p_hole, np.where(shiny, np.where(cos_inc > 0.97, 0.8, 0.25), 0.0))
        p_hole = np.maximum(p_hole, np.where(material == MATERIALS.index('glass'), 0.9, 0.0))
        p_hole = np.maximum(p_hole, np.where(cos_inc < 0.15, 0.8, 0.0))
        far = np.clip((np.nan_to_num(depth) - preset.max_depth / 2) / (preset.max_depth / 2), 0.0, 1.0)
        p_hole = np.maximum(p_hole, 0.35 * far)                       # weak returns beyond half the range
        keep &= rng.random(len(tri)) >= p_hole
        keep &= ~(_depth_edges(depth.reshape(shape)).reshape(-1) & (rng.random(len(tri)) < 0.6))
        noisy = depth + rng.normal(0.0, 1.0, depth.shape) * preset.depth_sigma(np.nan_to_num(depth))
        depth = preset.quantise(noisy)
    depth = np.where(keep, depth, np.nan)
    xyz = rays.reshape(-1, 3) * depth[:, None]
    return CameraFrame(xyz=xyz.reshape(*shape, 3).astype(np.float32), rgb=rgb.reshape(*shape, 3),
                       sem=np.where(keep, sem, -1).astype(np.int32).reshape(shape),
                       ins=np.where(keep, mesh.instance[tri], -1).astype(np.int32).reshape(shape),
                       world_from_sensor=np.asarray(world_from_optical, float))


def _shadowed(caster: RayCaster, emitter: np.ndarray, points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(R,) True where the segment emitter -> point is blocked more than 2 cm before the point."""
    out = np.zeros(len(points), bool)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return out
    ray = points[idx] - emitter
    length = np.linalg.norm(ray, axis=1)
    hits = caster.cast(np.broadcast_to(emitter, ray.shape), ray / length[:, None])
    out[idx] = hits.distance < length - 0.02
    return out


def _depth_edges(depth: np.ndarray) -> np.ndarray:
    """(H,W) True where a 4-neighbour's depth differs by more than 5 % (or is missing)."""
    padded = np.pad(depth, 1, mode='edge')
    edge = np.zeros(depth.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        other = padded[dy:dy + depth.shape[0], dx:dx + depth.shape[1]]
        with np.errstate(invalid='ignore'):
            edge |= ~(np.abs(other - depth) <= 0.05 * depth)
    return edge & np.isfinite(depth)
