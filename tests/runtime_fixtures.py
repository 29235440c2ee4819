"""Shared fixtures of the runtime tests: a randomly initialised small MPNet checkpoint, its ONNX export, and
blocks cut from the real sample data in /work/shared/data (PCL office PCD, one Ouster OS-1-128 frame)."""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mpnet_model.config import small_config
from mpnet_model.data.blocks import room_to_blocks
from mpnet_model.infer.scene import intensity_to_grey
from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up
from mpnet_model.model.checkpoint import save_checkpoint
from mpnet_model.model.mpnet import MPNet
from mpnet_ros.accumulate import range_mask
from mpnet_ros.bag_tool import read_bag_clouds

DATA = Path(os.environ.get('MPNET_SHARED_DATA', Path(__file__).resolve().parents[2] / 'shared' / 'data'))
OFFICE_PCD = DATA / 'pcl_office1.pcd'
OUSTER_BAG = DATA / 'ouster_os1_128'

needs_data = pytest.mark.skipif(not OFFICE_PCD.is_file() or not OUSTER_BAG.is_dir(),
                                reason=f'shared sample data not found under {DATA}')


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised small-config MPNet with non-trivial BN statistics (eval mode differs from
    train mode, so an export that ran in train mode would be caught)."""
    torch.manual_seed(seed)
    cfg = small_config()
    model = MPNet(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, model.eval(), cfg)


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
    frame = load_pcd(OFFICE_PCD)
    return optical_to_z_up(frame.xyz), frame.rgb


@functools.lru_cache(maxsize=2)
def ouster_cloud(radius: float = 15.0):
    frame = next(read_bag_clouds(OUSTER_BAG, '/ouster/points', limit=1))
    keep = range_mask(frame.xyz, 0.0, radius)
    return frame.xyz[keep], frame.intensity[keep]


def real_blocks(num_points: int, count: int = 3) -> np.ndarray:
    """`count` blocks from the office scan (rgb) and `count` from the Ouster frame (intensity grey): (2*count,P,9)."""
    xyz, rgb = office_cloud()
    office = room_to_blocks(xyz, rgb, num_points=num_points, rng=np.random.default_rng(0)).points
    lidar_xyz, intensity = ouster_cloud()
    lidar = room_to_blocks(lidar_xyz, intensity_to_grey(intensity), num_points=num_points, min_points=200,
                           rng=np.random.default_rng(0)).points
    pick = np.random.default_rng(1)
    return np.concatenate([office[np.sort(pick.choice(len(office), count, replace=False))],
                           lidar[np.sort(pick.choice(len(lidar), count, replace=False))]])
