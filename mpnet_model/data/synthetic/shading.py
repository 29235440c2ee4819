"""Appearance of the synthetic scenes: class-typical base colours per object and point shading (face lighting,
low-frequency stains on floor / walls / ceiling, per-point sensor noise)."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from mpnet_model.data.classes import S3DIS_CLASSES

CLASS_INDEX = {name: i for i, name in enumerate(S3DIS_CLASSES)}

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


@dataclass(frozen=True)
class StainField:
    """Low-frequency stains of one scene: 4 plane waves (wave vectors (4,3), phases (4,)). Frames of a sensor
    sequence share the scene's field so a wall keeps its look from frame to frame."""
    waves: np.ndarray
    phases: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator) -> StainField:
        waves = rng.normal(0, 1, (4, 3))
        waves *= (2 * np.pi / rng.uniform(0.6, 4.0, 4) / np.linalg.norm(waves, axis=1))[:, None]
        return cls(waves, rng.uniform(0, 2 * np.pi, 4))

    def shade(self, xyz: np.ndarray, normal: np.ndarray, base: np.ndarray, sem: np.ndarray,
              rng: np.random.Generator, noise: float = 0.025) -> np.ndarray:
        """Point colours (n,3) uint8: base colour x face lighting x stains (strong on floor, walls and ceiling,
        so they are not uniform) + per-point sensor noise of std `noise`."""
        light = 0.82 + 0.18 * normal[:, 2] + 0.05 * normal[:, 0] - 0.03 * normal[:, 1]      # (n,)
        stain = np.sin(xyz @ self.waves.T + self.phases).mean(axis=1)                        # (n,)
        structural = np.isin(sem, [CLASS_INDEX['ceiling'], CLASS_INDEX['floor'], CLASS_INDEX['wall']])
        amount = np.where(structural, 0.12, 0.04)
        rgb = base * (light * (1.0 + amount * stain))[:, None] + rng.normal(0, noise, base.shape)
        return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _shade(xyz: np.ndarray, normal: np.ndarray, base: np.ndarray, sem: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Static-scan colours: a fresh stain field per room, then `StainField.shade`."""
    return StainField.draw(rng).shade(xyz, normal, base, sem, rng)
