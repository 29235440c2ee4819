"""The runtime backend contract: blocks in, per-point semantic logits and instance embeddings out (numpy).

Every backend (torch, ONNX Runtime, TensorRT) implements `Backend.run(blocks (B,P,9) float32) ->
(sem_logits (B,P,C) float32, embeddings (B,P,E) float32)` and exposes the model's `ModelMetadata`, so the scene
segmenter never needs to know which runtime it drives.

Farthest point sampling (FPS) runs outside the exported graph (see mpnet_model/infer/export.py for the measured
reason); the ONNX / TensorRT backends compute the nested FPS indices here with numpy, with the same arithmetic and
tie-breaking as `mpnet_model.model.pointnet2.farthest_point_sample` (tested to give identical indices).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BACKEND_KINDS = ('torch', 'onnxruntime', 'tensorrt')
INPUT_POINTS = 'points'
OUTPUT_NAMES = ('sem_logits', 'ins_embed')


def fps_input_name(level: int) -> str:
    """Name of the graph input holding the FPS indices of SA level `level` (0 = first SA level)."""
    return f'fps_{level}'


class BackendError(RuntimeError):
    """A backend cannot be created or run; the message names the file, input or value at fault."""


DEFAULT_CLUSTER_BANDWIDTH = 0.6     # the paper's mean-shift bandwidth, for models that record none


@dataclass
class ModelMetadata:
    """What a runtime must know about the model; stored as ONNX metadata_props and read back by the backends.

    Geometry (block_size, stride, num_points) and tuned post-processing (cluster_bandwidth; the per-class size
    filter = min_instance_fraction x class_mean_instance_points, off when either is absent) travel checkpoint
    `extra` -> ONNX metadata -> every backend -> `SceneSegmenter.from_config` defaults -> node parameters.
    """

    class_names: tuple[str, ...]
    in_channels: int = 9
    num_points: int = 4096
    embed_dim: int = 5
    block_size: float = 1.0
    stride: float = 0.5
    sa_npoints: tuple[int, ...] = (1024, 256, 64, 16)
    fps_in_graph: bool = False
    version: str = ''
    cluster_bandwidth: float = DEFAULT_CLUSTER_BANDWIDTH
    min_instance_fraction: float = 0.0                  # 0 = no per-class size filter
    class_mean_instance_points: tuple[float, ...] = ()  # training set's mean instance size per class; () = unknown
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_min_points(self) -> np.ndarray | None:
        """Per-class minimum instance size (points) the model was tuned with, None when it records no filter."""
        if self.min_instance_fraction <= 0 or not self.class_mean_instance_points:
            return None
        return self.min_instance_fraction * np.asarray(self.class_mean_instance_points, dtype=np.float64)

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for onnx metadata_props (lists as JSON)."""
        values = asdict(self)
        props = {key: json.dumps(list(value)) if isinstance(value, tuple) else str(value).lower()
                 if isinstance(value, bool) else str(value) for key, value in values.items() if key != 'extra'}
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        """Parse metadata_props; `source` (a file name) goes into the error message."""
        try:
            return cls(class_names=tuple(json.loads(props['class_names'])),
                       in_channels=int(props['in_channels']), num_points=int(props['num_points']),
                       embed_dim=int(props['embed_dim']), block_size=float(props['block_size']),
                       stride=float(props['stride']), sa_npoints=tuple(json.loads(props['sa_npoints'])),
                       fps_in_graph=props['fps_in_graph'].lower() == 'true', version=props.get('version', ''),
                       # Optional (models exported before they existed): the defaults.
                       cluster_bandwidth=float(props.get('cluster_bandwidth', DEFAULT_CLUSTER_BANDWIDTH)),
                       min_instance_fraction=float(props.get('min_instance_fraction', 0.0)),
                       class_mean_instance_points=tuple(float(v) for v in
                                                        json.loads(props.get('class_mean_instance_points', '[]'))),
                       extra={k: v for k, v in props.items() if k not in {f for f in cls.__dataclass_fields__}})
        except KeyError as error:
            raise BackendError(f'{source}: model metadata lacks key {error}; re-export with mpnet-export') from error
        except (ValueError, TypeError) as error:
            raise BackendError(f'{source}: malformed model metadata ({error}); re-export with mpnet-export') from error


def farthest_point_sample_np(xyz: np.ndarray, npoint: int) -> np.ndarray:
    """Farthest point sampling (B,N,3) -> (B,npoint) int64, bit-identical to the torch reference.

    Start at index 0, keep every point's squared distance to the chosen set (init 1e10, float32), pick the
    first arg-max. numpy is used because its per-step overhead is ~4x lower than torch eager on CPU.
    """
    batch, num_points, _ = xyz.shape
    if not 0 < npoint <= num_points:
        raise ValueError(f'farthest_point_sample_np: npoint={npoint} must be in [1, N={num_points}]')
    coords = [np.ascontiguousarray(xyz[..., axis], dtype=np.float32) for axis in range(3)]  # 3 x (B,N)
    chosen = np.zeros((batch, npoint), dtype=np.int64)
    min_dist = np.full((batch, num_points), 1e10, dtype=np.float32)
    farthest = np.zeros(batch, dtype=np.int64)
    batch_index = np.arange(batch)
    dist = np.empty_like(min_dist)
    scratch = np.empty_like(min_dist)
    for step in range(npoint):
        chosen[:, step] = farthest
        # Same association as the torch op: (dx^2 + dy^2) + dz^2, all float32.
        np.subtract(coords[0], coords[0][batch_index, farthest][:, None], out=dist)
        np.square(dist, out=dist)
        for axis in (1, 2):
            np.subtract(coords[axis], coords[axis][batch_index, farthest][:, None], out=scratch)
            np.square(scratch, out=scratch)
            np.add(dist, scratch, out=dist)
        np.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(axis=1)
    return chosen


def nested_sample_indices(xyz: np.ndarray, sa_npoints: tuple[int, ...]) -> list[np.ndarray]:
    """FPS indices for every SA level, entry l (B,npoint_l) indexing the points of level l (level 0 = input)."""
    indices = []
    for npoint in sa_npoints:
        index = farthest_point_sample_np(xyz, npoint)
        indices.append(index)
        xyz = np.take_along_axis(xyz, index[..., None], axis=1)   # (B,npoint,3)
    return indices


class Backend(ABC):
    """A model runtime. Subclasses implement `_infer` on validated float32 blocks."""

    name: str = 'backend'

    def __init__(self, metadata: ModelMetadata, device: str, source: str):
        self.metadata = metadata
        self._device = device
        self.source = source

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.metadata.class_names

    @property
    def num_points(self) -> int:
        return self.metadata.num_points

    @property
    def in_channels(self) -> int:
        return self.metadata.in_channels

    @property
    def embed_dim(self) -> int:
        return self.metadata.embed_dim

    @property
    def device(self) -> str:
        return self._device

    def check_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Validate shape (B, num_points, in_channels) and return a C-contiguous float32 array."""
        blocks = np.asarray(blocks)
        expected = (self.num_points, self.in_channels)
        if blocks.ndim != 3 or blocks.shape[1:] != expected or blocks.shape[0] < 1:
            raise BackendError(f'{self.name} backend ({self.source}): blocks must have shape (B>=1, {expected[0]}, '
                               f'{expected[1]}), got {blocks.shape}')
        return np.ascontiguousarray(blocks, dtype=np.float32)

    def run(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """blocks (B,P,in_channels) -> (sem_logits (B,P,C) float32, embeddings (B,P,E) float32)."""
        sem_logits, embeddings = self._infer(self.check_blocks(blocks))
        return np.asarray(sem_logits, dtype=np.float32), np.asarray(embeddings, dtype=np.float32)

    @abstractmethod
    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on validated blocks (B,P,in_channels) float32."""

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(source={self.source!r}, device={self.device!r}, '
                f'num_points={self.num_points}, classes={self.metadata.num_classes})')


def make_backend(kind: str, model_path: str | Path, device: str = 'cpu', precision: str = 'fp32',
                 **options: Any) -> Backend:
    """Create a backend by name: 'torch' (checkpoint .pt), 'onnxruntime' (.onnx) or 'tensorrt' (.onnx; the engine
    is built / cached next to it). An empty `model_path` selects the shipped default model.
    `options` go to the backend's constructor (e.g. intra_op_threads)."""
    if precision not in ('fp32', 'fp16'):
        raise BackendError(f"precision={precision!r}: choose 'fp32' or 'fp16'")
    if not str(model_path):
        from mpnet_model.default_model import default_model_path
        try:
            model_path = default_model_path(kind)
        except FileNotFoundError as error:
            raise BackendError(str(error)) from error
    if kind == 'torch':
        from mpnet_model.infer.backends.torch_backend import TorchBackend
        return TorchBackend(model_path, device=device, precision=precision, **options)
    if kind in ('onnxruntime', 'onnx', 'ort'):
        from mpnet_model.infer.backends.onnx_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(model_path, device=device, precision=precision, **options)
    if kind in ('tensorrt', 'trt'):
        from mpnet_model.infer.backends.tensorrt_backend import TensorRTBackend
        return TensorRTBackend(model_path, device=device, precision=precision, **options)
    raise BackendError(f'backend={kind!r}: choose one of {BACKEND_KINDS}')
