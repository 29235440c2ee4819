"""`mpnet-export CHECKPOINT [-o model.onnx] [--opset 17] [--batch 2] [--build-engine]`: checkpoint -> ONNX.

Graph: inputs `points` (B,P,in_channels) float32 and `fps_0..fps_{L-1}` (B,npoint_l) int64 (nested farthest point
sample indices, see `mpnet_model.infer.backends.base.nested_sample_indices`); outputs `sem_logits` (B,P,C) and
`ins_embed` (B,P,E). The batch axis is dynamic, and so is the point axis P (metadata `dynamic_points`: sparse
blocks run with fewer points, see `ModelMetadata.point_buckets`). metadata_props: class_names (JSON), in_channels,
num_points, embed_dim, block_size, stride, sa_npoints (JSON), fps_in_graph, version, dynamic_points,
cluster_bandwidth, min_instance_fraction, class_mean_instance_points (JSON), the metric size filter's
class_mean_instance_area (JSON), instance_area_voxel and min_instance_area_fraction (JSON object by sensor kind),
fp32_nodes (JSON list of the node names that half-precision runtimes must keep in float32: see
mpnet_model/infer/precision.py); geometry and
post-processing values come from the checkpoint (see `metadata_from_checkpoint`), --block-size / --stride override
the geometry.

Exporter: torch 2.13 still ships the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, deprecated);
it is used here because it handles this model's gathers / top-k with a dynamic batch axis in ~2 s and gives a
compact graph (~1.4k nodes for the small config). The dynamo exporter is not wired in: its dynamic-shape spec for
this forward (points + FPS index inputs) did not export here; revisit when the TorchScript exporter is removed.

FPS outside the graph — chosen by measurement (benchmarks/bench_runtime.py -> benchmarks/results/runtime.md,
small config, ORT, 2 shared CPU cores): inside, the tracer unrolls the sequential FPS loop into ~70 nodes per
sample step (23.6k nodes vs 1.3k for the small config; ~4x more for the default 1360 steps), the export takes
~80 s instead of ~10 s, a TensorRT build of such a graph is impractical, and ORT was slower too (179 vs 104 ms per
block at batch 2, the latter including the numpy FPS). Outside, FPS runs in numpy (bit-identical to the torch
op, ~4x faster than torch eager FPS) and the graph only contains Conv/Gather/TopK/MatMul-type ops that TensorRT 10
supports (checked by tests/test_tensorrt.py against `mpnet_model.infer.trt_ops`). TopK `K` values that the tracer
recorded as shape arithmetic are frozen to constants after export (TensorRT needs K at build time).
`--fps-in-graph` still exports the unrolled variant for measurements.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from mpnet_model import __version__
from mpnet_model.infer.backends.base import INPUT_POINTS, OUTPUT_NAMES, ModelMetadata, fps_input_name
from mpnet_model.infer.backends.torch_backend import metadata_from_checkpoint
from mpnet_model.infer.precision import mark_fp32_nodes
from mpnet_model.io.atomic import atomic_write

LOG = logging.getLogger(__name__)
MIN_OPSET = 17


class ExportError(RuntimeError):
    """The checkpoint cannot be exported; the message names the file and the problem."""


class _InferenceGraph(nn.Module):
    """The exported function: (points, *fps indices) -> (sem_logits, ins_embed)."""

    def __init__(self, model: nn.Module, fps_in_graph: bool):
        super().__init__()
        self.model = model
        self.fps_in_graph = fps_in_graph

    def forward(self, points: torch.Tensor, *sample_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(points, None if self.fps_in_graph else list(sample_indices))


def export_onnx(model: nn.Module, metadata: ModelMetadata, output: str | Path, opset: int = MIN_OPSET,
                example_batch: int = 2) -> Path:
    """Export `model` (an MPNet) to `output` atomically; returns the path. The model itself is not modified
    (the export traces a deep copy in eval mode: tracing in train mode would update BN running statistics)."""
    import onnx

    output = Path(output)
    if opset < MIN_OPSET:
        raise ExportError(f'opset={opset}: need >= {MIN_OPSET}')
    graph = _InferenceGraph(copy.deepcopy(model).cpu().eval(), metadata.fps_in_graph).eval()
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(example_batch, metadata.num_points, metadata.in_channels, generator=generator)
    inputs: tuple[torch.Tensor, ...] = (points,)
    input_names = [INPUT_POINTS]
    if not metadata.fps_in_graph:
        indices = graph.model.sample_indices(points[..., :3])
        inputs += tuple(indices)
        input_names += [fps_input_name(level) for level in range(len(indices))]
    dynamic_axes = {name: {0: 'batch'} for name in input_names + list(OUTPUT_NAMES)}
    if metadata.dynamic_points:                # blocks of fewer points (sparse blocks, `point_buckets`)
        for name in (INPUT_POINTS, *OUTPUT_NAMES):
            dynamic_axes[name][1] = 'points'

    # The exporters write to a file name, so the raw graph goes to a scratch folder; only the finished,
    # checked model is written (atomically) to `output`.
    with tempfile.TemporaryDirectory(prefix='mpnet-export-') as scratch:
        raw_path = Path(scratch) / 'raw.onnx'
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')   # TorchScript exporter deprecation + tracer warnings on shape math
            torch.onnx.export(graph, inputs, raw_path, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        proto = onnx.load(raw_path)
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    _freeze_topk_k(proto, inputs, metadata.point_buckets()[0] if metadata.dynamic_points else None)
    mark_fp32_nodes(proto)      # metadata `fp32_nodes`: what fp16 runtimes keep in float32 (infer/precision.py)
    onnx.checker.check_model(proto)
    with atomic_write(output) as stream:      # (onnx.save wants a named stream; this one is an fd)
        stream.write(proto.SerializeToString())
    return output


@contextlib.contextmanager
def static_point_graph(onnx_path: str | Path):
    """Yield a path to the graph with its point axis fixed to the model's `num_points` (a copy of the same file name
    in a scratch folder) when the graph's point axis is dynamic, else `onnx_path` itself. For runtimes that build
    for one block size (TensorRT engines: their optimisation profile spans the batch axis only)."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    tensors = [t for t in list(model.graph.input) + list(model.graph.output)
               if t.name in (INPUT_POINTS, *OUTPUT_NAMES)]
    dynamic = [t for t in tensors if len(t.type.tensor_type.shape.dim) > 1
               and not t.type.tensor_type.shape.dim[1].HasField('dim_value')]
    if not dynamic or 'num_points' not in props:
        yield onnx_path
        return
    for tensor in dynamic:
        tensor.type.tensor_type.shape.dim[1].dim_value = int(props['num_points'])
    del model.graph.value_info[:]          # symbolic intermediate shapes: re-inferred from the fixed inputs
    with tempfile.TemporaryDirectory(prefix='mpnet-static-') as scratch:
        path = Path(scratch) / onnx_path.name
        path.write_bytes(model.SerializeToString())
        yield path


def _freeze_topk_k(proto, inputs: tuple[torch.Tensor, ...], fewest_points: int | None = None) -> None:
    """Replace TopK `K` inputs computed from shapes by constants (TensorRT needs K as a build-time constant).

    The tracer records `min(nsample, num_points)` as shape arithmetic when a level has fewer points than
    `nsample` (small configs). K depends only on the static point counts, so it is evaluated with onnxruntime
    for the example batch and checked to be the same for a batch of 1 (and, with a dynamic point axis, for
    blocks of `fewest_points`) before it is frozen.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == 'Constant' for out in node.output}
    pending = [node for node in proto.graph.node if node.op_type == 'TopK' and node.input[1] not in constants]
    if not pending:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for node in pending:
        probe.graph.output.add(name=node.input[1])
    session = ort.InferenceSession(probe.SerializeToString(), providers=['CPUExecutionProvider'])
    names = [item.name for item in session.get_inputs()]
    probes = [{name: tensor[:batch].numpy() for name, tensor in zip(names, inputs)}
              for batch in (inputs[0].shape[0], 1)]
    if fewest_points is not None:
        from mpnet_model.infer.fps import nested_sample_indices
        points = inputs[0][:1, :fewest_points].numpy()
        npoints = [tensor.shape[1] for tensor in inputs[1:]]
        probes.append(dict(zip(names, [points, *nested_sample_indices(points[..., :3], npoints)])))
    values = [session.run([node.input[1] for node in pending], feeds) for feeds in probes]
    for node, k_full, *k_others in zip(pending, *values):
        for k_other in k_others:
            if not (k_full == k_other).all():
                raise ExportError(f'TopK {node.name}: K depends on the batch size or point count '
                                  f'({k_full} vs {k_other})')
        name = f'{node.name}/frozen_k'
        proto.graph.initializer.append(numpy_helper.from_array(k_full.astype('int64'), name))
        node.input[1] = name


def export_checkpoint(checkpoint: str | Path, output: str | Path | None = None, opset: int = MIN_OPSET,
                      example_batch: int = 2, fps_in_graph: bool = False, block_size: float | None = None,
                      stride: float | None = None) -> Path:
    """Load a checkpoint (mpnet_model.model.checkpoint format) and export it; default output: CHECKPOINT.onnx.
    block_size / stride: None = the checkpoint's training geometry (1 m / 0.5 m when it records none)."""
    from mpnet_model.model.checkpoint import load_checkpoint

    model, cfg, meta = load_checkpoint(checkpoint)
    metadata = metadata_from_checkpoint(cfg, meta, block_size, stride)
    metadata.fps_in_graph = fps_in_graph
    metadata.version = __version__
    output = Path(output) if output else Path(checkpoint).with_suffix('.onnx')
    return export_onnx(model, metadata, output, opset, example_batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='mpnet-export', description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='checkpoint written by mpnet-train (save_checkpoint)')
    parser.add_argument('-o', '--output', help='ONNX file to write (default: CHECKPOINT with .onnx suffix)')
    parser.add_argument('--opset', type=int, default=MIN_OPSET, help=f'ONNX opset (>= {MIN_OPSET})')
    parser.add_argument('--batch', type=int, default=2, help='example batch used for tracing (axis stays dynamic)')
    parser.add_argument('--block-size', type=float, help='block edge (m) for the metadata (default: the checkpoint\'s '
                        'training block size, else 1)')
    parser.add_argument('--stride', type=float, help='block stride (m) for the metadata (default: the checkpoint\'s '
                        'training stride, else 0.5)')
    parser.add_argument('--fps-in-graph', action='store_true', help='trace FPS into the graph (slow, for tests)')
    parser.add_argument('--build-engine', action='store_true',
                        help='also build (or reuse) the TensorRT engine (next to the ONNX file when that folder is '
                             'writable, else in $XDG_CACHE_HOME/mpnet_ros), print its path, then exit')
    parser.add_argument('--precision', choices=('fp32', 'fp16'), default='fp16', help='TensorRT engine precision')
    parser.add_argument('--device', default='cuda', help="TensorRT engine device: 'cuda' or 'cuda:N'")
    parser.add_argument('--engine-cache-dir', help='folder for the TensorRT engine (default: see --build-engine)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        path = export_checkpoint(args.checkpoint, args.output, args.opset, args.batch, args.fps_in_graph,
                                 args.block_size, args.stride)
        print(f'wrote {path}')
        if args.build_engine:
            from mpnet_model.infer.backends.tensorrt_backend import build_engine
            engine_path = build_engine(path, args.precision, device=args.device, cache_dir=args.engine_cache_dir)
            print(f'engine: {engine_path}')
    except Exception as error:  # CLI: one clear line instead of a traceback
        print(f'mpnet-export: error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
