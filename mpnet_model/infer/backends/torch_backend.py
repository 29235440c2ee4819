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


def metadata_from_checkpoint(cfg, meta: dict, block_size: float | None = None, stride: float | None = None
                             ) -> ModelMetadata:
    """ModelMetadata of a loaded checkpoint. Block geometry: the explicit argument, else the checkpoint's `extra`
    (the training geometry), else 1 m / 0.5 m. Post-processing values (`cluster_bandwidth`, `min_instance_fraction`,
    `class_mean_instance_points`) from `extra` when it records them."""
    extra = meta.get('extra') or {}
    block_size = float(extra.get('block_size', 1.0)) if block_size is None else float(block_size)
    stride = float(extra.get('stride', 0.5)) if stride is None else float(stride)
    means = extra.get('class_mean_instance_points')
    return ModelMetadata(class_names=tuple(cfg.class_names), in_channels=cfg.in_channels, num_points=cfg.num_points,
                         embed_dim=cfg.embed_dim, block_size=block_size, stride=stride,
                         sa_npoints=tuple(cfg.sa_npoints), fps_in_graph=True,
                         version=str(meta.get('version', __version__)),
                         cluster_bandwidth=float(extra.get('cluster_bandwidth', DEFAULT_CLUSTER_BANDWIDTH)),
                         min_instance_fraction=float(extra.get('min_instance_fraction', 0.0)),
                         class_mean_instance_points=tuple(float(v) for v in means) if means is not None else ())


class TorchBackend(Backend):
    """Checkpoint -> MPNet in eval mode under `torch.inference_mode`.

    precision='fp16' uses CUDA autocast (outputs are returned as float32). fps: 'torch' runs the model's own FPS,
    'numpy' passes indices from the (identical, faster on CPU) numpy FPS, 'auto' = numpy on CPU, torch on CUDA.
    """

    name = 'torch'

    def __init__(self, model_path: str | Path, device: str = 'cpu', precision: str = 'fp32', fps: str = 'auto',
                 num_threads: int | None = None):
        from mpnet_model.model.checkpoint import load_checkpoint

        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendError(f'torch backend: device={device!r} requested but CUDA is not available')
        if precision == 'fp16' and not device.startswith('cuda'):
            raise BackendError("torch backend: precision='fp16' needs a CUDA device (CPU autocast is bf16 only)")
        if fps not in ('auto', 'torch', 'numpy'):
            raise BackendError(f"torch backend: fps={fps!r}: choose 'auto', 'torch' or 'numpy'")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model, self.cfg, meta = load_checkpoint(model_path, map_location=device)
        self.model.eval()
        self.precision = precision
        self.fps = ('numpy' if device == 'cpu' else 'torch') if fps == 'auto' else fps
        super().__init__(metadata_from_checkpoint(self.cfg, meta), device, str(model_path))

    def _infer(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = torch.from_numpy(blocks).to(self.device)                         # (B,P,9)
        sample_indices = None
        if self.fps == 'numpy':
            sample_indices = [torch.from_numpy(index).to(self.device)
                              for index in nested_sample_indices(blocks[..., :3], self.metadata.sa_npoints)]
        with torch.inference_mode(), torch.autocast('cuda', dtype=torch.float16, enabled=self.precision == 'fp16'):
            sem_logits, embeddings = self.model.predict(points, sample_indices)
        return sem_logits.float().cpu().numpy(), embeddings.float().cpu().numpy()
