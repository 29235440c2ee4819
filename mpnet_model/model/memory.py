"""Prototype memory of MPNet (paper §3.2-3.4).

M (M x D) is one learned parameter; the semantic memory C (C x D) is a re-parameterisation of it (eq. 1),
recomputed on every call so that losses on C update M. Both branches read with the same soft-attention
reader (eq. 2): softmax over cosine similarities between each query and each key row, then a weighted sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpnet_model.model.fp32 import at_least_fp32, fp32_region


def semantic_memory(memory: Tensor, num_classes: int) -> Tensor:
    """Eq. 1: row i of C is the mean of the i-th block of Mc consecutive rows of M. memory (C*Mc,D) -> (C,D)."""
    slots, dim = memory.shape
    if slots % num_classes:
        raise ValueError(f'semantic_memory: {slots} memory rows are not a multiple of num_classes={num_classes}')
    return memory.reshape(num_classes, slots // num_classes, dim).mean(dim=1)


def read_memory(query: Tensor, keys: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Eq. 2 reader: query (B,N,D), keys (K,D) -> augmented (B,N,D) = weights @ keys, weights (B,N,K).

    weights = softmax_k(scale * cos(query, key_k)); scale 1.0 is the paper-literal form. A zero query
    (possible after ReLU) has cosine 0 to every key and reads the uniform average.
    """
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f'read_memory: query width {query.shape[-1]} != key width {keys.shape[-1]}')
    # The scale is folded into the (K,D) keys rather than applied to the (B,N,K) similarities: one pass less.
    # The normalisation runs in float32 (explicit cast, autocast off): in fp16 eps=1e-8 is 0 (a zero query, common
    # after ReLU, gives 0/0) and the squared norm overflows beyond |x| = 256. Unit vectors and cosines in [-1, 1]
    # are safe in half precision again, so the (B,N,K) matmul and the reads run in the autocast dtype.
    with fp32_region(query):
        unit_query = F.normalize(at_least_fp32(query), dim=-1, eps=1e-8)
        unit_keys = F.normalize(at_least_fp32(keys), dim=-1, eps=1e-8) * scale
    scaled_similarity = unit_query @ unit_keys.t()
    weights = torch.softmax(scaled_similarity, dim=-1)                                          # (B,N,K)
    return weights @ keys, weights


class PrototypeMemory(nn.Module):
    """The memory M (`memory`, a (mem_per_class*num_classes, dim) parameter) with its semantic summary and reader."""

    def __init__(self, num_classes: int, mem_per_class: int, dim: int, scale: float = 1.0):
        super().__init__()
        if num_classes < 1 or mem_per_class < 1 or dim < 1:
            raise ValueError(f'PrototypeMemory: num_classes={num_classes}, mem_per_class={mem_per_class}, '
                             f'dim={dim} must all be positive')
        self.num_classes, self.mem_per_class, self.dim = int(num_classes), int(mem_per_class), int(dim)
        self.scale = float(scale)
        # Random init (paper: "randomly initialized"); unit-variance rows are on the scale of the
        # BN+ReLU decoder features they are compared with and substituted for.
        self.memory = nn.Parameter(torch.randn(self.num_classes * self.mem_per_class, self.dim))

    @property
    def num_slots(self) -> int:
        return self.memory.shape[0]

    def semantic_memory(self) -> Tensor:
        """C (num_classes, dim) from eq. 1, recomputed from M on every call (gradients flow to M)."""
        return semantic_memory(self.memory, self.num_classes)

    def read(self, query: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """query (B,N,D), keys (K,D) -> (augmented (B,N,D), weights (B,N,K)); see `read_memory`."""
        return read_memory(query, keys, self.scale)

    def extra_repr(self) -> str:
        return f'num_classes={self.num_classes}, mem_per_class={self.mem_per_class}, dim={self.dim}, scale={self.scale}'
