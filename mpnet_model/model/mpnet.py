"""MPNet (He, Gong et al., ECCV 2020, §3): a shared PointNet++ encoder, two parallel FP decoders giving F_seg and
F_ins, a prototype memory read by both branches, and the semantic / instance heads.

Ablation rows of Table 1 are config switches (`use_ins_memory`, `use_seg_memory`); with both off the model is
the ASIS-like baseline of two decoders plus heads (without ASIS's cross-branch fusion modules).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mpnet_model.config import ModelConfig
from mpnet_model.model.memory import PrototypeMemory
from mpnet_model.model.pointnet2 import PointNet2Backbone


def _point_head(in_channels: int, hidden: int, out_channels: int, dropout: float = 0.0) -> nn.Sequential:
    """Per-point MLP (1x1 Conv1d): hidden layer with BN + ReLU, optional dropout, linear output."""
    layers: list[nn.Module] = [nn.Conv1d(in_channels, hidden, 1, bias=False), nn.BatchNorm1d(hidden),
                               nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Conv1d(hidden, out_channels, 1))
    return nn.Sequential(*layers)


def _apply_pointwise(head: nn.Module, features: Tensor) -> Tensor:
    """Run a Conv1d head on channels-last features: (B,N,D) -> (B,N,out)."""
    return head(features.transpose(1, 2)).transpose(1, 2)


class MPNet(nn.Module):
    """Memory-augmented PointNet++ for joint semantic and instance segmentation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.feature_dim
        self.backbone = PointNet2Backbone(cfg, num_decoders=2)   # decoder 0 -> F_seg, decoder 1 -> F_ins
        # The memory exists whenever one branch reads it; the baseline has no memory parameters at all.
        self.memory: PrototypeMemory | None = None
        if cfg.use_ins_memory or cfg.use_seg_memory:
            self.memory = PrototypeMemory(cfg.num_classes, cfg.mem_per_class, dim, cfg.memory_scale)
        self.classifier = _point_head(dim, dim, cfg.num_classes, dropout=cfg.dropout)   # on F^_seg
        self.embedding = _point_head(dim, dim, cfg.embed_dim, dropout=cfg.embed_dropout)   # on F^_ins
        self.centroid_estimator = _point_head(dim, dim, 3)                                 # G(.) on F^_ins (eq. 3)

    def sample_indices(self, xyz: Tensor) -> list[Tensor]:
        """Nested FPS indices for every SA level: xyz (B,N,3) -> [(B,npoint_l) long]. Pass to forward /
        an exported graph so that the sequential FPS loop stays outside it."""
        return self.backbone.sample_indices(xyz)

    def semantic_memory(self) -> Tensor | None:
        """C (C,D) by eq. 1, recomputed from M on every call; None when the config uses no memory."""
        return None if self.memory is None else self.memory.semantic_memory()

    def forward(self, points: Tensor, sample_indices: Sequence[Tensor] | None = None) -> dict[str, Tensor | None]:
        """points (B,N,in_channels) -> dict (see docs/interfaces.md):
        sem_logits (B,N,C), ins_embed (B,N,E), centroids (B,N,3), f_seg / f_ins / f_seg_aug / f_ins_aug (B,N,D),
        ins_weights (B,N,M) | None, seg_weights (B,N,C) | None. Without memory f_*_aug is f_*."""
        f_seg, f_ins = self.backbone(points, sample_indices)                    # (B,N,D) each

        f_ins_aug, ins_weights = f_ins, None
        if self.cfg.use_ins_memory:
            f_ins_aug, ins_weights = self.memory.read(f_ins, self.memory.memory)
        f_seg_aug, seg_weights = f_seg, None
        if self.cfg.use_seg_memory:
            f_seg_aug, seg_weights = self.memory.read(f_seg, self.memory.semantic_memory())

        return {
            'sem_logits': _apply_pointwise(self.classifier, f_seg_aug),          # (B,N,C)
            'ins_embed': _apply_pointwise(self.embedding, f_ins_aug),            # (B,N,E)
            'centroids': _apply_pointwise(self.centroid_estimator, f_ins_aug),   # (B,N,3)
            'f_seg': f_seg, 'f_ins': f_ins, 'f_seg_aug': f_seg_aug, 'f_ins_aug': f_ins_aug,
            'ins_weights': ins_weights, 'seg_weights': seg_weights,
        }

    @torch.no_grad()
    def predict(self, points: Tensor, sample_indices: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Inference outputs only: points (B,N,in_channels) -> (sem_logits (B,N,C), ins_embed (B,N,E))."""
        outputs = self.forward(points, sample_indices)
        return outputs['sem_logits'], outputs['ins_embed']


def random_model(cfg: ModelConfig, seed: int = 0, bn_mean: float = 0.2, bn_var: tuple[float, float] = (0.5, 2.0),
                 head_scale: float = 1.0) -> MPNet:
    """A randomly initialised MPNet in eval mode for tests and speed benchmarks, where trained weights do not matter.

    BatchNorm running statistics are spread (means in ±bn_mean, variances in bn_var): a fresh model labels every
    point alike, which would hide mix-ups, and its eval mode would equal train mode. `head_scale` multiplies the
    classifier's and the embedding head's output layers (60: logits and embeddings span ~±10 as a trained model's).
    """
    torch.manual_seed(seed)
    model = MPNet(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-bn_mean, bn_mean)
                module.running_var.uniform_(*bn_var)
        if head_scale != 1.0:
            for head in (model.classifier, model.embedding):
                head[-1].weight.mul_(head_scale)
    return model.eval()
