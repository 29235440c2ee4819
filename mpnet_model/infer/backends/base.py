"""The runtime backend contract: blocks in, per-point semantic logits and instance embeddings out (numpy).

Every backend (torch, ONNX Runtime, TensorRT) implements `Backend.run(blocks (B,P,9) float32) ->
(sem_logits (B,P,C) float32, embeddings (B,P,E) float32)` and exposes the model's `ModelMetadata`, so the scene
segmenter never needs to know which runtime it drives.

Farthest point sampling (FPS) runs outside the exported graph (see mpnet_model/infer/export.py for the measured
reason); the backends compute the nested FPS indices with `mpnet_model.infer.fps` (numpy on the CPU, torch with CUDA
graphs on CUDA), with the same arithmetic and tie-breaking as `mpnet_model.model.pointnet2.farthest_point_sample`
(tested to give identical indices).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpnet_model.infer.backends.registry import BACKEND_NAMES, find_backend
from mpnet_model.infer.device_ops import available_memory
from mpnet_model.infer.fps import farthest_point_sample_np, nested_sample_indices  # noqa: F401 (re-exported)
from mpnet_model.infer.instances import DEFAULT_AREA_VOXEL
from mpnet_model.infer.precision import PRECISIONS

BACKEND_KINDS = BACKEND_NAMES
# Frame chunking (`Backend.run_frame`). CPU: blocks per backend call, the best batch measured with ONNX Runtime on
# the shipped model, numpy FPS included (benchmarks/results/frame_batch.md: ms/block flat within noise from 4 to 16
# blocks, ~10 % worse at 32-64 (cache), ~20 % worse at 1 and 128). CUDA: a chunk may use this fraction of the free
# device memory, at most MAX_CHUNK_BLOCKS blocks.
CPU_CHUNK_BLOCKS = 8
CUDA_MEMORY_FRACTION = 0.5
MAX_CHUNK_BLOCKS = 4096
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
    The metric size filter (issue 23, mpnet_model/infer/instances.py) travels the same way: the training set's mean
    occupied area per class (class_mean_instance_area [m^2] at instance_area_voxel) and the fraction of it tuned per
    sensor kind (min_instance_area_fraction, e.g. {"lidar": 0.1, "rgbd": 0.25}), with the fragment join distance and
    the point floor tuned with it (fragment_join, instance_min_points, by sensor kind); models without them (made
    before issue 23) get the point-count filter, no join and the segmenter's floor. The mean-shift bandwidth may be
    tuned per sensor kind too (cluster_bandwidth_by_kind); a kind without one uses cluster_bandwidth.
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
    class_mean_instance_area: tuple[float, ...] = ()    # training set's mean occupied area per class [m^2]
    instance_area_voxel: float = DEFAULT_AREA_VOXEL     # voxel edge [m] the areas are counted at
    min_instance_area_fraction: dict[str, float] = field(default_factory=dict)   # by sensor kind; {} = not tuned
    fragment_join: dict[str, float] = field(default_factory=dict)                # [m] by sensor kind; {} = off
    instance_min_points: dict[str, int] = field(default_factory=dict)            # point floor by sensor kind
    # Mean-shift bandwidth by sensor kind, tuned with its size filter; a kind not in it uses cluster_bandwidth.
    cluster_bandwidth_by_kind: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    # The graph takes blocks of fewer points too (point axis dynamic; sparse blocks run at `point_buckets()`).
    dynamic_points: bool = False
    # Channels 2 and 6..8 (mpnet_model/data/encoding.py); models exported before it existed are 'room'.
    input_encoding: str = 'room'

    def __post_init__(self) -> None:
        from mpnet_model.data.encoding import ENCODINGS

        if self.input_encoding not in ENCODINGS:
            raise ValueError(f'input_encoding={self.input_encoding!r} is not one of {ENCODINGS} (a model from a '
                             'newer mpnet_ros?)')

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def point_buckets(self) -> tuple[int, ...]:
        """Points per block the model can take, ascending: num_points, and when the point axis is dynamic also
        num_points / 2, / 4 while >= the first SA level's samples (a block is never resampled below them)."""
        if not self.dynamic_points:
            return (self.num_points,)
        buckets = [self.num_points]
        while buckets[-1] % 2 == 0 and buckets[-1] // 2 >= self.sa_npoints[0] and len(buckets) < 3:
            buckets.append(buckets[-1] // 2)
        return tuple(sorted(buckets))

    @property
    def class_min_points(self) -> np.ndarray | None:
        """Per-class minimum instance size (points) the model was tuned with, None when it records no filter."""
        if self.min_instance_fraction <= 0 or not self.class_mean_instance_points:
            return None
        return self.min_instance_fraction * np.asarray(self.class_mean_instance_points, dtype=np.float64)

    def area_fraction(self, sensor_kind: str | None) -> float | None:
        """The metric filter's fraction tuned for `sensor_kind`, None when the model has no area statistics or no
        fraction for that kind."""
        if not self.class_mean_instance_area or sensor_kind is None:
            return None
        value = self.min_instance_area_fraction.get(sensor_kind)
        return None if value is None else float(value)

    def bandwidth_for(self, sensor_kind: str | None) -> float:
        """The mean-shift bandwidth tuned for `sensor_kind`, else `cluster_bandwidth`."""
        return float(self.cluster_bandwidth_by_kind.get(sensor_kind, self.cluster_bandwidth)) if sensor_kind \
            else float(self.cluster_bandwidth)

    def class_min_area(self, fraction: float | None) -> np.ndarray | None:
        """Per-class minimum occupied area [m^2] at `fraction` of the class means; None without statistics or for
        fraction None / <= 0."""
        if fraction is None or fraction <= 0 or not self.class_mean_instance_area:
            return None
        return float(fraction) * np.asarray(self.class_mean_instance_area, dtype=np.float64)

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for onnx metadata_props (lists as JSON)."""
        values = asdict(self)
        props = {key: json.dumps(list(value)) if isinstance(value, tuple) else json.dumps(value, sort_keys=True)
                 if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) else str(value)
                 for key, value in values.items() if key != 'extra'}
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
                       dynamic_points=props.get('dynamic_points', 'false').lower() == 'true',
                       input_encoding=props.get('input_encoding', 'room'),
                       # Optional (models exported before they existed): the defaults.
                       cluster_bandwidth=float(props.get('cluster_bandwidth', DEFAULT_CLUSTER_BANDWIDTH)),
                       min_instance_fraction=float(props.get('min_instance_fraction', 0.0)),
                       class_mean_instance_points=tuple(float(v) for v in
                                                        json.loads(props.get('class_mean_instance_points', '[]'))),
                       class_mean_instance_area=tuple(float(v) for v in
                                                      json.loads(props.get('class_mean_instance_area', '[]'))),
                       instance_area_voxel=float(props.get('instance_area_voxel', DEFAULT_AREA_VOXEL)),
                       min_instance_area_fraction={str(k): float(v) for k, v in json.loads(
                           props.get('min_instance_area_fraction', '{}')).items()},
                       fragment_join={str(k): float(v) for k, v in
                                      json.loads(props.get('fragment_join', '{}')).items()},
                       instance_min_points={str(k): int(v) for k, v in
                                            json.loads(props.get('instance_min_points', '{}')).items()},
                       cluster_bandwidth_by_kind={str(k): float(v) for k, v in
                                                  json.loads(props.get('cluster_bandwidth_by_kind', '{}')).items()},
                       extra={k: v for k, v in props.items() if k not in {f for f in cls.__dataclass_fields__}})
        except KeyError as error:
            raise BackendError(f'{source}: model metadata lacks key {error}; re-export with mpnet-export') from error
        except (ValueError, TypeError) as error:
            raise BackendError(f'{source}: malformed model metadata ({error}); re-export with mpnet-export') from error


class Backend(ABC):
    """A model runtime. Subclasses implement `_infer` on validated float32 blocks."""

    name: str = 'backend'
    chunk_blocks: int | None = None     # blocks per call in run_frame; None = the chunk policy of frame_chunk
    dynamic_points_supported: bool = False   # this runtime runs graphs with a dynamic point axis

    def __init__(self, metadata: ModelMetadata, device: str, source: str):
        self.metadata = metadata
        self._device = device
        self.source = source
        self._cuda_chunk: int | None = None      # CUDA chunk of `frame_chunk`, fixed at the first frame

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
        """Validate shape (B, P, in_channels), P one of `point_buckets()` (normally num_points), and return a
        C-contiguous float32 array."""
        blocks = np.asarray(blocks)
        buckets = self.point_buckets()
        if blocks.ndim != 3 or blocks.shape[1] not in buckets or blocks.shape[2] != self.in_channels \
                or blocks.shape[0] < 1:
            points = buckets[0] if len(buckets) == 1 else f'P in {list(buckets)}'
            raise BackendError(f'{self.name} backend ({self.source}): blocks must have shape (B>=1, {points}, '
                               f'{self.in_channels}), got {blocks.shape}')
        return np.ascontiguousarray(blocks, dtype=np.float32)

    def run(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """blocks (B,P,in_channels) -> (sem_logits (B,P,C) float32, embeddings (B,P,E) float32)."""
        sem_logits, embeddings = self._infer(self.check_blocks(blocks))
        return np.asarray(sem_logits, dtype=np.float32), np.asarray(embeddings, dtype=np.float32)

    @abstractmethod
    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on validated blocks (B,P,in_channels) float32."""

    def run_tensor(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk (B,P,in_channels) float32 tensor -> (sem_logits, embeddings) tensors on the same device.

        Default: through `run` on the host. Backends that run on device tensors override it (no host round trip).
        """
        sem_logits, embeddings = self.run(blocks.detach().cpu().numpy())
        return torch.from_numpy(sem_logits).to(blocks.device), torch.from_numpy(embeddings).to(blocks.device)

    def point_buckets(self) -> tuple[int, ...]:
        """Points per block `run_frame` accepts (`ModelMetadata.point_buckets` when this runtime handles a dynamic
        point axis, else the model's fixed count)."""
        return self.metadata.point_buckets() if self.dynamic_points_supported else (self.num_points,)

    def bytes_per_block(self) -> int:
        """Device memory one block needs during a forward: an upper estimate from the model's sizes (the (S,P)
        ball-query distances of SA level 1 and the grouped level-1 features dominate); backends that can measure
        it override this."""
        points, centres = self.num_points, self.metadata.sa_npoints[0]
        return 4 * (4 * centres * points + 1024 * points)

    def frame_chunk(self) -> int:
        """Blocks per backend call in `run_frame`: `chunk_blocks` when set; on CUDA sized from the memory the
        device can give (`CUDA_MEMORY_FRACTION` of the free memory plus the caching allocator's unused reserve, /
        `bytes_per_block`) at the first frame and kept: the chunk, and with it the batch shapes of the FPS CUDA
        graphs, stays the same from frame to frame (no recaptures); on the CPU `CPU_CHUNK_BLOCKS` (measured)."""
        if self.chunk_blocks:
            return int(self.chunk_blocks)
        if self.device.startswith('cuda'):
            if getattr(self, '_cuda_chunk', None) is None:
                available = available_memory(self.device)
                self._cuda_chunk = int(max(1, min(MAX_CHUNK_BLOCKS,
                                                  CUDA_MEMORY_FRACTION * available // self.bytes_per_block())))
            return self._cuda_chunk
        return CPU_CHUNK_BLOCKS

    def run_frame(self, blocks: torch.Tensor | np.ndarray, chunk: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block of a frame, (K,P,in_channels) with any K >= 0 -> (sem_logits (K,P,C), embeddings (K,P,E))
        float32 tensors, in memory-bounded chunks of `chunk` blocks (default `frame_chunk()`). A tensor input
        stays on its device (the backend's); numpy input is taken as a CPU tensor."""
        if not isinstance(blocks, torch.Tensor):
            blocks = torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.float32))
        buckets = self.point_buckets()
        if blocks.dim() != 3 or blocks.shape[1] not in buckets or blocks.shape[2] != self.in_channels:
            points = buckets[0] if len(buckets) == 1 else f'P in {list(buckets)}'
            raise BackendError(f'{self.name} backend ({self.source}): blocks must have shape (K, {points}, '
                               f'{self.in_channels}), got {tuple(blocks.shape)}')
        blocks = blocks.float()
        if blocks.shape[0] == 0:
            return (blocks.new_zeros(0, blocks.shape[1], self.metadata.num_classes),
                    blocks.new_zeros(0, blocks.shape[1], self.embed_dim))
        chunk = int(chunk) if chunk else self.frame_chunk()
        outputs = [self.run_tensor(blocks[start:start + chunk]) for start in range(0, blocks.shape[0], chunk)]
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(source={self.source!r}, device={self.device!r}, '
                f'num_points={self.num_points}, classes={self.metadata.num_classes})')


def make_backend(kind: str, model_path: str | Path, device: str = 'cpu', precision: str = 'fp32',
                 **options: Any) -> Backend:
    """Create a backend by name or alias (mpnet_model.infer.backends.registry): 'torch' (checkpoint .pt),
    'onnxruntime' (.onnx) or 'tensorrt' (.onnx; the engine is built / cached from it). An empty `model_path` selects
    the shipped default model. `options` go to the backend's constructor (e.g. intra_op_threads)."""
    if precision not in PRECISIONS:
        raise BackendError(f'precision={precision!r}: choose one of {", ".join(PRECISIONS)}')
    spec = find_backend(kind)
    if spec is None:
        raise BackendError(f'backend={kind!r}: choose one of {BACKEND_KINDS}')
    if precision not in spec.precisions:
        raise BackendError(f'{spec.name} backend: precision={precision!r} is not supported; choose one of '
                           f'{", ".join(spec.precisions)}')
    if not str(model_path):
        from mpnet_model.default_model import default_model_path
        try:
            model_path = default_model_path(spec.name)
        except FileNotFoundError as error:
            raise BackendError(str(error)) from error
    return spec.load()(model_path, device=device, precision=precision, **options)
