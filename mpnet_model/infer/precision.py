"""Numerical precision of the runtimes: the choices, and which ONNX nodes must stay float32 in a half graph.

Precisions: 'fp32'; 'fp16' (torch autocast on CPU or CUDA, ONNX Runtime through a converted fp16 graph, TensorRT
FP16 engines); 'bf16' (torch autocast on CPU and on CUDA GPUs with bf16 units, Ampere and newer). Why and what
was measured: docs/precision.md.

The float32 subgraph. An exported MPNet graph (`mpnet-export`) lists, in its metadata_props under `fp32_nodes`
(a JSON list), the names of the nodes that must run in float32 when the rest runs in half precision. Selection
(`fp32_node_names`, a data-flow rule that needs no knowledge of the exporter's node names): a float tensor is
*clean* when it is a graph input, an initializer / constant, the output of an explicit Cast to float32 in the
model code, or the output of a node whose float inputs are all clean; outputs of Conv / MatMul / Gemm with a
learned weight operand (the feature path) are not (a MatMul of two coordinate tensors, the distance expansion,
is clean). Every node that computes on clean float tensors is listed: coordinates, squared distances,
ball-query keys and top-k, 3-NN interpolation weights, the memory reader's normalisation (and FPS when it is
traced into the graph), i.e. everything derived from the point coordinates alone plus the spans the model code
opens with an explicit float32 cast. Convolutions, the memory matmuls and the heads run in half precision.

Consumers: `convert_fp16` (this module; ONNX Runtime's fp16 path) passes the list to onnxconverter-common as its
node block list; the TensorRT builder sets the same layers to float32 with precision constraints.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

LOG = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'fp16', 'bf16')
FP32_NODES_KEY = 'fp32_nodes'
# Ops that carry the learned feature path: their outputs are never "clean" (they are what half precision speeds up).
FEATURE_OPS = frozenset({'Conv', 'ConvTranspose', 'MatMul', 'Gemm', 'Einsum'})
# Ops whose result does not depend on the values of their float inputs (no precision to choose).
_SHAPE_OPS = frozenset({'Shape', 'Size'})

_FLOAT = 1          # onnx.TensorProto.FLOAT
_FLOAT16 = 10       # onnx.TensorProto.FLOAT16


class PrecisionError(ValueError):
    """A precision choice or an fp16 conversion failed; the message names the value or file."""


def check_precision(precision: str, allowed: Sequence[str] = PRECISIONS, where: str = 'precision') -> str:
    """Return `precision` if it is one of `allowed`, else raise PrecisionError naming the choices."""
    if precision not in allowed:
        raise PrecisionError(f'{where}={precision!r}: choose one of {", ".join(allowed)}')
    return precision


def autocast_dtype(precision: str):
    """torch dtype for autocast ('fp16' -> float16, 'bf16' -> bfloat16), None for 'fp32'."""
    import torch

    check_precision(precision)
    return {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}[precision]


# ------------------------------------------------------------------------------------------------ node selection
def cuda_tf32_allowed(device: str, precision: str) -> bool | None:
    """Whether float32 matmuls and convolutions may use TF32 for a model run at `precision` on `device`: False for
    'fp32' on CUDA (fp32 means IEEE float32, the CPU's arithmetic; cuDNN allows TF32 for convolutions by default
    on Ampere and newer, ~1e-3 relative error per product), None elsewhere (torch's settings are left alone)."""
    check_precision(precision)
    if not str(device).startswith('cuda'):
        return None
    return False if precision == 'fp32' else None


def apply_tf32_policy(device: str, precision: str) -> bool | None:
    """Set torch's TF32 switches (`torch.backends.cuda.matmul.allow_tf32`, `torch.backends.cudnn.allow_tf32`) as
    `cuda_tf32_allowed` decides; process-wide, as those switches are. -> the decision."""
    import torch

    allowed = cuda_tf32_allowed(device, precision)
    if allowed is not None:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed
    return allowed


def _float_tensors(model) -> set[str]:
    """Names of the float32 tensors of the (top-level) graph, types from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    floats = {info.name for info in (*graph.input, *graph.output, *graph.value_info)
              if info.type.tensor_type.elem_type == _FLOAT}
    floats |= {init.name for init in graph.initializer if init.data_type == _FLOAT}
    for node in graph.node:
        if node.op_type == 'Constant':
            for attribute in node.attribute:
                if attribute.name == 'value' and attribute.t.data_type == _FLOAT:
                    floats.add(node.output[0])
                elif attribute.name in ('value_float', 'value_floats'):
                    floats.add(node.output[0])
    return floats


def ensure_node_names(model) -> None:
    """Give every node of the top-level graph a unique, non-empty name (the fp32 list refers to nodes by name)."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = node.name or f'{node.op_type}_{index}'
            name, suffix = base, 0
            while name in seen:
                suffix += 1
                name = f'{base}_{suffix}'
            node.name = name
        seen.add(node.name)


def fp32_node_names(model) -> list[str]:
    """Names of the nodes that must run in float32 (the rule of this module's docstring), in graph order.

    `model`: an onnx.ModelProto (float32, as exported) or a path. Nodes must be named (`ensure_node_names`).
    Subgraphs (If / Loop bodies) are not entered; the exported MPNet graph has none.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    floats = _float_tensors(model)
    data = {graph_input.name for graph_input in model.graph.input}   # tensors that depend on the graph inputs
    clean = (data & floats) | {init.name for init in model.graph.initializer}
    listed: list = []
    sources: list = []      # clean nodes without float inputs (Constant, ConstantOfShape, Range+Cast ...)
    for node in model.graph.node:
        float_inputs = [name for name in node.input if name in floats]
        float_outputs = [name for name in node.output if name in floats]
        if any(name in data for name in node.input):
            data.update(node.output)
        if node.op_type in FEATURE_OPS and any(name not in data for name in float_inputs):
            continue          # an operand that does not depend on the inputs is a (learned) weight: the fp16 path
        explicit_fp32 = node.op_type == 'Cast' and any(a.name == 'to' and a.i == _FLOAT for a in node.attribute)
        if not explicit_fp32 and not all(name in clean for name in float_inputs):
            continue
        clean.update(float_outputs)
        if node.op_type in _SHAPE_OPS:
            continue
        if float_inputs or explicit_fp32:
            listed.append(node)
        elif float_outputs:
            sources.append(node)
    # A constant-like source is listed when a listed node consumes it (it then keeps its float32 value).
    consumed = {name for node in listed for name in node.input}
    chosen = {id(node) for node in listed} | {id(node) for node in sources if set(node.output) & consumed}
    if any(not node.name for node in model.graph.node if id(node) in chosen):
        raise PrecisionError('fp32_node_names: the graph has unnamed nodes; call ensure_node_names first')
    return [node.name for node in model.graph.node if id(node) in chosen]


def mark_fp32_nodes(model) -> list[str]:
    """Name the nodes and store `fp32_node_names` in metadata_props[FP32_NODES_KEY] (replacing an old entry)."""
    ensure_node_names(model)
    names = fp32_node_names(model)
    for index in reversed(range(len(model.metadata_props))):
        if model.metadata_props[index].key == FP32_NODES_KEY:
            del model.metadata_props[index]
    model.metadata_props.add(key=FP32_NODES_KEY, value=json.dumps(names))
    return names


def fp32_nodes_of(model) -> list[str]:
    """The fp32 node list stored in the model's metadata; computed from the graph for exports that predate it."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    for prop in model.metadata_props:
        if prop.key == FP32_NODES_KEY:
            try:
                names = json.loads(prop.value)
            except ValueError as error:
                raise PrecisionError(f'metadata {FP32_NODES_KEY} is not a JSON list: {error}') from error
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise PrecisionError(f'metadata {FP32_NODES_KEY} must be a JSON list of node names')
            return names
    return fp32_node_names(model)


# ------------------------------------------------------------------------------------------------ fp16 conversion
def _collapse_cast_round_trips(model) -> int:
    """Remove float32 -> float16 -> float32 round trips that the converter leaves between float32 nodes.

    onnxconverter-common casts every output of a blocked node to fp16 and back to fp32 in front of each blocked
    consumer; it drops such pairs only for a single consumer. A round trip would round the coordinates to fp16
    (what the block list is there to prevent), so each Cast(to=float32) fed by a Cast(to=float16) of a float32
    tensor is rewired to that tensor. Returns the number of rewired casts.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    float32 = {info.name for info in (*graph.input, *graph.value_info) if info.type.tensor_type.elem_type == _FLOAT}
    float32 |= {init.name for init in graph.initializer if init.data_type == _FLOAT}

    def cast_to(node) -> int | None:
        if node is None or node.op_type != 'Cast':
            return None
        return next((a.i for a in node.attribute if a.name == 'to'), None)

    rewired = 0
    for node in graph.node:
        if cast_to(node) != _FLOAT:
            continue
        upstream = producer.get(node.input[0])
        if cast_to(upstream) == _FLOAT16 and (upstream.input[0] in float32
                                               or cast_to(producer.get(upstream.input[0])) == _FLOAT):
            node.input[0] = upstream.input[0]
            rewired += 1
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    dead = [node for node in graph.node if node.op_type == 'Cast' and not set(node.output) & used]
    for node in dead:
        graph.node.remove(node)
    return rewired


def _split_shared_initializers(model, fp32_nodes: set[str]):
    """Copy of `model` in which a float initializer read by both fp32 and half nodes has a float32 twin for the
    fp32 readers (the converter would keep one shared copy in float32 and hand it to the half nodes too)."""
    model = copy.deepcopy(model)
    graph = model.graph
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name in fp32_nodes)
    shared = {init.name: init for init in graph.initializer
              if init.data_type == _FLOAT and readers.get(init.name) == {True, False}}
    for name, init in shared.items():
        twin = copy.deepcopy(init)
        twin.name = f'{name}__fp32'
        graph.initializer.append(twin)
    for node in graph.node:
        if node.name in fp32_nodes:
            for index, name in enumerate(node.input):
                if name in shared:
                    node.input[index] = f'{name}__fp32'
    return model


def convert_fp16_model(model, fp32_nodes: Iterable[str] | None = None):
    """fp16 copy of an fp32 onnx.ModelProto: float32 I/O kept, `fp32_nodes` (default: the model's own list) kept
    in float32, everything else float16 (onnxconverter-common). Returns the new ModelProto."""
    try:
        from onnxconverter_common import float16
    except ImportError as error:
        raise PrecisionError('fp16 ONNX graphs need onnxconverter-common: pip install onnxconverter-common') from error

    names = list(fp32_nodes_of(model) if fp32_nodes is None else fp32_nodes)
    known = {node.name for node in model.graph.node}
    missing = sorted(set(names) - known)
    if missing:
        raise PrecisionError(f'convert_fp16: {len(missing)} fp32 node name(s) are not in the graph, e.g. '
                             f'{missing[:3]}; re-export the model with mpnet-export')
    model = _split_shared_initializers(model, set(names))
    # max_finite_val: the fp16 maximum (the converter's default 1e4 would clip e.g. the 1e10 FPS constant further
    # than needed); values it clips are reported by the converter as warnings.
    model_casts = {node.name for node in model.graph.node if node.op_type == 'Cast'} - set(names)
    converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=names,
                                                 max_finite_val=65504.0)
    # The converter leaves the model's own Cast(to=float32) nodes as they are but types their outputs fp16 (an
    # invalid graph): outside the block list they become casts to float16, as every other unblocked node.
    for node in converted.graph.node:
        if node.name in model_casts:
            for attribute in node.attribute:
                if attribute.name == 'to' and attribute.i == _FLOAT:
                    attribute.i = _FLOAT16
    _collapse_cast_round_trips(converted)
    for index in reversed(range(len(converted.metadata_props))):
        if converted.metadata_props[index].key == 'precision':
            del converted.metadata_props[index]
    converted.metadata_props.add(key='precision', value='fp16')
    return converted


def convert_fp16(onnx_path: str | Path, out_path: str | Path, fp32_nodes: Iterable[str] | None = None) -> Path:
    """Convert the fp32 ONNX file `onnx_path` to an fp16 file `out_path` (atomic write); see `convert_fp16_model`.

    `fp32_nodes`: None = the list in the file's metadata (computed from the graph for older exports); an empty
    list converts everything (only useful to show that the marking is needed)."""
    import warnings

    import onnx

    from mpnet_model.io.atomic import atomic_write

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise PrecisionError(f'{onnx_path}: ONNX model file not found')
    try:
        model = onnx.load(str(onnx_path))
    except Exception as error:  # protobuf DecodeError and friends
        raise PrecisionError(f'{onnx_path}: cannot read ONNX model (corrupt or not ONNX): {error}') from error
    if any(prop.key == 'precision' and prop.value != 'fp32' for prop in model.metadata_props):
        raise PrecisionError(f'{onnx_path}: already a half-precision graph; convert the fp32 export')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')      # "the float32 number ... will be truncated to ..." per clipped constant
        converted = convert_fp16_model(model, fp32_nodes)
    with atomic_write(out_path) as stream:
        stream.write(converted.SerializeToString())
    return out_path


def user_cache_dir() -> Path:
    """$MPNET_CACHE_DIR, else $XDG_CACHE_HOME/mpnet_ros, else ~/.cache/mpnet_ros."""
    if os.environ.get('MPNET_CACHE_DIR'):
        return Path(os.environ['MPNET_CACHE_DIR'])
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'mpnet_ros'


def fp16_model_path(onnx_path: str | Path) -> Path:
    """Where the fp16 graph of `onnx_path` is cached: next to it when that folder is writable and not inside the
    installed package (the shipped model), else in the user cache folder. The name carries a hash of the fp32
    file, so a changed model never reuses a stale conversion."""
    onnx_path = Path(onnx_path)
    with open(onnx_path, 'rb') as stream:
        digest = hashlib.file_digest(stream, 'sha256').hexdigest()[:12]
    name = f'{onnx_path.stem}.{digest}.fp16.onnx'
    folder = onnx_path.resolve().parent
    package = Path(__file__).resolve().parents[1]
    beside = os.access(folder, os.W_OK) and not folder.is_relative_to(package)
    return folder / name if beside else user_cache_dir() / name


def cached_fp16(onnx_path: str | Path) -> Path:
    """The fp16 graph of `onnx_path`, converted on first use (seconds) and reused afterwards."""
    out = fp16_model_path(onnx_path)
    if not out.is_file():
        LOG.info('converting %s to fp16 (float32 kept for the geometry nodes) -> %s', onnx_path, out)
        convert_fp16(onnx_path, out)
    return out
