"""Virtual spinning lidar (Ouster OS-1-64 / OS-1-128 / OS-0-128): organised frames ray-cast from a moving pose.

Geometry is Ouster's range-to-XYZ model (lidar coordinate frame, destaggered image): pixel (row u, column v) was
measured at measurement id m = (v - pixel_shift[u]) mod W, with

    theta_e = 2 pi (1 - m / W)           encoder angle          theta_a = -2 pi azimuth[u] / 360
    phi = 2 pi altitude[u] / 360         beam altitude          n = lidar_origin_to_beam_origin
    xyz = (r - n) (cos(theta_e + theta_a) cos phi, sin(theta_e + theta_a) cos phi, sin phi)
          + n (cos theta_e, sin theta_e, 0)

so the ray leaves the beam origin n (cos theta_e, sin theta_e, 0) and the reported range r is the hit distance plus n.
Column m fires at m / (W x rate) s after the frame start; each column is cast from the pose at its own time and the
point is reported in that instantaneous sensor frame, as drivers do (no motion compensation).

Presets (values used, and where they come from):
- OS-1-128: beam altitudes / azimuths, beam origin (15.806 mm) and pixel shifts of the shared sensor's calibration
  (`mpnet_model/assets/ouster_os1_128_beams.json`, copied from ../shared/data/ouster_os1_128/sensor_metadata.json).
- OS-1-64: OS1 data sheet (64 channels, +16.6 to -16.6 deg, uniform spacing); azimuth offsets repeat the pattern
  +3.052 / +0.857 / -0.868 / -3.051 deg and the beam origin is 13.762 mm, both from the OS1 user guide's example
  calibration. Assumed, not measured on a unit.
- OS-0-128: OS0 data sheet (128 channels, 90 deg vertical field: +45 to -45 deg, uniform spacing); the azimuth
  offsets reuse the OS-1-128 calibration's 4-beam pattern and the beam origin is 27.67 mm. Assumed.
- All: 10 Hz; 1024 or 2048 columns (pixel shifts scale with the column count); range noise 1.5 cm (1 sigma) at high
  SNR, growing as sqrt(250 / SNR) (data sheet: 1.5 cm at SNR > 250, 3 cm at SNR 100), capped at 10 cm; minimum
  range 0.8 m (OS1 data sheet) / 0.3 m (OS0), maximum 120 m / 50 m.

Returns: intensity = photon-count-like signal K rho_eff cos(incidence) / r^2 (Poisson noise), with rho_eff the
surface's near-infrared reflectivity (from its albedo; metal and glossy surfaces add a specular peak near normal
incidence; glass returns 30 % of beams, the rest pass out of the building and are lost); reflectivity = rho_eff
x 100 (Ouster's calibrated 0-100 Lambertian scale); ambient = Poisson(80). Dropouts: weak returns (signal under 15)
vanish with a probability that grows as the signal falls, grazing hits (cos < 0.05) vanish, plus 0.2 % at random.
Invalid returns are reported as Ouster does: range 0 and xyz 0, 0, 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpnet_model.data.synthetic.layout import MATERIALS
from mpnet_model.data.synthetic.raycast import RayCaster

ASSETS = Path(__file__).resolve().parents[2] / 'assets'
RATE_HZ = 10.0
SIGNAL_SCALE = 2000.0            # K: signal of a rho = 1 Lambertian target at 1 m, normal incidence
SNR_REFERENCE = 250.0
WEAK_SIGNAL = 15.0
GLASS_RETURN = 0.3


@dataclass(frozen=True)
class LidarPreset:
    name: str
    altitude_deg: np.ndarray           # (H,) beam altitude angles, top beam first
    azimuth_deg: np.ndarray            # (H,) beam azimuth offsets
    beam_origin_m: float               # lidar_origin_to_beam_origin
    min_range: float
    max_range: float
    range_noise: float                 # 1 sigma at high SNR [m]
    columns: int = 1024
    shift_1024: np.ndarray | None = field(default=None, compare=False)   # calibrated pixel shifts at 1024 columns

    @property
    def rows(self) -> int:
        return int(self.altitude_deg.shape[0])

    def with_columns(self, columns: int) -> LidarPreset:
        if columns not in (512, 1024, 2048):
            raise ValueError(f'columns={columns}: Ouster sensors run 512, 1024 or 2048 columns')
        return LidarPreset(self.name, self.altitude_deg, self.azimuth_deg, self.beam_origin_m, self.min_range,
                           self.max_range, self.range_noise, columns, self.shift_1024)

    def pixel_shift(self) -> np.ndarray:
        """(H,) destagger shifts: the calibration's at 1024 columns scaled, else from the azimuth offsets."""
        if self.shift_1024 is not None:
            return np.round(np.asarray(self.shift_1024) * self.columns / 1024).astype(np.int64)
        shift = np.round(self.azimuth_deg * self.columns / 360.0).astype(np.int64)
        return shift - shift.min()

    def measurement_ids(self) -> np.ndarray:
        """(H, W) measurement id (firing column) of every destaggered pixel."""
        cols = np.arange(self.columns)[None, :]
        return (cols - self.pixel_shift()[:, None]) % self.columns

    def beams(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel (H, W): ray origin (H,W,3) and unit direction (H,W,3) in the lidar frame, firing time [s]."""
        m = self.measurement_ids()
        theta_e = 2 * np.pi * (1.0 - m / self.columns)
        theta = theta_e - np.radians(self.azimuth_deg)[:, None]
        phi = np.radians(self.altitude_deg)[:, None] * np.ones_like(theta)
        direction = np.stack([np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)], axis=-1)
        origin = self.beam_origin_m * np.stack([np.cos(theta_e), np.sin(theta_e), np.zeros_like(theta_e)], axis=-1)
        return origin, direction, m / (self.columns * RATE_HZ)

    def describe(self) -> dict:
        return {'kind': 'lidar', 'preset': self.name, 'rows': self.rows, 'columns': self.columns,
                'rate_hz': RATE_HZ, 'beam_altitude_angles': self.altitude_deg.tolist(),
                'beam_azimuth_angles': self.azimuth_deg.tolist(),
                'lidar_origin_to_beam_origin_mm': self.beam_origin_m * 1e3,
                'pixel_shift_by_row': self.pixel_shift().tolist(), 'min_range': self.min_range,
                'max_range': self.max_range, 'range_noise': self.range_noise}


def _os1_128() -> LidarPreset:
    cal = json.loads((ASSETS / 'ouster_os1_128_beams.json').read_text())
    return LidarPreset('OS-1-128', np.asarray(cal['beam_altitude_angles'], float),
                       np.asarray(cal['beam_azimuth_angles'], float), cal['lidar_origin_to_beam_origin_mm'] / 1e3,
                       0.8, 120.0, 0.015, shift_1024=np.asarray(cal['pixel_shift_by_row']))


def _os1_64() -> LidarPreset:
    return LidarPreset('OS-1-64', np.linspace(16.6, -16.6, 64), np.tile([3.052, 0.857, -0.868, -3.051], 16),
                       0.013762, 0.8, 120.0, 0.015)


def _os0_128() -> LidarPreset:
    pattern = np.asarray(json.loads((ASSETS / 'ouster_os1_128_beams.json').read_text())['beam_azimuth_angles'][:4])
    return LidarPreset('OS-0-128', np.linspace(45.0, -45.0, 128), np.tile(pattern, 32), 0.02767, 0.3, 50.0, 0.015)


LIDAR_PRESETS = {'os1-64': _os1_64, 'os1-128': _os1_128, 'os0-128': _os0_128}


def lidar_preset(name: str, columns: int = 1024) -> LidarPreset:
    key = name.lower().replace('_', '-')
    if key not in LIDAR_PRESETS:
        raise ValueError(f'unknown lidar preset {name!r}; choose one of {sorted(LIDAR_PRESETS)}')
    return LIDAR_PRESETS[key]().with_columns(columns)


@dataclass
class LidarFrame:
    """One organised, destaggered frame (H rows = rings, W columns); invalid returns have range 0, xyz 0."""
    xyz: np.ndarray            # (H,W,3) float32, lidar frame at each column's firing time
    range_mm: np.ndarray       # (H,W) uint32, 0 = no return
    intensity: np.ndarray      # (H,W) float32
    reflectivity: np.ndarray   # (H,W) uint16
    ambient: np.ndarray        # (H,W) uint16
    t_ns: np.ndarray           # (H,W) uint32, firing time since the frame's first column
    sem: np.ndarray            # (H,W) int32, -1 = no return
    ins: np.ndarray            # (H,W) int32, scene instance, -1 = no return
    world_from_sensor: np.ndarray   # (4,4) pose at the frame start

    @property
    def valid(self) -> np.ndarray:
        return self.range_mm > 0


def nir_reflectivity(rgb: np.ndarray, material: np.ndarray, cos_incidence: np.ndarray) -> np.ndarray:
    """Effective near-infrared reflectivity rho_eff (n,) of hit surfaces: albedo-based, with a specular peak near
    normal incidence for metal and glossy materials, low for glass."""
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    rho = 0.1 + 0.75 * luminance
    metal, glossy, glass = (material == MATERIALS.index(k) for k in ('metal', 'glossy', 'glass'))
    rho = np.where(metal, rho * (0.3 + 3.0 * cos_incidence ** 20), rho)
    rho = np.where(glossy, rho * (0.6 + 2.0 * cos_incidence ** 30), rho)
    return np.where(glass, 0.05, rho)


def simulate_lidar(caster: RayCaster, preset: LidarPreset, pose_at, rng: np.random.Generator,
                   ideal: bool = False) -> LidarFrame:
    """Cast one frame. `pose_at(t)` gives the (4,4) world_from_sensor pose at `t` seconds after the frame start
    (an array of times -> (n,4,4)); the sensor moves during the 100 ms sweep. `ideal`: no range noise and no
    dropouts (every hit inside the range limits returns; for analytic checks)."""
    mesh = caster.mesh
    origin_l, direction_l, t_fire = preset.beams()                          # (H,W,3), (H,W,3), (H,W)
    shape = t_fire.shape
    poses = np.asarray(pose_at(t_fire.reshape(-1)))                          # (R,4,4)
    rot, trans = poses[:, :3, :3], poses[:, :3, 3]
    origin = np.einsum('rij,rj->ri', rot, origin_l.reshape(-1, 3)) + trans
    direction = np.einsum('rij,rj->ri', rot, direction_l.reshape(-1, 3))
    hits = caster.cast(origin, direction)
    tri = hits.triangle
    valid = hits.valid & np.isfinite(hits.distance)
    distance = np.where(valid, hits.distance, 0.0)
    n_tri = np.where(valid, tri, 0)
    cos_inc = np.abs(np.einsum('ij,ij->i', mesh.normals[n_tri], direction))
    rng_range = distance + preset.beam_origin_m
    rho = nir_reflectivity(mesh.rgb[n_tri], mesh.material[n_tri], cos_inc)
    signal = SIGNAL_SCALE * rho * cos_inc / np.maximum(rng_range, 0.5) ** 2
    signal = rng.poisson(np.clip(signal, 0, 1e6)).astype(np.float32)
    # dropouts: glass passes most beams, weak and grazing returns vanish, plus rare random losses
    glass = mesh.material[n_tri] == MATERIALS.index('glass')
    keep = valid & (rng_range >= preset.min_range) & (rng_range <= preset.max_range)
    if not ideal:
        keep &= ~(glass & (rng.random(tri.shape) > GLASS_RETURN))
        keep &= rng.random(tri.shape) < np.clip(signal / WEAK_SIGNAL, 0.0, 1.0)
        keep &= (cos_inc > 0.05) & (rng.random(tri.shape) > 0.002)
    sigma = np.minimum(preset.range_noise * np.sqrt(np.maximum(1.0, SNR_REFERENCE / np.maximum(signal, 1.0))), 0.10)
    measured = rng_range + (0.0 if ideal else rng.normal(0.0, 1.0, tri.shape) * sigma)
    keep &= measured > preset.min_range
    measured = np.where(keep, measured, 0.0)
    xyz = (measured - preset.beam_origin_m)[:, None] * direction_l.reshape(-1, 3) + origin_l.reshape(-1, 3)
    xyz[~keep] = 0.0
    reflect = np.clip(np.rint(rho * 100.0 * (1 + rng.normal(0, 0.05, rho.shape))), 0, 255)
    return LidarFrame(
        xyz=xyz.reshape(*shape, 3).astype(np.float32),
        range_mm=np.rint(measured * 1e3).astype(np.uint32).reshape(shape),
        intensity=np.where(keep, signal, 0.0).astype(np.float32).reshape(shape),
        reflectivity=np.where(keep, reflect, 0).astype(np.uint16).reshape(shape),
        ambient=rng.poisson(80.0, shape).astype(np.uint16),
        t_ns=np.rint(t_fire * 1e9).astype(np.uint32),
        sem=np.where(keep, mesh.semantic[n_tri], -1).astype(np.int32).reshape(shape),
        ins=np.where(keep, mesh.instance[n_tri], -1).astype(np.int32).reshape(shape),
        world_from_sensor=np.asarray(pose_at(np.zeros(1)))[0])
