"""TensorRT 10 backend: ONNX -> serialized engine (cached next to the ONNX file) -> execute_async_v3.

`import tensorrt` happens only inside `TensorRTBuilder` / `TensorRTBackend`, lazily, so the rest of the package
(and this module) imports on machines without TensorRT. Device buffers are torch CUDA tensors (no pycuda).

Engine cache: `<onnx stem>.<sha256[:12] of the ONNX bytes>.<precision>.trt<TensorRT version>.<GPU name>.engine`
in the ONNX file's folder. A changed model, precision, TensorRT version or GPU gives a different name, so a stale
engine is never loaded; an engine file that fails to deserialize (truncated, corrupt) is rebuilt and replaced.
The cache logic talks to a builder object (`build(onnx_path, precision) -> bytes`, `deserialize(bytes)`,
`version`, `device_name`), so it is tested on CPU with a stand-in builder.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mpnet_model.infer.backends.base import (
    INPUT_POINTS,
    OUTPUT_NAMES,
    Backend,
    BackendError,
    ModelMetadata,
    fps_input_name,
)
from mpnet_model.io.atomic import atomic_write

LOG = logging.getLogger(__name__)
PROFILE_BATCH = (1, 8, 16)          # optimisation profile over the batch axis: min, opt, max
WORKSPACE_BYTES = 1 << 30


class TensorRTUnavailable(BackendError):
    """TensorRT or CUDA is not installed / visible; the message says what is missing and how to proceed."""


class EngineBuilder(Protocol):
    version: str
    device_name: str

    def build(self, onnx_path: Path, precision: str) -> bytes: ...

    def deserialize(self, engine_bytes: bytes) -> Any: ...


def file_sha256(path: Path, length: int = 12) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9.]+', '-', text).strip('-') or 'unknown'


def engine_cache_path(onnx_path: str | Path, precision: str, trt_version: str, device_name: str) -> Path:
    """Where the engine for this (model bytes, precision, TensorRT version, GPU) lives."""
    onnx_path = Path(onnx_path)
    key = f'{file_sha256(onnx_path)}.{precision}.trt{_slug(trt_version)}.{_slug(device_name)}'
    return onnx_path.with_name(f'{onnx_path.stem}.{key}.engine')


def load_or_build_engine(onnx_path: str | Path, precision: str, builder: EngineBuilder,
                         engine_path: str | Path | None = None) -> tuple[Path, Any]:
    """Return (engine file, deserialized engine): reuse the cached engine when it loads, else build and cache it."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f'{onnx_path}: ONNX model file not found')
    path = Path(engine_path) if engine_path else engine_cache_path(onnx_path, precision, builder.version,
                                                                    builder.device_name)
    if path.is_file():
        try:
            engine = builder.deserialize(path.read_bytes())
            LOG.info('loaded TensorRT engine %s', path)
            return path, engine
        except Exception as error:  # TensorRT reports corrupt / mismatched engines in several ways
            LOG.warning('TensorRT engine %s cannot be loaded (%s): rebuilding', path, error)
    LOG.info('building TensorRT %s engine from %s (minutes on a Jetson; cached as %s)', precision, onnx_path, path)
    start = time.monotonic()
    engine_bytes = builder.build(onnx_path, precision)
    with atomic_write(path) as stream:
        stream.write(engine_bytes)
    LOG.info('built TensorRT engine in %.1f s: %s', time.monotonic() - start, path)
    return path, builder.deserialize(engine_bytes)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable('TensorRT backend: the `tensorrt` Python package is not installed (TensorRT 10 '
                                  'with CUDA needed, e.g. JetPack 6 or `pip install tensorrt`); use '
                                  'backend=onnxruntime or torch on this machine') from error
    import torch
    if not torch.cuda.is_available():
        raise TensorRTUnavailable('TensorRT backend: no CUDA device visible to torch (TensorRT buffers are torch '
                                  'CUDA tensors); use backend=onnxruntime on a CPU-only machine')
    return tensorrt


class TensorRTBuilder:
    """The real builder: TensorRT 10 Python API (explicit batch is the default network mode in TensorRT 10)."""

    def __init__(self, device: str = 'cuda'):
        import torch

        self.trt = _import_tensorrt()
        self.version = self.trt.__version__
        self.device_name = torch.cuda.get_device_name(torch.device(device))
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
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

    def build(self, onnx_path: Path, precision: str) -> bytes:
        trt = self.trt
        import onnx

        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f'{onnx_path}: TensorRT cannot parse the ONNX model: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if precision == 'fp16':
            config.set_flag(trt.BuilderFlag.FP16)
        monitor = self._progress_monitor()
        if monitor is not None:
            config.progress_monitor = monitor
        # One profile over the batch axis; the other dims of every input are static in the exported graph.
        graph_inputs = {item.name: [d.dim_value for d in item.type.tensor_type.shape.dim]
                        for item in onnx.load(str(onnx_path), load_external_data=False).graph.input}
        profile = builder.create_optimization_profile()
        for name, dims in graph_inputs.items():
            profile.set_shape(name, *[(batch, *dims[1:]) for batch in PROFILE_BATCH])
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f'{onnx_path}: TensorRT engine build failed (see the TensorRT log above)')
        return bytes(serialized)

    def deserialize(self, engine_bytes: bytes):
        engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise BackendError('TensorRT could not deserialize the engine (corrupt or built by another '
                               'TensorRT version / GPU)')
        return engine


def build_engine(onnx_path: str | Path, precision: str = 'fp16', build_only: bool = True,
                 device: str = 'cuda', builder: EngineBuilder | None = None,
                 engine_path: str | Path | None = None) -> Path:
    """Build (or validate the cached) engine for `onnx_path`; returns the engine file. `build_only` is the
    `mpnet-export --build-engine` mode: prepare the engine ahead of deployment without running inference."""
    del build_only   # documents intent: this function never creates an execution context
    path, _ = load_or_build_engine(onnx_path, precision, builder or TensorRTBuilder(device), engine_path)
    return path


class TensorRTBackend(Backend):
    """Runs a TensorRT engine; batches larger than the profile maximum (16) are split."""

    name = 'tensorrt'

    def __init__(self, model_path: str | Path, device: str = 'cuda', precision: str = 'fp16',
                 engine_path: str | Path | None = None, builder: EngineBuilder | None = None):
        import onnx
        import torch

        if device == 'cpu':
            raise TensorRTUnavailable("TensorRT backend: device='cpu' is not possible; use device='cuda'")
        self.torch = torch
        onnx_path = Path(model_path)
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
        self.builder = builder or TensorRTBuilder(device)
        self.engine_path, self.engine = load_or_build_engine(onnx_path, precision, self.builder, engine_path)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        self.precision = precision
        super().__init__(metadata, device, str(onnx_path))

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from mpnet_model.infer.backends.onnx_backend import graph_feeds

        torch = self.torch
        outputs: list[tuple[np.ndarray, np.ndarray]] = []
        max_batch = PROFILE_BATCH[-1]
        for start in range(0, blocks.shape[0], max_batch):
            chunk = blocks[start:start + max_batch]
            feeds = {name: torch.from_numpy(value).to(self.device)
                     for name, value in graph_feeds(chunk, self.metadata).items()}
            batch = chunk.shape[0]
            results = {OUTPUT_NAMES[0]: torch.empty(batch, self.num_points, self.metadata.num_classes,
                                                    dtype=torch.float32, device=self.device),
                       OUTPUT_NAMES[1]: torch.empty(batch, self.num_points, self.embed_dim,
                                                    dtype=torch.float32, device=self.device)}
            for name, tensor in feeds.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            for name, tensor in results.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            torch.cuda.current_stream(self.device).synchronize()   # inputs copied before the engine reads them
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f'{self.engine_path}: TensorRT execution failed for batch {batch}')
            self.stream.synchronize()
            outputs.append((results[OUTPUT_NAMES[0]].cpu().numpy(), results[OUTPUT_NAMES[1]].cpu().numpy()))
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


__all__ = ['TensorRTBackend', 'TensorRTBuilder', 'TensorRTUnavailable', 'build_engine', 'engine_cache_path',
           'load_or_build_engine', 'INPUT_POINTS', 'fps_input_name']
