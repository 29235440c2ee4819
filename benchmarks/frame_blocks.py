"""Real-frame post-processing inputs: the shipped model's outputs on every block of a shared sample frame, cached.

The post-processing benchmark (and its GPU script) time mean shift and BlockMerging on exactly what a robot's
frame gives them: the first scan of the shared Ouster OS-1-128 bag cropped to 15 m (903 blocks of 1024 points)
and the PCL office scan, cut into blocks as ``SceneSegmenter.segment`` does and run through the shipped model
with ONNX Runtime. The outputs (embeddings, block indices, per-point argmax classes) are cached as .npz under
``cache/`` (a run of the model takes ~20-60 s on the shared 2-core machine).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / 'cache'
DATA = Path(os.environ.get('MPNET_SHARED_DATA', '/work/shared/data'))


@dataclass
class FrameBlocks:
    name: str
    xyz: np.ndarray         # (N,3) float32 room points
    indices: np.ndarray     # (K,P) rows of xyz per block point
    embeddings: np.ndarray  # (K,P,E) float32 instance embeddings of the shipped model
    semantic: np.ndarray    # (K,P) int64 argmax class per block point


def _frame_cloud(name: str, scan: int = 0):
    """(xyz, rgb or None, intensity or None) of a shared sample frame: 'ouster<scan>' (15 m crop) or 'office'."""
    if name == 'office':
        from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up
        frame = load_pcd(DATA / 'pcl_office1.pcd')
        return optical_to_z_up(frame.xyz), frame.rgb, None
    from mpnet_ros.accumulate import range_mask
    from mpnet_ros.bag_tool import read_bag_clouds
    frames = list(read_bag_clouds(DATA / 'ouster_os1_128', '/ouster/points', limit=scan + 1))
    frame = frames[scan]
    keep = range_mask(frame.xyz, 0.0, 15.0)
    return frame.xyz[keep], None, frame.intensity[keep]


FRAMES = ('ouster0', 'ouster1', 'ouster2', 'office')


def frame_blocks(name: str = 'ouster0', batch_size: int = 32, backend: str = 'onnxruntime',
                 device: str = 'cpu') -> FrameBlocks:
    """The shipped model's block outputs for frame ``name`` ('ouster0'..'ouster2', 'office'), cached in cache/
    (per backend; ``device`` only says where the model runs, e.g. the torch backend on 'cuda')."""
    suffix = '' if backend == 'onnxruntime' else f'_{backend}'
    path = CACHE / f'frame_blocks_{name}{suffix}.npz'
    if path.is_file():
        data = np.load(path)
        return FrameBlocks(name, data['xyz'], data['indices'], data['embeddings'], data['semantic'])
    from mpnet_model.data.blocks import room_to_blocks
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.io.atomic import atomic_write

    scan = int(name[len('ouster'):]) if name.startswith('ouster') else 0
    xyz, rgb, intensity = _frame_cloud(name if name == 'office' else 'ouster', scan)
    segmenter = SceneSegmenter.from_config(backend, '', device=device)
    xyz = np.asarray(xyz, dtype=np.float32)
    colours = segmenter.colours(xyz.shape[0], rgb, intensity)
    blocks = room_to_blocks(xyz, colours, block_size=segmenter.block_size, stride=segmenter.stride,
                            num_points=segmenter.num_points, min_points=segmenter.min_block_points,
                            rng=np.random.default_rng(segmenter.seed))
    embeddings, semantic = [], []
    for start in tqdm(range(0, len(blocks), batch_size), desc=f'shipped model ({backend}, {device}) on {name}'):
        logits, embed = segmenter.backend.run(blocks.points[start:start + batch_size])
        embeddings.append(np.asarray(embed, dtype=np.float32))
        semantic.append(np.asarray(logits).argmax(-1).astype(np.int64))
    result = FrameBlocks(name, xyz, blocks.indices.astype(np.int64), np.concatenate(embeddings),
                         np.concatenate(semantic))
    with atomic_write(path, suffix='.tmp.npz') as stream:
        np.savez(stream, xyz=result.xyz, indices=result.indices, embeddings=result.embeddings,
                 semantic=result.semantic)
    return result


if __name__ == '__main__':
    for frame_name in FRAMES:
        blocks = frame_blocks(frame_name)
        print(frame_name, blocks.embeddings.shape, blocks.xyz.shape)
