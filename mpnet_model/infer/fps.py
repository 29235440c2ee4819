"""Nested farthest point sampling (FPS) on the blocks' device, for every backend.

The exported graphs take the FPS indices of every SA level as inputs (see mpnet_model/infer/export.py). This module
computes them where the blocks are:

* `nested_fps_torch(xyz, sa_npoints)`: torch, any device, batched over blocks; the arithmetic of
  `mpnet_model.model.pointnet2.farthest_point_sample` (bit-identical indices to it and to the numpy FPS of
  `mpnet_model.infer.backends.base`). Every backend reaches it through `NestedFps`.
* `NestedFps`: the same, and on CUDA each (blocks, points) shape is captured once into a CUDA graph and replayed.
  FPS is a sequential loop of ~7 small kernels per sample step (340 steps for the shipped model, 1360 for the paper
  config): launched eagerly that is thousands of launches per call (the 40-50 ms per forward measured on an H200);
  replayed from a graph it is one launch. Batches are padded to a power of two (>= 16) so a few graphs serve
  every frame; at most `max_graphs` are kept (least recently used dropped).
* `farthest_point_sample_np` / `nested_sample_indices`: numpy, CPU, with an exact early exit: once every distinct
  position of a block is chosen its distances are all 0 and FPS picks index 0 for the remaining steps, so those
  steps are filled in directly. A sparse lidar block (tens of points resampled to 1024) then costs tens of
  steps, not 256.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mpnet_model.model.pointnet2 import farthest_point_sample, gather_points

LOG = logging.getLogger(__name__)
_EXIT_CHECK_EVERY = 8     # numpy FPS: steps between checks for finished blocks


@torch.no_grad()
def nested_fps_torch(xyz: Tensor, sa_npoints: Sequence[int]) -> list[Tensor]:
    """xyz (B, N, 3) -> FPS indices per SA level, entry l (B, npoint_l) into the points of level l (0 = input)."""
    indices = []
    for npoint in sa_npoints:
        index = farthest_point_sample(xyz, int(npoint))
        indices.append(index)
        xyz = gather_points(xyz, index)
    return indices


def _graphs_supported(device: torch.device) -> bool:
    """CUDA graphs exist on CUDA devices only (tests switch this on to run the graph path with a CPU stand-in)."""
    return device.type == 'cuda'


class NestedFps:
    """Callable nested FPS: CUDA tensors go through cached CUDA graphs, others run `nested_fps_torch` eagerly."""

    def __init__(self, sa_npoints: Sequence[int], use_graphs: bool = True, max_graphs: int = 8):
        self.sa_npoints = tuple(int(n) for n in sa_npoints)
        self.use_graphs = bool(use_graphs)
        self.max_graphs = int(max_graphs)
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(self, xyz: Tensor) -> list[Tensor]:
        xyz = xyz.contiguous()
        if not _graphs_supported(xyz.device) or not self.use_graphs:
            return nested_fps_torch(xyz, self.sa_npoints)
        batch = xyz.shape[0]
        padded = max(16, 1 << (batch - 1).bit_length())
        key = (padded, xyz.shape[1], xyz.dtype, xyz.device)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(key)
            except RuntimeError as error:   # capture unsupported here: stay correct, run eagerly from now on
                LOG.warning('FPS CUDA graph capture failed (%s); running FPS eagerly', error)
                self.use_graphs = False
                return nested_fps_torch(xyz, self.sa_npoints)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        with torch.no_grad():
            static_in[:batch].copy_(xyz)
            if padded > batch:
                static_in[batch:].copy_(xyz[:1].expand(padded - batch, -1, -1))
            graph.replay()
            return [index[:batch].clone() for index in static_out]

    def _capture(self, key: tuple) -> tuple:
        """Capture the nested FPS of one (padded batch, points) shape. The static buffers are made outside
        inference mode whatever the caller's mode (the first capture runs inside `SceneSegmenter.segment`): an
        inference tensor could not take the in-place copy of a later call from outside inference mode. The capture
        is thread-local: CUDA work of the node's other threads meanwhile does not invalidate it."""
        padded, num_points, dtype, device = key
        with torch.inference_mode(False), torch.no_grad():
            static_in = torch.zeros(padded, num_points, 3, dtype=dtype, device=device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):          # warm-up outside the capture, as torch.cuda.graphs asks
                nested_fps_torch(static_in, self.sa_npoints)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode='thread_local'):
                static_out = nested_fps_torch(static_in, self.sa_npoints)
        return graph, static_in, static_out


def farthest_point_sample_np(xyz: np.ndarray, npoint: int, early_exit: bool = True) -> np.ndarray:
    """Farthest point sampling (B, N, 3) -> (B, npoint) int64, bit-identical to the torch reference.

    Start at index 0, keep every point's squared distance to the chosen set (init 1e10, float32), pick the first
    arg-max; numpy because its per-step overhead is ~4x lower than torch eager on the CPU. With the exact early
    exit of the module docstring.
    """
    batch, num_points, _ = xyz.shape
    if not 0 < npoint <= num_points:
        raise ValueError(f'farthest_point_sample: npoint={npoint} must be in [1, N={num_points}]')
    coords = [np.ascontiguousarray(xyz[..., axis], dtype=np.float32) for axis in range(3)]   # 3 x (B, N)
    chosen = np.zeros((batch, npoint), dtype=np.int64)       # finished blocks keep 0 = FPS's pick on all-zero rows
    active = np.arange(batch)                                 # blocks still sampling
    min_dist = np.full((batch, num_points), 1e10, dtype=np.float32)
    farthest = np.zeros(batch, dtype=np.int64)
    rows = np.arange(batch)
    dist, scratch = np.empty_like(min_dist), np.empty_like(min_dist)
    for step in range(npoint):
        chosen[active, step] = farthest
        # Same association as the torch op: (dx^2 + dy^2) + dz^2, all float32.
        np.subtract(coords[0], coords[0][rows, farthest][:, None], out=dist)
        np.square(dist, out=dist)
        for axis in (1, 2):
            np.subtract(coords[axis], coords[axis][rows, farthest][:, None], out=scratch)
            np.square(scratch, out=scratch)
            np.add(dist, scratch, out=dist)
        np.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(axis=1)
        if early_exit and step % _EXIT_CHECK_EVERY == _EXIT_CHECK_EVERY - 1:
            going = min_dist[rows, farthest] > 0                 # the row maxima: 0 once every position is chosen
            if not going.all():
                active, farthest, min_dist = active[going], farthest[going], min_dist[going]
                if active.size == 0:
                    break
                coords = [values[going] for values in coords]
                rows = np.arange(active.size)
                dist, scratch = np.empty_like(min_dist), np.empty_like(min_dist)
    return chosen


def nested_sample_indices(xyz: np.ndarray, sa_npoints: Sequence[int], early_exit: bool = True
                          ) -> list[np.ndarray]:
    """numpy nested FPS (B, N, 3) -> [(B, npoint_l)], as `nested_fps_torch` (early exit: see the module docstring;
    off only to measure it)."""
    indices = []
    for npoint in sa_npoints:
        index = farthest_point_sample_np(xyz, int(npoint), early_exit)
        indices.append(index)
        xyz = np.take_along_axis(xyz, index[..., None], axis=1)
    return indices
