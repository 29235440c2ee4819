"""Prepare a GPU session HERE (where the shared data and rosbags are): write gpu_carry/, the folder that
`benchmarks/gpu_session.sh` needs on the device machine, which has no ../shared, no rosbags and no pypcd4.

    .venv/bin/python benchmarks/gpu_session_prepare.py [--out gpu_carry] [--no-frame-blocks]

gpu_carry/ (git-ignored) holds:
  frames.npz  the shared Ouster bag's scans as ../shared/tools/frames_npz.py writes them, plus the PCL office scan
              ('pcl_office1_xyz', '_rgb'); benchmarks/sample_frames.py reads it when the shared data is absent.
              Checked here: every array equals what the bag / PCD readers give.
  cache/      benchmarks/frame_blocks.py's cache of the shipped model's outputs on ouster0, ouster1 and office
              (the post-processing benchmark's inputs; made with ONNX Runtime on the CPU, ~1 min each here).
The device tool carries at most 64 MiB in all (the checkout too): the script fails when carry + checkout exceed it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import sample_frames  # noqa: E402

LIMIT_MIB = 64
FRAME_BLOCKS = ('ouster0', 'ouster1', 'office')


def tool() -> Path:
    shared = Path(os.environ.get('MPNET_SHARED', ROOT.parent / 'shared'))
    return shared / 'tools' / 'frames_npz.py'


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / 2**20


def checkout_mib() -> float:
    """What travels besides the carry: tracked and untracked-not-ignored files."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b'\0')
    return sum((ROOT / os.fsdecode(p)).stat().st_size for p in listed if p and (ROOT / os.fsdecode(p)).is_file()
               ) / 2**20


def write_frames(target: Path) -> None:
    """frames_npz.py on the Ouster bag, plus the office scan, checked against the readers, written atomically."""
    from mpnet_model.io.atomic import atomic_write
    from mpnet_model.io.pointclouds import load_pcd

    data = sample_frames.shared_data()
    if not (data / sample_frames.OUSTER_BAG).is_dir() or not (data / f'{sample_frames.OFFICE}.pcd').is_file():
        raise SystemExit(f'gpu_session_prepare: the shared data is needed here and is not at {data}')
    with tempfile.TemporaryDirectory() as work:
        bags = Path(work) / 'bags.npz'
        subprocess.run([sys.executable, str(tool()), str(bags), str(data / sample_frames.OUSTER_BAG)], check=True)
        with np.load(bags) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    office = load_pcd(data / f'{sample_frames.OFFICE}.pcd')
    arrays[f'{sample_frames.OFFICE}_xyz'] = office.xyz
    arrays[f'{sample_frames.OFFICE}_rgb'] = office.rgb
    with atomic_write(target, suffix='.tmp.npz') as stream:
        np.savez_compressed(stream, **arrays)
    check_frames(target)


def check_frames(target: Path) -> None:
    """The .npz route of sample_frames gives exactly what the bag / PCD route gives."""
    from_shared = sample_frames.ouster_scans(), sample_frames.office_scan()
    saved = {key: os.environ.get(key) for key in ('MPNET_SHARED_DATA', 'MPNET_FRAMES_NPZ')}
    os.environ.update(MPNET_SHARED_DATA=str(target.parent / 'no-shared-data'), MPNET_FRAMES_NPZ=str(target))
    try:
        from_npz = sample_frames.ouster_scans(), sample_frames.office_scan()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    scans_a, scans_b = from_shared[0], from_npz[0]
    same = len(scans_a) == len(scans_b) > 0 and all(
        np.array_equal(a, b) for pair_a, pair_b in zip(scans_a, scans_b) for a, b in zip(pair_a, pair_b))
    same = same and all(np.array_equal(a, b) for a, b in zip(from_shared[1], from_npz[1]))
    if not same:
        raise SystemExit(f'gpu_session_prepare: {target} does not reproduce the shared frames')
    print(f'{target}: {len(scans_b)} Ouster scans + office scan, identical to the bag / PCD readers')


def write_frame_blocks(cache: Path, names: tuple[str, ...]) -> None:
    from benchmarks.frame_blocks import CACHE, frame_blocks

    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        frame_blocks(name)                               # made (or found) in cache/ by the benchmark's own code
        shutil.copy2(CACHE / f'frame_blocks_{name}.npz', cache / f'frame_blocks_{name}.npz')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'gpu_carry', help='carry folder (git-ignored)')
    parser.add_argument('--no-frame-blocks', action='store_true',
                        help='skip the post-processing cache (the postprocess step then computes it on the device)')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_frames(args.out / 'frames.npz')
    if not args.no_frame_blocks:
        write_frame_blocks(args.out / 'cache', FRAME_BLOCKS)
    carry, checkout = folder_mib(args.out), checkout_mib()
    print(f'carry {args.out}: {carry:.1f} MiB; checkout {checkout:.1f} MiB; together {carry + checkout:.1f} of the '
          f'{LIMIT_MIB} MiB the device tool takes')
    if carry + checkout > LIMIT_MIB:
        print('gpu_session_prepare: too large to travel', file=sys.stderr)
        return 1
    print('device tool: run(command="bash benchmarks/gpu_session.sh", carry=["gpu_carry"], timeout_s=560)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
