"""PyTorch eager backend: runs the checkpoint directly (CPU or CUDA), the reference the other runtimes are tested
against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mpnet_model import __version__
from mpnet_model.infer.backends.base import (
    DEFAULT_CLUSTER_BANDWIDTH,
    Backend,
    BackendError,
    ModelMetadata,
    nested_sample_indices,
)
from mpnet_model.infer.fps import NestedFps
from mpnet_model.infer.instances import DEFAULT_AREA_VOXEL
from mpnet_model.infer.precision import PRECISIONS, apply_tf32_policy, autocast_dtype


def metadata_from_checkpoint(cfg, meta: dict, block_size: float | None = None, stride: float | None = None
                             ) -> ModelMetadata:
    """ModelMetadata of a loaded checkpoint. Block geometry: the explicit argument, else the checkpoint's `extra`
    (the training geometry), else 1 m / 0.5 m. Post-processing values (`cluster_bandwidth`, `min_instance_fraction`,
    `class_mean_instance_points`; the metric filter's `class_mean_instance_area`, `instance_area_voxel`,
    `min_instance_area_fraction`, `fragment_join`, `instance_min_points`, `cluster_bandwidth_by_kind`) from `extra`
    when it records them."""
    extra = meta.get('extra') or {}
    block_size = float(extra.get('block_size', 1.0)) if block_size is None else float(block_size)
    stride = float(extra.get('stride', 0.5)) if stride is None else float(stride)
    means = extra.get('class_mean_instance_points')
    areas = extra.get('class_mean_instance_area')
    return ModelMetadata(class_names=tuple(cfg.class_names), in_channels=cfg.in_channels, num_points=cfg.num_points,
                         embed_dim=cfg.embed_dim, block_size=block_size, stride=stride,
                         sa_npoints=tuple(cfg.sa_npoints), fps_in_graph=True, dynamic_points=True,
                         version=str(meta.get('version', __version__)),
                         cluster_bandwidth=float(extra.get('cluster_bandwidth', DEFAULT_CLUSTER_BANDWIDTH)),
                         min_instance_fraction=float(extra.get('min_instance_fraction', 0.0)),
                         class_mean_instance_points=tuple(float(v) for v in means) if means is not None else (),
                         class_mean_instance_area=tuple(float(v) for v in areas) if areas is not None else (),
                         instance_area_voxel=float(extra.get('instance_area_voxel', DEFAULT_AREA_VOXEL)),
                         min_instance_area_fraction={str(k): float(v) for k, v in
                                                     (extra.get('min_instance_area_fraction') or {}).items()},
                         fragment_join={str(k): float(v) for k, v in (extra.get('fragment_join') or {}).items()},
                         instance_min_points={str(k): int(v) for k, v in
                                              (extra.get('instance_min_points') or {}).items()},
                         cluster_bandwidth_by_kind={str(k): float(v) for k, v in
                                                    (extra.get('cluster_bandwidth_by_kind') or {}).items()},
                         input_encoding=cfg.input_encoding)


class TorchBackend(Backend):
    """Checkpoint -> MPNet in eval mode under `torch.inference_mode`.

    precision: 'fp32' (on CUDA with TF32 off, `precision.apply_tf32_policy`); 'fp16' or 'bf16' run the model under
    autocast on the device (CPU or CUDA; bf16 on CUDA needs an Ampere or newer GPU); outputs are returned as
    float32. The model keeps its geometry in float32 itself (docs/precision.md). On CPUs without fp16 units (most
    x86) fp16 is slower than fp32 and is there for checking; bf16 is faster on CPUs with bf16 units (avx512_bf16 /
    AMX). fps: 'numpy' passes indices from the (identical, faster on CPU) numpy FPS; 'torch' uses torch FPS: on CUDA
    the batched, CUDA-graph-captured `mpnet_model.infer.fps.NestedFps`, on the CPU the model's own loop; 'auto' =
    numpy on CPU, torch on CUDA.
    """

    name = 'torch'
    dynamic_points_supported = True      # eager PyTorch takes any number of points per block

    def __init__(self, model_path: str | Path, device: str = 'cpu', precision: str = 'fp32', fps: str = 'auto',
                 num_threads: int | None = None):
        from mpnet_model.model.checkpoint import load_checkpoint

        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendError(f'torch backend: device={device!r} requested but CUDA is not available')
        if precision not in PRECISIONS:
            raise BackendError(f'torch backend: precision={precision!r}: choose one of {", ".join(PRECISIONS)}')
        if precision == 'bf16' and device.startswith('cuda') and not torch.cuda.is_bf16_supported():
            raise BackendError("torch backend: precision='bf16' needs a GPU with bf16 support (Ampere or newer); "
                               "use 'fp16'")
        if fps not in ('auto', 'torch', 'numpy'):
            raise BackendError(f"torch backend: fps={fps!r}: choose 'auto', 'torch' or 'numpy'")
        if num_threads:
            torch.set_num_threads(num_threads)
        apply_tf32_policy(device, precision)      # fp32 on CUDA: no TF32 (cuDNN's default), as the CPU computes
        self.model, self.cfg, meta = load_checkpoint(model_path, map_location=device)
        self.model.eval()
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision)
        self.fps = ('numpy' if device == 'cpu' else 'torch') if fps == 'auto' else fps
        super().__init__(metadata_from_checkpoint(self.cfg, meta), device, str(model_path))
        self._fps = NestedFps(self.metadata.sa_npoints)          # CUDA: graph-captured batched FPS
        self._bytes_per_block: int | None = None

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sem_logits, embeddings = self.run_tensor(torch.from_numpy(blocks))
        return sem_logits.cpu().numpy(), embeddings.cpu().numpy()

    def run_tensor(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk on device tensors: FPS (numpy on the CPU, CUDA graphs on CUDA, or the model's own), forward."""
        points = blocks.to(self.device, torch.float32)                             # (B,P,9)
        sample_indices = None
        if self.fps == 'numpy':
            xyz = points[..., :3].cpu().numpy()
            sample_indices = [torch.from_numpy(index).to(self.device)
                              for index in nested_sample_indices(xyz, self.metadata.sa_npoints)]
        elif self.device.startswith('cuda'):
            sample_indices = self._fps(points[..., :3])
        autocast = torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast:
            sem_logits, embeddings = self.model.predict(points, sample_indices)
        return sem_logits.float(), embeddings.float()

    def bytes_per_block(self) -> int:
        """Measured on CUDA (peak memory of a probe forward of 16 random blocks, +25 %); estimated elsewhere."""
        if not self.device.startswith('cuda'):
            return super().bytes_per_block()
        if self._bytes_per_block is None:
            device = torch.device(self.device)
            probe = 16
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            self.run_tensor(torch.rand(probe, self.num_points, self.in_channels, device=device))
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
            self._bytes_per_block = max(1, int(1.25 * peak / probe))
        return self._bytes_per_block
