"""Shared fixtures of the runtime tests: a randomly initialised small MPNet checkpoint, its ONNX export, and
blocks cut from the real sample data (PCL office PCD, one Ouster OS-1-128 frame; benchmarks/sample_frames.py:
the shared data, or the frames .npz a GPU session carries)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import sample_frames
from mpnet_model.config import small_config
from mpnet_model.infer.scene import intensity_to_grey
from mpnet_model.model.checkpoint import save_checkpoint
from mpnet_model.model.mpnet import random_model

# The shared data, or (on a GPU machine without it) the frames .npz of benchmarks/gpu_session_prepare.py.
needs_data = pytest.mark.skipif(bool(sample_frames.missing()), reason=sample_frames.missing() or 'data found')


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised small-config MPNet with non-trivial BN statistics (eval mode differs from
    train mode, so an export that ran in train mode would be caught)."""
    cfg = small_config()
    return save_checkpoint(path, random_model(cfg, seed), cfg)


@functools.lru_cache(maxsize=1)
def exported_small() -> tuple[Path, Path]:
    """(checkpoint, ONNX) of the small model, exported once per test session with the mpnet-export CLI
    (exports take 2-15 s on the shared 2-core machine)."""
    from mpnet_model.infer.export import main

    folder = Path(tempfile.mkdtemp(prefix='mpnet-runtime-'))
    checkpoint = small_checkpoint(folder / 'small.pt')
    if main([str(checkpoint), '-o', str(folder / 'small.onnx'), '--opset', '17']) != 0:
        raise RuntimeError('mpnet-export failed on the test checkpoint')
    return checkpoint, folder / 'small.onnx'


def tiny_config():
    """Two SA levels, 256 points: the smallest MPNet for tests that export a model of their own."""
    from mpnet_model.config import small_config as make

    return make(num_points=256, sa_npoints=(64, 16), sa_radii=(0.2, 0.4), sa_mlps=((16, 32), (32, 64)),
                fp_mlps=((64,), (64, 64)), mem_per_class=4)


@functools.lru_cache(maxsize=1)
def office_cloud():
    return sample_frames.office_scan()


@functools.lru_cache(maxsize=2)
def ouster_cloud(radius: float = 15.0):
    return sample_frames.ouster_crop(0, radius)


def real_blocks(num_points: int, count: int = 3) -> np.ndarray:
    """`count` blocks from the office scan (rgb) and `count` from the Ouster frame (intensity grey): (2*count,P,9).

    Drawn with the per-block draw the fixtures were made with (`sampler='legacy'`, same blocks as before issue 12),
    so thresholds tuned on them keep their meaning."""
    from mpnet_model.infer.blocking import frame_blocks

    def blocks(xyz, colours, min_points):
        return frame_blocks(torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32)),
                            torch.from_numpy(np.ascontiguousarray(colours, dtype=np.float32)), 'grid',
                            num_points=num_points, min_points=min_points, seed=0, sampler='legacy').points.numpy()

    xyz, rgb = office_cloud()
    office = blocks(xyz, rgb, 100)
    lidar_xyz, intensity = ouster_cloud()
    lidar = blocks(lidar_xyz, intensity_to_grey(intensity), 200)
    pick = np.random.default_rng(1)
    return np.concatenate([office[np.sort(pick.choice(len(office), count, replace=False))],
                           lidar[np.sort(pick.choice(len(lidar), count, replace=False))]])
