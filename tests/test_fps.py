"""Nested FPS of the frame path: the numpy early exit and the batched torch FPS give the reference's indices."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from mpnet_model.infer.fps import NestedFps, farthest_point_sample_np, nested_fps_torch, nested_sample_indices
from mpnet_model.model.pointnet2 import farthest_point_sample

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available on this machine')


def sparse_and_dense_blocks(num_points: int = 256) -> np.ndarray:
    """(4, P, 3): two dense blocks and two sparse ones (7 and 40 distinct positions resampled with repeats, as
    lidar blocks are), so the early exit fires for some rows and not for others."""
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 1, size=(2, num_points, 3))
    sparse = []
    for distinct in (7, 40):
        positions = rng.uniform(0, 1, size=(distinct, 3))
        picks = np.concatenate([np.arange(distinct), rng.integers(0, distinct, num_points - distinct)])
        sparse.append(positions[rng.permutation(picks)])
    return np.concatenate([dense, np.stack(sparse)]).astype(np.float32)


def test_numpy_early_exit_gives_the_reference_indices():
    xyz = sparse_and_dense_blocks()
    expected = farthest_point_sample(torch.from_numpy(xyz), 128).numpy()
    np.testing.assert_array_equal(farthest_point_sample_np(xyz, 128), expected)
    # The sparse rows finish early: after their distinct positions every pick is index 0, as in the reference.
    assert (expected[2, 7:] == 0).all() and len(set(expected[2, :7])) == 7
    levels = nested_sample_indices(xyz, (128, 32, 8))
    reference = nested_fps_torch(torch.from_numpy(xyz), (128, 32, 8))
    for mine, theirs in zip(levels, reference):
        np.testing.assert_array_equal(mine, theirs.numpy())


def test_nested_fps_callable_on_cpu_matches_the_model_encoder():
    from mpnet_model.config import small_config
    from mpnet_model.model.pointnet2 import PointNet2Encoder

    xyz = torch.from_numpy(sparse_and_dense_blocks(1024))
    encoder = PointNet2Encoder(small_config())
    expected = encoder.sample_indices(xyz)
    for mine, theirs in zip(NestedFps(small_config().sa_npoints)(xyz), expected):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@needs_cuda
def test_cuda_graph_fps_matches_eager_for_every_batch_size():
    fps = NestedFps((128, 32, 8))
    for batch in (1, 4, 17, 4):                 # padded to 16 and 32; the repeated size replays a cached graph
        xyz = torch.rand(batch, 256, 3, device='cuda', generator=torch.Generator('cuda').manual_seed(batch))
        for mine, theirs in zip(fps(xyz), nested_fps_torch(xyz, (128, 32, 8))):
            assert mine.shape == theirs.shape == (batch, mine.shape[1])
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert fps.use_graphs and len(fps._graphs) == 2


class _HostGraphApi:
    """A CPU stand-in for the CUDA-graph API NestedFps uses (torch.cuda.Stream / stream / current_stream /
    CUDAGraph / graph), which cannot exist on a machine without CUDA. Capture runs the body eagerly (so the static
    outputs hold the capture's results); replay recomputes them from the static input, as a graph replay would."""

    def __init__(self, sa_npoints):
        self.sa_npoints = sa_npoints
        self.graph_kwargs = []
        self.graphs = []
        self.owner = None                                # the NestedFps whose graphs these are

    def install(self, monkeypatch):
        api = self

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        class Graph:
            def __init__(self):
                api.graphs.append(self)

            def replay(self):
                (static_in, static_out), = [entry[1:] for entry in api.owner._graphs.values() if entry[0] is self]
                for target, value in zip(static_out, nested_fps_torch(static_in, api.sa_npoints)):
                    target.copy_(value)                  # in place, as the graph writes its static outputs

        class Capture:
            def __init__(self, graph, **kwargs):
                api.graph_kwargs.append(kwargs)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        monkeypatch.setattr(torch.cuda, 'Stream', Stream)
        monkeypatch.setattr(torch.cuda, 'stream', lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, 'current_stream', lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, 'CUDAGraph', Graph)
        monkeypatch.setattr(torch.cuda, 'graph', Capture)


def test_graph_capture_under_inference_mode_replays_outside_it(monkeypatch):
    """The first capture happens inside `SceneSegmenter.segment` (torch.inference_mode, e.g. the torch backend's
    memory probe); later calls may come from outside inference mode (`Backend.run`). The static buffers must be
    ordinary tensors, or the replay's in-place copy fails ("Inplace update to inference tensor outside
    InferenceMode"). Runs the graph path on the CPU with a stand-in for the CUDA-graph API."""
    import mpnet_model.infer.fps as fps_module

    npoints = (32, 8)
    api = _HostGraphApi(npoints)
    api.install(monkeypatch)
    monkeypatch.setattr(fps_module, '_graphs_supported', lambda device: True)
    fps = api.owner = NestedFps(npoints)
    first = torch.from_numpy(sparse_and_dense_blocks(64))
    second = torch.rand(3, 64, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        captured = fps(first)                                            # capture inside inference mode
    assert fps.use_graphs and len(fps._graphs) == 1
    replayed = fps(second)                                               # replay outside it
    for mine, theirs in zip(replayed, nested_fps_torch(second, npoints)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    for mine, theirs in zip(captured, nested_fps_torch(first, npoints)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    (_, static_in, static_out), = fps._graphs.values()
    assert not static_in.is_inference() and not any(out.is_inference() for out in static_out)
    # a capture never fails because another thread of the node runs CUDA work meanwhile
    assert api.graph_kwargs == [{'capture_error_mode': 'thread_local'}]
