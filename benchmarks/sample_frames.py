"""The shared sample frames (Ouster OS-1-128 scans, PCL office scan) for tests and benchmarks, from the shared data
or, where that is absent, from a frames .npz: a GPU machine has neither ../shared nor rosbags / pypcd4 / ROS.

Lookup order: the shared data (MPNET_SHARED_DATA, default ../shared/data beside the repository) when it holds the
bag / PCD; else the frames .npz (MPNET_FRAMES_NPZ, default gpu_carry/frames.npz in the repository), written here by
``benchmarks/gpu_session_prepare.py``: the keys of ../shared/tools/frames_npz.py ('ouster_os1_128_<i>_xyz' and
'_intensity', the valid points exactly as ``read_bag_clouds`` parses them) plus 'pcl_office1_xyz' / '_rgb' (as
``load_pcd`` reads them, optical frame). Both routes give identical arrays (checked by the prepare step).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUSTER_BAG = 'ouster_os1_128'
OFFICE = 'pcl_office1'


def shared_data() -> Path:
    return Path(os.environ.get('MPNET_SHARED_DATA', ROOT.parent / 'shared' / 'data'))


def frames_npz() -> Path:
    return Path(os.environ.get('MPNET_FRAMES_NPZ', ROOT / 'gpu_carry' / 'frames.npz'))


@functools.lru_cache(maxsize=2)
def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _from_npz(key: str) -> dict[str, np.ndarray]:
    path = frames_npz()
    if not path.is_file():
        raise FileNotFoundError(f'sample frame {key!r}: not in the shared data ({shared_data()}) and no frames .npz '
                                f'at {path} (write one with `python benchmarks/gpu_session_prepare.py`, or set '
                                'MPNET_SHARED_DATA / MPNET_FRAMES_NPZ)')
    arrays = _npz(path)
    found = {name[len(key) + 1:]: value for name, value in arrays.items() if name.startswith(key + '_')}
    if 'xyz' not in found:
        raise KeyError(f'{path}: no arrays for {key!r} (has {sorted(arrays)[:6]} ...)')
    return found


def missing() -> str:
    """'' when both sample frames can be had, else what is missing (a skip reason)."""
    data = shared_data()
    if (data / f'{OFFICE}.pcd').is_file() and (data / OUSTER_BAG).is_dir():
        return ''
    if frames_npz().is_file():
        keys = _npz(frames_npz())
        if f'{OFFICE}_xyz' in keys and f'{OUSTER_BAG}_0_xyz' in keys:
            return ''
    return f'shared sample data not found under {data} (nor a frames .npz with both frames at {frames_npz()})'


def ouster_scans(limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(xyz, intensity) of the valid points of each scan of the shared Ouster bag (the first `limit`)."""
    bag = shared_data() / OUSTER_BAG
    if bag.is_dir():
        from mpnet_ros.bag_tool import read_bag_clouds

        return [(frame.xyz, frame.intensity) for frame in read_bag_clouds(bag, '/ouster/points', limit=limit)]
    scans, index = [], 0
    while limit is None or index < limit:
        try:
            arrays = _from_npz(f'{OUSTER_BAG}_{index}')
        except KeyError:
            if index == 0:
                raise
            break
        scans.append((arrays['xyz'], arrays['intensity']))
        index += 1
    return scans


def ouster_crop(scan: int = 0, radius: float = 15.0, near: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(xyz, intensity) of Ouster scan `scan` within `near`..`radius` metres of the sensor."""
    from mpnet_ros.accumulate import range_mask

    xyz, intensity = ouster_scans(scan + 1)[scan]
    keep = range_mask(xyz, near, radius)
    return xyz[keep], intensity[keep]


def office_scan() -> tuple[np.ndarray, np.ndarray]:
    """(xyz turned z-up, rgb) of the PCL office scan, as the demo reads it."""
    from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up

    pcd = shared_data() / f'{OFFICE}.pcd'
    if pcd.is_file():
        frame = load_pcd(pcd)
        return optical_to_z_up(frame.xyz), frame.rgb
    arrays = _from_npz(OFFICE)
    return optical_to_z_up(arrays['xyz']), arrays['rgb']
