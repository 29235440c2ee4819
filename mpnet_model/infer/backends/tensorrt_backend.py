"""TensorRT backend: ONNX -> serialized engine (cached) -> `execute_async_v3` on torch-allocated buffers.

Versions: the TensorRT 10 and 11 Python API (tested API range 10.0 .. 11.x: named I/O tensors, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`). Anything else is refused with a message naming the install routes
(JetPack 6 on a Jetson, `pip install tensorrt-cu12` elsewhere). `import tensorrt` happens only inside
`TensorRTBuilder`, so this module imports on machines without TensorRT.

Precision (the graph states it: `mpnet_model.infer.precision`, metadata `fp32_nodes`):
  - fp32: the exported graph as it is (strongly typed where TensorRT has it: >= 10.12, always in 11).
  - fp16 on TensorRT >= 10.12 (and 11, where it is the only mode): a strongly typed network built from the
    fp16-converted graph (`mpnet_model.infer.precision.convert_fp16`: the geometry - distances, neighbour keys,
    interpolation weights, normalisation - stays fp32 through explicit Casts, the rest is fp16). TensorRT then runs
    exactly the types written in the graph; `BuilderFlag.FP16` (deprecated in 10.12, removed in 11) is not used.
  - fp16 on TensorRT 10.0 .. 10.11: the fp32 graph, `BuilderFlag.FP16`, and every layer of the ONNX nodes the model
    lists in its `fp32_nodes` metadata pinned with `layer.precision` / `set_output_type(float32)` under
    `OBEY_PRECISION_CONSTRAINTS`. onnx-tensorrt names each layer after its ONNX node and records the node in the
    layer metadata (`[ONNX Layer: <node> | ...]`); see `layer_onnx_nodes`. Exports older than the `fp32_nodes`
    metadata get the list computed from the graph (`precision.fp32_nodes_of`).
  - bf16 is not wired in for TensorRT (refused).
  - TF32 is switched off in every build: it rounds fp32 matmul inputs to a 10-bit mantissa, the same precision as
    fp16, which is what the fp32 geometry is there to avoid.

Engine cache: `<onnx stem>.<precision>.trt<TensorRT>.<GPU>.sm<compute capability>.<digest>.engine`, the digest
covering the ONNX bytes, precision, TensorRT version, GPU name, compute capability, optimisation-profile batch sizes,
workspace size, package version and build recipe (`EngineKey`). A JSON sidecar (`<engine>.json`) records the key.
The cache lives next to the ONNX file when that folder is writable, else in `$XDG_CACHE_HOME/mpnet_ros` (default
`~/.cache/mpnet_ros`), or in the folder given as `cache_dir` (node parameter `engine_cache_dir`); the log says where.
An explicit `engine_path` is used as given: an engine this package built there is rebuilt when its key is stale;
any engine is checked against the model's I/O names, shapes, dtypes and profile before use.

Device: `cuda` or `cuda:N`; the engine is deserialized, its context created and run, and the buffers allocated with
device N current (`torch.cuda.device`), on one torch CUDA stream of that device. Buffer shapes and dtypes come from
the engine (`get_tensor_dtype`, and `context.get_tensor_shape` after `set_input_shape`); every boolean TensorRT
returns is checked. The nested FPS indices the graph takes as inputs are computed with the torch FPS on the device.

Without TensorRT: the build / cache logic talks to an `EngineBuilder` (build, deserialize, version, device), and the
runtime path to the TensorRT 10 tensor API of the engine it returns. tests/fake_tensorrt.py provides a fake of both
over ONNX Runtime on CPU tensors, so `TensorRTBackend.__init__` and `_infer` run in the CPU test suite.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mpnet_model import __version__
from mpnet_model.infer.backends.base import (
    INPUT_POINTS,
    OUTPUT_NAMES,
    Backend,
    BackendError,
    ModelMetadata,
    fps_input_name,
)
from mpnet_model.infer.precision import FP32_NODES_KEY, PrecisionError, convert_fp16, fp32_nodes_of
from mpnet_model.io.atomic import atomic_write, atomic_write_text

LOG = logging.getLogger(__name__)

SUPPORTED_MAJORS = (10, 11)
STRONG_TYPING_FROM = (10, 12)       # strongly typed fp16 from here; BuilderFlag.FP16 deprecated in 10.12, gone in 11
PROFILE_BATCH = (1, 8, 16)          # optimisation profile over the batch axis: min, opt, max
WORKSPACE_BYTES = 1 << 30
ENGINE_RECIPE = 2                   # bump when the build procedure changes: invalidates every cached engine
INSTALL_ROUTES = ('on a Jetson, the TensorRT of JetPack 6 (10.x: `sudo apt install python3-libnvinfer`); '
                  'on x86_64 / SBSA, `pip install tensorrt-cu12` (11.x; `"tensorrt-cu12>=10,<11"` for 10.x; '
                  'tensorrt-cu13 for CUDA 13)')

# TensorRT DataType names -> torch dtype names (resolved lazily: torch is imported by the backend only).
_TORCH_DTYPES = {'FLOAT': 'float32', 'HALF': 'float16', 'BF16': 'bfloat16', 'INT32': 'int32', 'INT64': 'int64'}
_FLOAT_TYPES = ('FLOAT', 'HALF', 'BF16')
_INDEX_TYPES = ('INT32', 'INT64')


class TensorRTUnavailable(BackendError):
    """TensorRT or CUDA is not installed / visible / supported; the message says what is missing and what to do."""


class EngineBuilder(Protocol):
    """What the cache and the backend need from TensorRT (the real one: `TensorRTBuilder`)."""

    version: str
    device_name: str
    compute_capability: str        # e.g. 'sm87'
    device: Any                    # torch.device the buffers live on

    def build(self, onnx_path: Path, precision: str, profile_batch: tuple[int, int, int],
              workspace_bytes: int) -> bytes: ...

    def deserialize(self, engine_bytes: bytes) -> Any: ...


# ------------------------------------------------------------------------------------------------ versions, devices

def parse_version(text: str) -> tuple[int, int]:
    """'10.12.0.36' -> (10, 12)."""
    match = re.match(r'^\s*(\d+)\.(\d+)', str(text))
    if not match:
        raise TensorRTUnavailable(f'TensorRT reports an unreadable version {text!r}; this backend needs TensorRT '
                                  f'10 or 11 ({INSTALL_ROUTES})')
    return int(match.group(1)), int(match.group(2))


def check_tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a supported TensorRT; TensorRTUnavailable naming the install routes otherwise."""
    major, minor = parse_version(text)
    if major not in SUPPORTED_MAJORS:
        hint = 'too old' if major < SUPPORTED_MAJORS[0] else 'newer than the tested API range'
        raise TensorRTUnavailable(f'TensorRT {text} is {hint}: this backend supports the TensorRT 10.x and 11.x '
                                  f'Python API. Install one: {INSTALL_ROUTES}; or use backend=onnxruntime')
    return major, minor


def fp16_build_mode(version: tuple[int, int]) -> str:
    """'strongly-typed' (the fp16-converted graph, TensorRT >= 10.12) or 'precision-constraints' (10.0 .. 10.11)."""
    return 'strongly-typed' if version >= STRONG_TYPING_FROM else 'precision-constraints'


def parse_cuda_device(device: str) -> int | None:
    """'cuda' -> None (the current device), 'cuda:N' -> N; the CPU or anything else is refused."""
    if device == 'cpu':
        raise TensorRTUnavailable("TensorRT backend: device='cpu' is not possible; use device='cuda' or 'cuda:N' "
                                  '(or backend=onnxruntime on a CPU-only machine)')
    match = re.fullmatch(r'cuda(?::(\d+))?', str(device))
    if not match:
        raise BackendError(f"TensorRT backend: device={device!r}: use 'cuda' or 'cuda:N'")
    return None if match.group(1) is None else int(match.group(1))


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(f'TensorRT backend: the `tensorrt` Python package is not installed (TensorRT 10 or '
                                  f'11 with CUDA: {INSTALL_ROUTES}); use backend=onnxruntime or torch on this '
                                  'machine') from error
    return tensorrt


# ------------------------------------------------------------------------------------------------ fp32 layer marks

_ONNX_LAYER = re.compile(r'\[ONNX Layer: ([^\]]*)\]')


def layer_onnx_nodes(layer_name: str, metadata: str, node_names: set[str] | frozenset[str]) -> set[str]:
    """The ONNX node(s) a TensorRT network layer was imported from.

    onnx-tensorrt (TensorRT 10) writes `[ONNX Layer: <node> | <doc / local function>...]` into the layer metadata;
    fused entries are joined by control characters. Without metadata the layer name is used: the parser names a
    node's layer after the node, made unique with a `_<n>` suffix when the name is taken.
    """
    found = {entry.split(' | ')[0] for entry in _ONNX_LAYER.findall(metadata or '')}
    if found:
        return found
    if layer_name in node_names:
        return {layer_name}
    match = re.fullmatch(r'(.+)_(\d+)', layer_name or '')
    if match and match.group(1) in node_names:
        return {match.group(1)}
    return set()


def mark_fp32_layers(network: Any, fp32_nodes: set[str], trt: Any,
                     all_nodes: set[str] | None = None) -> tuple[int, set[str]]:
    """Pin the layers of `fp32_nodes` (and helper layers fed only by them) to fp32 for a weakly typed FP16 build.

    A layer of a listed node gets `precision = float32` when it has floating-point inputs or outputs, and
    `set_output_type(i, float32)` for every floating-point output. A layer the parser created without a node
    (no metadata, generated name) whose floating-point inputs all come from pinned layers is pinned too, so a
    reshape or cast between two geometry layers cannot round through fp16. Returns (layers pinned, nodes found).
    `all_nodes` (every node name of the graph) tells a layer named after another node from a helper layer.
    Needs BuilderFlag.OBEY_PRECISION_CONSTRAINTS to be binding.
    """
    known = set(all_nodes or ()) | set(fp32_nodes)
    float_types = [trt.float32, trt.float16] + ([trt.bfloat16] if hasattr(trt, 'bfloat16') else [])
    pinned_tensors: set[str] = set()
    matched: set[str] = set()
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        inputs = [tensor for tensor in inputs if tensor is not None]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        float_inputs = [tensor for tensor in inputs if tensor.dtype in float_types]
        nodes = layer_onnx_nodes(layer.name, getattr(layer, 'metadata', '') or '', known)
        if nodes:
            if not nodes & fp32_nodes:
                continue
            matched |= nodes & fp32_nodes
        elif not (float_inputs and all(tensor.name in pinned_tensors for tensor in float_inputs)):
            continue
        float_outputs = [i for i, tensor in enumerate(outputs) if tensor.dtype in float_types]
        if not float_inputs and not float_outputs:
            continue                       # index / shape arithmetic: no precision to pin
        layer.precision = trt.float32
        for i in float_outputs:
            layer.set_output_type(i, trt.float32)
            pinned_tensors.add(outputs[i].name)
        count += 1
    return count, matched


def read_fp32_nodes(model: Any, source: str) -> list[str]:
    """The nodes that must run in fp32: the model's `fp32_nodes` metadata, or computed from the graph for exports
    that predate it (`precision.fp32_nodes_of`). BackendError when unreadable or empty: fp16 would go NaN."""
    try:
        nodes = fp32_nodes_of(model)
    except PrecisionError as error:
        raise BackendError(f'{source}: {error}; re-export the model with mpnet-export, or use precision '
                           'fp32') from error
    if not nodes:
        raise BackendError(f'{source}: no fp32 nodes found (metadata {FP32_NODES_KEY!r} empty and none computed); an '
                           'fp16 engine could compute distances in half precision and give NaN. Use precision fp32')
    return list(nodes)


# ------------------------------------------------------------------------------------------------ engine cache

def file_sha256(path: Path, length: int = 64) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9.]+', '-', text).strip('-') or 'unknown'


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; a change in any field means another engine file."""

    onnx_sha256: str
    precision: str
    tensorrt: str
    device_name: str
    compute_capability: str
    profile_batch: tuple[int, int, int] = PROFILE_BATCH
    workspace_bytes: int = WORKSPACE_BYTES
    package: str = __version__
    recipe: int = ENGINE_RECIPE

    @classmethod
    def create(cls, onnx_path: Path, precision: str, builder: EngineBuilder,
               profile_batch: tuple[int, int, int] = PROFILE_BATCH,
               workspace_bytes: int = WORKSPACE_BYTES) -> EngineKey:
        return cls(file_sha256(Path(onnx_path)), precision, str(builder.version), str(builder.device_name),
                   str(builder.compute_capability), tuple(int(b) for b in profile_batch), int(workspace_bytes))

    def fields(self) -> dict[str, Any]:
        values = asdict(self)
        values['profile_batch'] = list(self.profile_batch)
        return values

    def file_name(self, stem: str) -> str:
        digest = hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:12]
        return (f'{stem}.{self.precision}.trt{_slug(self.tensorrt)}.{_slug(self.device_name)}.'
                f'{_slug(self.compute_capability)}.{digest}.engine')


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mpnet_ros (an absolute XDG_CACHE_HOME only, as the XDG spec says), else ~/.cache/mpnet_ros."""
    base = os.environ.get('XDG_CACHE_HOME', '')
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / '.cache') / 'mpnet_ros'


def _writable_folder(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _make_folder(folder: Path, what: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BackendError(f'{folder}: cannot create the {what} ({error}); set engine_cache_dir to a writable '
                           'folder') from error
    if not _writable_folder(folder):
        raise BackendError(f'{folder}: the {what} is not writable; set engine_cache_dir to a writable folder')
    return folder


def engine_cache_folders(onnx_path: Path, cache_dir: str | Path | None = None) -> tuple[list[Path], Path]:
    """(folders searched for a cached engine, folder a new engine is written to)."""
    if cache_dir:
        folder = _make_folder(Path(cache_dir).expanduser(), 'engine cache folder (engine_cache_dir)')
        return [folder], folder
    model_folder = Path(onnx_path).resolve().parent
    if _writable_folder(model_folder):
        return [model_folder, user_cache_dir()], model_folder
    fallback = user_cache_dir()
    LOG.info('engine cache: the ONNX folder %s is not writable (a read-only install?); engines go to %s '
             '(set engine_cache_dir to choose)', model_folder, fallback)
    return [model_folder, fallback], fallback


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + '.json')


def _read_recorded_key(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_sidecar(path).read_text())['key']
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_build_engine(onnx_path: str | Path, precision: str, builder: EngineBuilder,
                         engine_path: str | Path | None = None, cache_dir: str | Path | None = None,
                         validate: Callable[[Any], Any] | None = None,
                         profile_batch: tuple[int, int, int] = PROFILE_BATCH,
                         workspace_bytes: int = WORKSPACE_BYTES) -> tuple[Path, Any]:
    """Return (engine file, deserialized engine): a cached engine that loads and passes `validate`, else a new build.

    `engine_path`: use / build exactly this file. An engine there that this package built (sidecar key) is rebuilt
    when stale or unusable; one from elsewhere (trtexec, another tool) is used only when it passes `validate`, and
    refused otherwise rather than overwritten.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f'{onnx_path}: ONNX model file not found')
    key = EngineKey.create(onnx_path, precision, builder, profile_batch, workspace_bytes)
    if engine_path:
        target = Path(engine_path).expanduser()
        candidates = [target]
    else:
        folders, write_folder = engine_cache_folders(onnx_path, cache_dir)
        name = key.file_name(onnx_path.stem)
        candidates, target = [folder / name for folder in folders], write_folder / name
    for path in candidates:
        if not path.is_file():
            continue
        recorded = _read_recorded_key(path)
        if recorded is not None and recorded != key.fields():
            changed = sorted(k for k in key.fields() if recorded.get(k) != key.fields()[k])
            LOG.info('TensorRT engine %s is stale (changed: %s): rebuilding', path, ', '.join(changed))
            continue
        try:
            engine = builder.deserialize(path.read_bytes())
            if validate is not None:
                validate(engine)
        except Exception as error:  # TensorRT reports corrupt / mismatched engines in several ways
            if engine_path and recorded is None:
                raise BackendError(f'{path}: the engine given by engine_path cannot be used with {onnx_path}: '
                                   f'{error}. Delete it (it is then built there) or leave engine_path empty') from error
            LOG.warning('TensorRT engine %s cannot be used (%s): rebuilding', path, error)
            continue
        LOG.info('loaded TensorRT engine %s%s', path,
                 ' (not built by mpnet_ros; its I/O matches the model)' if recorded is None else '')
        return path, engine
    if engine_path:
        _make_folder(target.parent, 'engine folder')
    LOG.info('building TensorRT %s engine from %s with TensorRT %s on %s (minutes on a Jetson); it goes to %s',
             precision, onnx_path, builder.version, builder.device_name, target)
    start = time.monotonic()
    from mpnet_model.infer.export import static_point_graph

    with static_point_graph(onnx_path) as graph_path:      # engines take the model's P (profile: batch axis only)
        engine_bytes = builder.build(graph_path, precision, tuple(profile_batch), int(workspace_bytes))
    seconds = time.monotonic() - start
    try:
        with atomic_write(target) as stream:
            stream.write(engine_bytes)
        atomic_write_text(_sidecar(target), json.dumps({'key': key.fields(), 'build_seconds': round(seconds, 1),
                                                        'onnx': str(onnx_path)}, indent=1) + '\n')
    except OSError as error:
        raise BackendError(f'{target}: cannot write the engine ({error}); set engine_cache_dir (or engine_path) to '
                           'a writable location') from error
    LOG.info('built TensorRT engine in %.1f s: %s', seconds, target)
    engine = builder.deserialize(engine_bytes)
    if validate is not None:
        validate(engine)
    return target, engine


# ------------------------------------------------------------------------------------------------ engine checks

@dataclass
class EngineIO:
    """What the runtime needs to know about a validated engine."""

    dtypes: dict[str, str] = field(default_factory=dict)       # tensor -> TensorRT DataType name
    max_batch: int = 1


def expected_io(metadata: ModelMetadata) -> dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """tensor name -> (mode, dims after the batch axis, allowed TensorRT dtypes) of an engine for this model."""
    io = {INPUT_POINTS: ('INPUT', (metadata.num_points, metadata.in_channels), _FLOAT_TYPES)}
    for level, npoint in enumerate(metadata.sa_npoints):
        io[fps_input_name(level)] = ('INPUT', (int(npoint),), _INDEX_TYPES)
    io[OUTPUT_NAMES[0]] = ('OUTPUT', (metadata.num_points, metadata.num_classes), _FLOAT_TYPES)
    io[OUTPUT_NAMES[1]] = ('OUTPUT', (metadata.num_points, metadata.embed_dim), _FLOAT_TYPES)
    return io


def validate_engine(engine: Any, metadata: ModelMetadata, source: str) -> EngineIO:
    """Check an engine's I/O names, modes, shapes, dtypes and profile 0 against the model; BackendError otherwise."""
    expected = expected_io(metadata)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted(expected):
        raise BackendError(f'{source}: engine I/O tensors {sorted(names)} do not match the model '
                           f'({sorted(expected)})')
    problems, result, max_batches = [], EngineIO(), []
    for name, (mode, dims, dtypes) in expected.items():
        actual_mode = engine.get_tensor_mode(name).name
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype = engine.get_tensor_dtype(name).name
        result.dtypes[name] = dtype
        if actual_mode != mode:
            problems.append(f'{name} is an {actual_mode}, expected {mode}')
        if not shape or shape[0] != -1 or shape[1:] != dims:
            problems.append(f'{name} shape {shape}, expected (-1, {", ".join(map(str, dims))}) (dynamic batch)')
        if dtype not in dtypes:
            problems.append(f'{name} dtype {dtype}, expected one of {list(dtypes)}')
        if mode == 'INPUT' and actual_mode == mode:
            low, _, high = (tuple(int(d) for d in dims_) for dims_ in engine.get_tensor_profile_shape(name, 0))
            if low[1:] != dims or high[1:] != dims or low[0] > 1 or high[0] < 1:
                problems.append(f'{name} profile {low}..{high} does not cover batches 1.. of (B, {dims})')
            max_batches.append(high[0])
    if problems:
        raise BackendError(f'{source}: engine does not match the model: ' + '; '.join(problems))
    result.max_batch = min(max_batches)
    return result


# ------------------------------------------------------------------------------------------------ the real builder

class TensorRTBuilder:
    """The real `EngineBuilder`: TensorRT 10 / 11 Python API on one CUDA device."""

    def __init__(self, device: str = 'cuda'):
        import torch

        index = parse_cuda_device(device)              # refuses 'cpu' before anything is imported
        self.trt = _import_tensorrt()
        self.version = str(self.trt.__version__)
        self.api = check_tensorrt_version(self.version)
        if not torch.cuda.is_available():
            raise TensorRTUnavailable('TensorRT backend: no CUDA device visible to torch (TensorRT buffers are torch '
                                      'CUDA tensors); use backend=onnxruntime on a CPU-only machine')
        index = torch.cuda.current_device() if index is None else index
        if index >= torch.cuda.device_count():
            raise BackendError(f'TensorRT backend: device={device!r} but torch sees {torch.cuda.device_count()} CUDA '
                               'device(s)')
        self.device = torch.device('cuda', index)
        self.device_name = torch.cuda.get_device_name(self.device)
        major, minor = torch.cuda.get_device_capability(self.device)
        self.compute_capability = f'sm{major}{minor}'
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = self.trt.Runtime(self.logger)

    def _progress_monitor(self):
        """A trt.IProgressMonitor logging phase progress (TensorRT >= 10 has it; None otherwise)."""
        trt = self.trt
        if not hasattr(trt, 'IProgressMonitor'):
            return None

        class LogProgress(trt.IProgressMonitor):
            def __init__(self):
                trt.IProgressMonitor.__init__(self)
                self.steps: dict[str, int] = {}

            def phase_start(self, phase_name, parent_phase, num_steps):
                self.steps[phase_name] = num_steps
                LOG.info('TensorRT build: %s%s (%d steps)', f'{parent_phase} / ' if parent_phase else '',
                         phase_name, num_steps)

            def step_complete(self, phase_name, step):
                LOG.debug('TensorRT build: %s step %d/%d', phase_name, step + 1, self.steps.get(phase_name, 0))
                return True   # False would cancel the build

            def phase_finish(self, phase_name):
                LOG.info('TensorRT build: %s done', phase_name)

        return LogProgress()

    def build(self, onnx_path: Path, precision: str, profile_batch: tuple[int, int, int] = PROFILE_BATCH,
              workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
        import onnx
        import torch

        trt = self.trt
        mode = 'fp32' if precision == 'fp32' else fp16_build_mode(self.api)
        model = onnx.load(str(onnx_path), load_external_data=False)
        fp32_nodes = set(read_fp32_nodes(model, str(onnx_path))) if precision == 'fp16' else set()
        with torch.cuda.device(self.device), tempfile.TemporaryDirectory(prefix='mpnet-trt-') as scratch:
            graph_path = Path(onnx_path)
            if mode == 'strongly-typed':      # the fp16 graph: geometry fp32 through explicit casts, the rest fp16
                graph_path = Path(scratch) / 'fp16.onnx'
                try:
                    convert_fp16(onnx_path, graph_path, sorted(fp32_nodes))
                except PrecisionError as error:
                    raise BackendError(f'{onnx_path}: fp16 graph conversion failed: {error}') from error
            builder = trt.Builder(self.logger)
            strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)
            flags = 0
            if strongly_typed is not None and self.api >= STRONG_TYPING_FROM:
                flags |= 1 << int(strongly_typed)        # 10.12+: opt in; 11: accepted and implied
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse_from_file(str(graph_path)):
                errors = '; '.join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
                raise BackendError(f'{onnx_path}: TensorRT {self.version} cannot parse the ONNX model: {errors}')
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
            if hasattr(trt.BuilderFlag, 'TF32'):
                config.clear_flag(trt.BuilderFlag.TF32)
            if mode == 'precision-constraints':
                pinned, found = mark_fp32_layers(network, fp32_nodes, trt, {n.name for n in model.graph.node})
                missing = sorted(fp32_nodes - found - _constant_nodes(model))
                if not pinned:
                    raise BackendError(f'{onnx_path}: none of the {len(fp32_nodes)} fp32 nodes was found among the '
                                       f'TensorRT layers; an fp16 build would not be safe. Use precision fp32')
                if missing:
                    LOG.warning('TensorRT fp16 build: %d fp32 node(s) have no layer of their own (folded or fused '
                                'by the parser), e.g. %s', len(missing), missing[:5])
                LOG.info('TensorRT %s fp16 build: %d layers pinned to fp32 for %d geometry nodes', self.version,
                         pinned, len(found))
                config.set_flag(trt.BuilderFlag.FP16)
                config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            monitor = self._progress_monitor()
            if monitor is not None:
                config.progress_monitor = monitor
            # One profile over the batch axis; the other dims of every input are static in the exported graph.
            profile = builder.create_optimization_profile()
            for index in range(network.num_inputs):
                tensor = network.get_input(index)
                dims = tuple(int(d) for d in tensor.shape)
                if any(d < 0 for d in dims[1:]):
                    raise BackendError(f'{onnx_path}: input {tensor.name} has dynamic non-batch dims {dims}')
                profile.set_shape(tensor.name, *[(batch, *dims[1:]) for batch in profile_batch])
            if config.add_optimization_profile(profile) < 0:
                raise BackendError(f'{onnx_path}: TensorRT rejected the optimisation profile {profile_batch}')
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f'{onnx_path}: TensorRT engine build failed (see the TensorRT log above)')
        return bytes(serialized)

    def deserialize(self, engine_bytes: bytes):
        import torch

        with torch.cuda.device(self.device):
            engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise BackendError('TensorRT could not deserialize the engine (corrupt, or built by another TensorRT '
                               'version / GPU)')
        return engine


def _parser_error(error: Any) -> str:
    """One onnx-tensorrt ParserError as text (desc() + node name where the binding has them)."""
    text = error.desc() if hasattr(error, 'desc') else str(error)
    node = error.node_name() if hasattr(error, 'node_name') else ''
    return f'{node}: {text}' if node else text


def _constant_nodes(model: Any) -> set[str]:
    return {node.name for node in model.graph.node if node.op_type == 'Constant'}


def _model_metadata(onnx_path: Path) -> tuple[ModelMetadata, dict[str, str]]:
    import onnx

    if not onnx_path.is_file():
        raise BackendError(f'{onnx_path}: ONNX model file not found (the TensorRT backend builds from ONNX)')
    try:
        props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as error:
        raise BackendError(f'{onnx_path}: cannot read ONNX model: {error}') from error
    metadata = ModelMetadata.from_props(props, str(onnx_path))
    if metadata.fps_in_graph:
        raise BackendError(f'{onnx_path}: exported with FPS in the graph; re-export without --fps-in-graph '
                           'for TensorRT')
    return metadata, props


def _check_precision(precision: str) -> None:
    if precision not in ('fp32', 'fp16'):
        raise BackendError(f"TensorRT backend: precision={precision!r}: choose 'fp32' or 'fp16' (bf16 is not wired "
                           'in for TensorRT)')


def _check_profile(profile_batch: tuple[int, int, int]) -> tuple[int, int, int]:
    low, opt, high = (int(b) for b in profile_batch)
    if not 1 == low <= opt <= high:
        raise BackendError(f'profile_batch={tuple(profile_batch)}: need (1, opt, max) with 1 <= opt <= max')
    return low, opt, high


def build_engine(onnx_path: str | Path, precision: str = 'fp16', device: str = 'cuda',
                 builder: EngineBuilder | None = None, engine_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, profile_batch: tuple[int, int, int] = PROFILE_BATCH) -> Path:
    """Build (or validate the cached) engine for `onnx_path` without running it; returns the engine file (the
    `mpnet-export --build-engine` mode: prepare the engine ahead of deployment)."""
    onnx_path = Path(onnx_path)
    _check_precision(precision)
    metadata, _ = _model_metadata(onnx_path)
    builder = builder or TensorRTBuilder(device)
    path, _ = load_or_build_engine(onnx_path, precision, builder, engine_path, cache_dir,
                                   validate=lambda engine: validate_engine(engine, metadata, str(onnx_path)),
                                   profile_batch=_check_profile(profile_batch))
    return path


# ------------------------------------------------------------------------------------------------ the backend

class TensorRTBackend(Backend):
    """Runs a TensorRT engine; batches beyond the engine profile's maximum are split.

    engine_path: use / build this engine file; cache_dir: the engine cache folder (default: next to the ONNX file,
    or the user cache when that is read-only); profile_batch: (min, opt, max) batch of a newly built engine (a
    smaller max needs less GPU memory); builder: an `EngineBuilder` other than TensorRT's (tests).
    """

    name = 'tensorrt'

    def __init__(self, model_path: str | Path, device: str = 'cuda', precision: str = 'fp16',
                 engine_path: str | Path | None = None, cache_dir: str | Path | None = None,
                 profile_batch: tuple[int, int, int] = PROFILE_BATCH, builder: EngineBuilder | None = None):
        import torch

        from mpnet_model.infer.fps import NestedFps

        self.torch = torch
        if builder is None:
            parse_cuda_device(device)                  # a clear error for 'cpu' before the model is read
        _check_precision(precision)
        onnx_path = Path(model_path)
        metadata, _ = _model_metadata(onnx_path)
        self.builder = builder or TensorRTBuilder(device)
        self.target = self.builder.device                 # torch.device: cuda:N (the fake engine: cpu)
        self.precision = precision
        self.engine_path, self.engine = load_or_build_engine(
            onnx_path, precision, self.builder, engine_path, cache_dir,
            validate=lambda engine: validate_engine(engine, metadata, str(onnx_path)),
            profile_batch=_check_profile(profile_batch))
        self.io = validate_engine(self.engine, metadata, str(self.engine_path))
        with self._device_scope():
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.target) if self.target.type == 'cuda' else None
        if self.context is None:
            raise BackendError(f'{self.engine_path}: TensorRT could not create an execution context (out of GPU '
                               'memory?)')
        self._fps = NestedFps(metadata.sa_npoints)       # CUDA: graph-captured nested FPS on the engine's device
        super().__init__(metadata, str(self.target), str(onnx_path))

    def _device_scope(self):
        return self.torch.cuda.device(self.target) if self.target.type == 'cuda' else contextlib.nullcontext()

    def _run_scope(self) -> contextlib.ExitStack:
        """Device N current and the backend's own stream current: the copies, the FPS, the buffer allocations and
        the engine all run in order on one non-default stream (TensorRT syncs extra on the default stream)."""
        scope = contextlib.ExitStack()
        scope.enter_context(self._device_scope())
        if self.stream is not None:
            scope.enter_context(self.torch.cuda.stream(self.stream))
        return scope

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs: list[tuple[np.ndarray, np.ndarray]] = []
        with self._run_scope():
            for start in range(0, blocks.shape[0], self.io.max_batch):
                outputs.append(self._run_chunk(blocks[start:start + self.io.max_batch]))
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def _run_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        context, source = self.context, self.engine_path
        points = torch.from_numpy(chunk).to(self.target)                                     # (b,P,C) float32
        feeds = {INPUT_POINTS: points}
        for level, index in enumerate(self._fps(points[..., :3])):
            feeds[fps_input_name(level)] = index
        buffers = {}
        for name, tensor in feeds.items():
            tensor = tensor.to(getattr(torch, _TORCH_DTYPES[self.io.dtypes[name]])).contiguous()
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise BackendError(f'{source}: TensorRT rejected shape {tuple(tensor.shape)} for input {name} '
                                   f'(outside the engine profile?)')
            buffers[name] = tensor
        batch = chunk.shape[0]
        for name, columns in zip(OUTPUT_NAMES, (self.metadata.num_classes, self.embed_dim)):
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if shape != (batch, self.num_points, columns):
                raise BackendError(f'{source}: TensorRT reports output {name} shape {shape} for batch {batch}, '
                                   f'expected {(batch, self.num_points, columns)}')
            buffers[name] = torch.empty(shape, dtype=getattr(torch, _TORCH_DTYPES[self.io.dtypes[name]]),
                                        device=self.target)
        for name, tensor in buffers.items():
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise BackendError(f'{source}: TensorRT rejected the buffer address of {name}')
        if self.stream is not None:        # inputs were written on this stream: in order before the engine reads
            ok = context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
        else:
            ok = context.execute_async_v3(0)
        if not ok:
            raise BackendError(f'{source}: TensorRT execution failed for batch {batch} (see the TensorRT log)')
        results = tuple(buffers[name].float().cpu().numpy() for name in OUTPUT_NAMES)
        for name, values in zip(OUTPUT_NAMES, results):
            if not np.isfinite(values).all():
                raise BackendError(f'{source}: the {self.precision} engine gave non-finite {name} '
                                   f'({int((~np.isfinite(values)).sum())} values); '
                                   + ('rebuild with precision fp32 and report this model' if self.precision == 'fp16'
                                      else 'check the model with backend=onnxruntime'))
        return results


__all__ = ['EngineKey', 'TensorRTBackend', 'TensorRTBuilder', 'TensorRTUnavailable', 'build_engine',
           'check_tensorrt_version', 'engine_cache_folders', 'layer_onnx_nodes', 'load_or_build_engine',
           'mark_fp32_layers', 'validate_engine']
