"""Real-frame post-processing inputs: the shipped model's outputs on every block of a shared sample frame, cached.

The post-processing benchmark (and its GPU script) time mean shift and BlockMerging on exactly what a robot's
frame gives them: the first scan of the shared Ouster OS-1-128 bag cropped to 15 m (903 blocks of 1024 points)
and the PCL office scan, cut into blocks as ``SceneSegmenter.segment`` does and run through the shipped model
with ONNX Runtime. The outputs (embeddings, block indices, per-point argmax classes) are cached as .npz under
``cache/`` (a run of the model takes ~20-60 s on the shared 2-core machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / 'cache'


@dataclass
class FrameBlocks:
    name: str
    xyz: np.ndarray         # (N,3) float32 room points
    indices: np.ndarray     # (K,P) rows of xyz per block point
    embeddings: np.ndarray  # (K,P,E) float32 instance embeddings of the shipped model
    semantic: np.ndarray    # (K,P) int64 argmax class per block point


def _frame_cloud(name: str, scan: int = 0):
    """(xyz, rgb or None, intensity or None) of a shared sample frame: 'ouster<scan>' (15 m crop) or 'office'."""
    from benchmarks.sample_frames import office_scan, ouster_crop

    if name == 'office':
        xyz, rgb = office_scan()
        return xyz, rgb, None
    xyz, intensity = ouster_crop(scan, 15.0)
    return xyz, None, intensity


FRAMES = ('ouster0', 'ouster1', 'ouster2', 'office')


def frame_blocks(name: str = 'ouster0', batch_size: int = 32, backend: str = 'onnxruntime',
                 device: str = 'cpu') -> FrameBlocks:
    """The shipped model's block outputs for frame ``name`` ('ouster0'..'ouster2', 'office'), cached in cache/
    (per backend; ``device`` only says where the model runs, e.g. the torch backend on 'cuda')."""
    suffix = '' if backend == 'onnxruntime' else f'_{backend}'
    path = CACHE / f'frame_blocks_{name}{suffix}.npz'
    if path.is_file():
        return _load(name, path)
    from mpnet_model.data.blocks import room_to_blocks
    from mpnet_model.infer.scene import SceneSegmenter

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
    _save(result, path)
    return result


def _first_copies(indices: np.ndarray) -> np.ndarray:
    """(K,P) room indices -> (K,P) position in its block of the first copy of each point's room index."""
    order = np.argsort(indices, axis=1, kind='stable')
    sorted_indices = np.take_along_axis(indices, order, 1)
    starts = np.ones(indices.shape, dtype=bool)
    starts[:, 1:] = sorted_indices[:, 1:] != sorted_indices[:, :-1]
    run = np.cumsum(starts, axis=1) - 1  # run of each sorted position
    run_first = np.zeros(indices.shape, dtype=np.int64)
    rows = np.nonzero(starts)
    run_first[rows[0], run[starts]] = order[starts]
    first = np.empty(indices.shape, dtype=np.int64)
    np.put_along_axis(first, order, np.take_along_axis(run_first, run, 1), 1)
    return first


def _save(frame: FrameBlocks, path: Path) -> None:
    """Compact cache (~10 MB for an Ouster frame instead of 70): the model's outputs are stored once per distinct
    point of a block when every copy of a point has the same outputs (as with ONNX Runtime), else in full."""
    from mpnet_model.io.atomic import atomic_write

    first = _first_copies(frame.indices)
    copy_rows = first.reshape(-1) + np.repeat(np.arange(len(first)) * first.shape[1], first.shape[1])
    flat_embeddings = frame.embeddings.reshape(-1, frame.embeddings.shape[-1])
    flat_semantic = frame.semantic.reshape(-1)
    compact = (np.array_equal(flat_embeddings[copy_rows], flat_embeddings)
               and np.array_equal(flat_semantic[copy_rows], flat_semantic))
    arrays = dict(xyz=frame.xyz, indices=frame.indices.astype(np.int32))
    if compact:
        own = first.reshape(-1) == np.tile(np.arange(first.shape[1]), len(first))
        arrays.update(first=first.astype(np.uint16), distinct_embeddings=flat_embeddings[own],
                      distinct_semantic=flat_semantic[own].astype(np.uint8))
    else:
        arrays.update(embeddings=frame.embeddings, semantic=frame.semantic)
    with atomic_write(path, suffix='.tmp.npz') as stream:
        np.savez_compressed(stream, **arrays)


def _load(name: str, path: Path) -> FrameBlocks:
    data = np.load(path)
    indices = data['indices'].astype(np.int64)
    if 'embeddings' in data:
        return FrameBlocks(name, data['xyz'], indices, data['embeddings'], data['semantic'].astype(np.int64))
    first = data['first'].astype(np.int64)
    num_blocks, block_points = first.shape
    own = (first == np.arange(block_points)).reshape(-1)
    entry = np.cumsum(own) - 1  # (K*P,) row of each first copy in the distinct arrays
    copy_rows = (first + np.arange(num_blocks)[:, None] * block_points).reshape(-1)
    embeddings = data['distinct_embeddings'][entry[copy_rows]].reshape(num_blocks, block_points, -1)
    semantic = data['distinct_semantic'][entry[copy_rows]].astype(np.int64).reshape(num_blocks, block_points)
    return FrameBlocks(name, data['xyz'], indices, embeddings, semantic)


if __name__ == '__main__':
    for frame_name in FRAMES:
        blocks = frame_blocks(frame_name)
        print(frame_name, blocks.embeddings.shape, blocks.xyz.shape)
