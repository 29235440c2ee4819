"""Every loss of MPNet (paper §3.3-3.5): CE / focal, L_dis (eq. 5), R_seg (eq. 4), R_ins (eq. 3), total (eq. 6).

All per-instance terms are computed per block over the instances present in that block and then averaged over the
blocks that contain at least one instance. Instances are grouped for the whole batch at once (block id x instance id
-> one global id, then `index_add`), so there is no Python loop over instances or blocks. Label -1 is ignored.

Shapes: B blocks, N points, C classes, D feature width, E embedding width, M memory slots, V valid points,
G instances over the whole batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpnet_model.config import ModelConfig
from mpnet_model.data.classes import IGNORE_LABEL
from mpnet_model.model.fp32 import at_least_fp32, fp32_region
from mpnet_model.model.memory import semantic_memory  # eq. 1; re-exported here as the contract lists it

__all__ = ['InstanceGroups', 'LossInputError', 'MPNetLoss', 'cross_entropy_loss', 'discriminative_loss',
           'discriminative_loss_terms', 'focal_loss', 'group_instances', 'instance_centroids', 'rins_loss',
           'rseg_hinge', 'rseg_loss', 'semantic_memory']

# sqrt(eps) = 1e-6 is the distance floor: keeps d||x||/dx finite when two vectors coincide.
_NORM_EPS = 1e-12


class LossInputError(ValueError):
    """Inputs to a loss have the wrong shape, dtype or label range; the message names the tensor."""


def _safe_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis with a finite gradient at 0."""
    return (vectors * vectors).sum(-1).clamp_min(_NORM_EPS).sqrt()


DIS_NORMS = ('l1', 'l2')


def _dis_norm(vectors: torch.Tensor, norm: str) -> torch.Tensor:
    """The norm L_dis measures distances with, over the last axis: 'l1' (sum of |x|, as ASIS's
    `tf.norm(ord=1)`; its gradient at 0 is 0) or 'l2' (Euclidean, finite gradient at 0)."""
    if norm == 'l1':
        return vectors.abs().sum(-1)
    if norm == 'l2':
        return _safe_norm(vectors)
    raise LossInputError(f'dis_norm={norm!r}: choose one of {DIS_NORMS}')


def _zero_like_graph(tensor: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that is still connected to `tensor` (so `.backward()` works when a term has nothing to do)."""
    return tensor.sum() * 0.0


def _check_labels(name: str, labels: torch.Tensor, shape: tuple[int, ...], upper: int | None = None) -> None:
    if labels.shape != torch.Size(shape):
        raise LossInputError(f'{name}: expected shape {tuple(shape)}, got {tuple(labels.shape)}')
    if labels.dtype not in (torch.int64, torch.int32):
        raise LossInputError(f'{name}: expected an integer tensor (int64), got {labels.dtype}')
    if labels.numel() and int(labels.min()) < IGNORE_LABEL:
        raise LossInputError(f'{name}: labels must be >= {IGNORE_LABEL} (ignore), found {int(labels.min())}')
    if upper is not None and labels.numel() and int(labels.max()) >= upper:
        raise LossInputError(f'{name}: label {int(labels.max())} out of range for {upper} classes')


# ----------------------------------------------------------------------------------------------------------------
# Instance grouping shared by L_dis and R_ins
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class InstanceGroups:
    """The instances of a batch, each (block, instance id) pair numbered 0..G-1."""
    valid: torch.Tensor           # (B, N) bool: points with an instance label
    inst_of_point: torch.Tensor   # (V,) long: global instance index of each valid point
    block_of_inst: torch.Tensor   # (G,) long: block each instance lives in
    points_per_inst: torch.Tensor  # (G,) float: N_k
    insts_per_block: torch.Tensor  # (B,) float: K of each block (0 for blocks without instances)

    @property
    def num_instances(self) -> int:
        return int(self.block_of_inst.numel())

    def mean_over_points(self, per_point: torch.Tensor) -> torch.Tensor:
        """(V,) -> (G,): 1/N_k sum over the points of instance k."""
        total = per_point.new_zeros(self.num_instances).index_add(0, self.inst_of_point, per_point)
        return total / self.points_per_inst

    def sum_per_block(self, per_inst: torch.Tensor) -> torch.Tensor:
        """(G,) -> (B,): sum over the instances of each block."""
        return per_inst.new_zeros(self.insts_per_block.shape[0]).index_add(0, self.block_of_inst, per_inst)

    def mean_over_blocks(self, per_block: torch.Tensor) -> torch.Tensor:
        """(B,) -> scalar: average over the blocks that contain at least one instance."""
        has_instances = self.insts_per_block > 0
        return per_block[has_instances].mean()


def group_instances(instance_labels: torch.Tensor) -> InstanceGroups:
    """Number the (block, instance id) pairs of `instance_labels (B, N)`; ids need not be contiguous."""
    num_blocks, num_points = instance_labels.shape
    valid = instance_labels >= 0
    labels = instance_labels[valid].long()                                         # (V,)
    block_of_point = torch.arange(num_blocks, device=labels.device).unsqueeze(1).expand(num_blocks, num_points)[valid]
    stride = int(labels.max()) + 1 if labels.numel() else 1
    keys, inst_of_point = torch.unique(block_of_point * stride + labels, return_inverse=True)
    block_of_inst = keys // stride                                                 # (G,)
    ones_points = torch.ones_like(labels, dtype=torch.float32)
    points_per_inst = torch.zeros(keys.numel(), device=labels.device).index_add(0, inst_of_point, ones_points)
    insts_per_block = torch.zeros(num_blocks, device=labels.device).index_add(
        0, block_of_inst, torch.ones(keys.numel(), device=labels.device))
    return InstanceGroups(valid, inst_of_point, block_of_inst, points_per_inst, insts_per_block)


# ----------------------------------------------------------------------------------------------------------------
# Semantic terms
# ----------------------------------------------------------------------------------------------------------------
def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over points with label != -1. logits (B, N, C), labels (B, N)."""
    valid = labels != IGNORE_LABEL
    if not bool(valid.any()):
        return _zero_like_graph(logits)
    return F.cross_entropy(logits[valid], labels[valid].long())


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al.) -(1 - p_t)^gamma log p_t, mean over points with label != -1; gamma = 0 gives CE."""
    valid = labels != IGNORE_LABEL
    if not bool(valid.any()):
        return _zero_like_graph(logits)
    log_probs = F.log_softmax(logits[valid], dim=-1)                               # (V, C)
    log_p_true = log_probs.gather(1, labels[valid].long().unsqueeze(1)).squeeze(1)  # (V,)
    modulator = (1.0 - log_p_true.exp()).clamp_min(0.0).pow(gamma)
    return -(modulator * log_p_true).mean()


def rseg_hinge(features: torch.Tensor, class_memory: torch.Tensor, labels: torch.Tensor, margin: float = 5.0,
               form: str = 'per_negative') -> torch.Tensor:
    """Hinge values of eq. 4 for the valid points.

    features (B, N, D) = F̂_seg, class_memory (C, D), labels (B, N).
    'literal':      max(0, d_y - sum_{j != y} d_j + m)       -> (V,)
    'per_negative': max(0, d_y - d_j + m) for every j != y   -> (V, C-1)
    """
    if form not in ('literal', 'per_negative'):
        raise LossInputError(f"rseg form={form!r}: choose 'literal' or 'per_negative'")
    valid = labels != IGNORE_LABEL
    queries = features[valid]                                                      # (V, D)
    targets = labels[valid].long()                                                 # (V,)
    # ||a - c||^2 = ||a||^2 + ||c||^2 - 2 a.c avoids a (V, C, D) difference tensor.
    squared = (queries.pow(2).sum(1, keepdim=True) + class_memory.pow(2).sum(1).unsqueeze(0)
               - 2.0 * queries @ class_memory.t())
    distances = squared.clamp_min(_NORM_EPS).sqrt()                                # (V, C)
    d_positive = distances.gather(1, targets.unsqueeze(1))                         # (V, 1)
    is_negative = torch.ones_like(distances, dtype=torch.bool).scatter_(1, targets.unsqueeze(1), False)
    if form == 'literal':
        d_negative_sum = (distances * is_negative).sum(1)                          # (V,)
        return F.relu(d_positive.squeeze(1) - d_negative_sum + margin)
    num_classes = distances.shape[1]
    d_negative = distances[is_negative].reshape(-1, num_classes - 1)              # (V, C-1)
    return F.relu(d_positive - d_negative + margin)


def rseg_loss(features: torch.Tensor, class_memory: torch.Tensor, labels: torch.Tensor, margin: float = 5.0,
              form: str = 'per_negative') -> torch.Tensor:
    """R_seg (eq. 4) averaged over valid points ('per_negative' also averages over the C-1 negatives)."""
    if not bool((labels != IGNORE_LABEL).any()):
        return _zero_like_graph(features) + _zero_like_graph(class_memory)
    hinge = rseg_hinge(features, class_memory, labels, margin, form)
    return hinge.mean()


# ----------------------------------------------------------------------------------------------------------------
# Instance terms
# ----------------------------------------------------------------------------------------------------------------
def discriminative_loss_terms(embeddings: torch.Tensor, instance_labels: torch.Tensor, delta_v: float = 0.5,
                              delta_d: float = 1.5, norm: str = 'l2') -> dict[str, torch.Tensor]:
    """Pull (variance), push (distance) and centre-norm regulariser of eq. 5, each averaged over the batch.

    embeddings (B, N, E), instance_labels (B, N). Blocks without instances are left out of the average.
    `norm` is the distance of all three terms: 'l2' (eq. 5 / De Brabandere et al.) or 'l1' (ASIS's TF code, whose
    pull, push and regulariser use `tf.norm(..., ord=1)`; the paper trains "with the same setting as ASIS").
    """
    if norm not in DIS_NORMS:
        raise LossInputError(f'dis_norm={norm!r}: choose one of {DIS_NORMS}')
    if not bool((instance_labels >= 0).any()):
        zero = _zero_like_graph(embeddings)
        return {'pull': zero, 'push': zero, 'reg': zero}
    groups = group_instances(instance_labels)
    point_embeddings = embeddings[groups.valid]                                    # (V, E)
    centres = embeddings.new_zeros(groups.num_instances, embeddings.shape[-1]).index_add(
        0, groups.inst_of_point, point_embeddings) / groups.points_per_inst.unsqueeze(1)  # (G, E)

    # Pull: 1/K sum_k 1/N_k sum_n [||g_n - mu_k|| - delta_v]_+^2.
    pull_point = F.relu(_dis_norm(point_embeddings - centres[groups.inst_of_point], norm) - delta_v).pow(2)
    pull_block = groups.sum_per_block(groups.mean_over_points(pull_point)) / groups.insts_per_block.clamp_min(1)

    # Push: 1/(K(K-1)) sum_{i != j in the same block} [2 delta_d - ||mu_i - mu_j||]_+^2.
    same_block = groups.block_of_inst.unsqueeze(1) == groups.block_of_inst.unsqueeze(0)        # (G, G)
    same_block.fill_diagonal_(False)
    centre_gaps = _dis_norm(centres.unsqueeze(1) - centres.unsqueeze(0), norm)                  # (G, G)
    push_pair = F.relu(2.0 * delta_d - centre_gaps).pow(2) * same_block
    pairs_per_block = groups.insts_per_block * (groups.insts_per_block - 1)
    push_block = groups.sum_per_block(push_pair.sum(1)) / pairs_per_block.clamp_min(1)

    # Regulariser (De Brabandere et al., ASIS): 1/K sum_k ||mu_k||.
    reg_block = groups.sum_per_block(_dis_norm(centres, norm)) / groups.insts_per_block.clamp_min(1)
    return {name: groups.mean_over_blocks(value)
            for name, value in (('pull', pull_block), ('push', push_block), ('reg', reg_block))}


def discriminative_loss(embeddings: torch.Tensor, instance_labels: torch.Tensor, delta_v: float = 0.5,
                        delta_d: float = 1.5, reg_weight: float = 0.001, norm: str = 'l2') -> torch.Tensor:
    """L_dis (eq. 5) + reg_weight * mean ||mu_k||, per block, averaged over the batch; `norm` 'l2' | 'l1' (ASIS)."""
    parts = discriminative_loss_terms(embeddings, instance_labels, delta_v, delta_d, norm)
    return parts['pull'] + parts['push'] + reg_weight * parts['reg']


def instance_centroids(xyz: torch.Tensor, instance_labels: torch.Tensor) -> torch.Tensor:
    """Ground-truth centroid of each valid point's instance. xyz (B, N, 3) -> (V, 3), order of `labels >= 0`."""
    groups = group_instances(instance_labels)
    point_xyz = xyz[groups.valid]
    sums = xyz.new_zeros(groups.num_instances, xyz.shape[-1]).index_add(0, groups.inst_of_point, point_xyz)
    return (sums / groups.points_per_inst.unsqueeze(1))[groups.inst_of_point]


def rins_loss(predicted_centroids: torch.Tensor, xyz: torch.Tensor, instance_labels: torch.Tensor) -> torch.Tensor:
    """R_ins (eq. 3): 1/K sum_k 1/N_k sum_n ||G(f̂_n) - GT_k||^2 per block, averaged over the batch.

    predicted_centroids (B, N, 3), xyz (B, N, 3) (ground truth comes from it, no gradient), instance_labels (B, N).
    """
    if not bool((instance_labels >= 0).any()):
        return _zero_like_graph(predicted_centroids)
    groups = group_instances(instance_labels)
    with torch.no_grad():
        gt_centroid = instance_centroids(xyz.to(predicted_centroids.dtype), instance_labels)  # (V, 3)
    squared_error = (predicted_centroids[groups.valid] - gt_centroid).pow(2).sum(1)           # (V,)
    per_block = groups.sum_per_block(groups.mean_over_points(squared_error)) / groups.insts_per_block.clamp_min(1)
    return groups.mean_over_blocks(per_block)


# ----------------------------------------------------------------------------------------------------------------
# Total (eq. 6)
# ----------------------------------------------------------------------------------------------------------------
def _in_fp32(loss_call):
    """Run a loss in float32 whatever the caller's autocast state: autocast off, half tensors promoted.

    In half precision _NORM_EPS (1e-12) is 0 (sqrt'(0) = inf) and the expanded distances of R_seg cancel."""
    def promote(value):
        return at_least_fp32(value) if torch.is_tensor(value) and value.is_floating_point() else value

    @functools.wraps(loss_call)
    def wrapper(self, outputs: dict, points: torch.Tensor, *args, **kwargs):
        with fp32_region(points):
            return loss_call(self, {k: promote(v) for k, v in outputs.items()}, promote(points),
                             *map(promote, args), **{k: promote(v) for k, v in kwargs.items()})
    return wrapper


class MPNetLoss:
    """L = L_ce (or focal) + L_dis + R_seg + lambda_ins * R_ins (eq. 6), switched by the ablation flags of `cfg`.

    R_seg and R_ins are used only when `cfg.use_regularization` and their memory (SegMem / InsMem) is on; a skipped
    term is absent from the returned `terms`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    @property
    def uses_rseg(self) -> bool:
        return self.cfg.use_regularization and self.cfg.use_seg_memory

    @property
    def uses_rins(self) -> bool:
        return self.cfg.use_regularization and self.cfg.use_ins_memory

    def _require(self, outputs: dict, key: str) -> torch.Tensor:
        value = outputs.get(key)
        if value is None:
            present = sorted(k for k, v in outputs.items() if v is not None)
            raise LossInputError(f'MPNetLoss: model outputs lack {key!r} (present: {present})')
        return value

    @_in_fp32
    def __call__(self, outputs: dict, points: torch.Tensor, sem_labels: torch.Tensor, ins_labels: torch.Tensor,
                 semantic_memory: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        logits = self._require(outputs, 'sem_logits')                              # (B, N, C)
        embeddings = self._require(outputs, 'ins_embed')                           # (B, N, E)
        batch_shape = tuple(logits.shape[:2])
        if points.dim() != 3 or tuple(points.shape[:2]) != batch_shape or points.shape[2] < 3:
            raise LossInputError(f'MPNetLoss: points must be (B, N, >=3) with (B, N) = {batch_shape}, '
                                 f'got {tuple(points.shape)}')
        _check_labels('sem_labels', sem_labels, batch_shape, upper=logits.shape[-1])
        _check_labels('ins_labels', ins_labels, batch_shape)

        terms: dict[str, torch.Tensor] = {}
        if cfg.use_focal_loss:
            terms['focal'] = focal_loss(logits, sem_labels, cfg.focal_gamma)
        else:
            terms['ce'] = cross_entropy_loss(logits, sem_labels)
        terms['dis'] = discriminative_loss(embeddings, ins_labels, cfg.delta_v, cfg.delta_d, cfg.dis_reg_weight,
                                           cfg.dis_norm)
        if self.uses_rseg:
            if semantic_memory is None:
                raise LossInputError('MPNetLoss: R_seg is on (use_regularization and use_seg_memory) '
                                     'but semantic_memory is None; pass model.semantic_memory()')
            terms['rseg'] = rseg_loss(self._require(outputs, 'f_seg_aug'), semantic_memory, sem_labels,
                                      cfg.rseg_margin, cfg.rseg_form)
        if self.uses_rins:
            terms['rins'] = rins_loss(self._require(outputs, 'centroids'), points[..., :3], ins_labels)

        total = sum(value * (cfg.lambda_ins if name == 'rins' else 1.0) for name, value in terms.items())
        report = {name: value.detach() for name, value in terms.items()}
        report['total'] = total.detach()
        return total, report
