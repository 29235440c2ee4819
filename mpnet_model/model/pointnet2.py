"""PointNet++ single-scale-grouping (SSG) backbone in pure PyTorch (CPU and CUDA, no compiled extension).

The sampling / grouping / interpolation ops reproduce the reference CUDA ops of PointNet++
(`farthest_point_sample`, `query_ball_point`, `three_nn` + `three_interpolate`) including their
tie-breaking and padding rules, so that a model trained with either implementation behaves the same.

ONNX: the modules contain no data-dependent Python control flow. Farthest point sampling is an
inherently sequential loop; for export pass its indices in from outside (`sample_indices`), so the
exported graph only contains gathers, top-k and convolutions.

Precision: coordinates, distances, neighbour search and interpolation weights are float32 whatever the autocast
state (docs/precision.md). Half precision breaks them: |q|^2 + |p|^2 - 2 q.p cancels to <= 0 for the coincident
coarse / fine points of every FP level, the 1e-8 of the interpolation underflows to 0, 1/0 = inf, inf/inf = NaN;
and ball-query sets change (47 % of the slots at r = 0.1 on real blocks). The explicit casts below
(`at_least_fp32`) survive ONNX export as Cast nodes; `mpnet_model.infer.precision` marks that subgraph fp32 for
fp16 runtimes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mpnet_model.config import ModelConfig
from mpnet_model.model.fp32 import at_least_fp32, fp32_region


def _squared_distances(queries: Tensor, points: Tensor) -> Tensor:
    """Squared Euclidean distances (B,S,N) between queries (B,S,3) and points (B,N,3).

    Expanded as |q|^2 + |p|^2 - 2 q.p so that the bulk is one batched matmul (the element-wise form is
    memory-bound and ~10x slower on CPU for 4096-point blocks). The rounding differs from the reference
    kernels' (dx^2 + dy^2 + dz^2) by ~1e-7 relative, which only matters for points exactly on a radius.
    Values may be slightly negative for coincident points; callers clamp only what they take the root of.
    Always float32: autocast is switched off here and the inputs are cast (autocast would run baddbmm in fp16).
    """
    with fp32_region(queries):
        return _squared_distances_fp32(at_least_fp32(queries), at_least_fp32(points))


def _squared_distances_fp32(queries: Tensor, points: Tensor) -> Tensor:
    query_norms = (queries * queries).sum(dim=-1, keepdim=True)                # (B,S,1)
    point_norms = (points * points).sum(dim=-1).unsqueeze(1)                    # (B,1,N)
    return torch.baddbmm(query_norms + point_norms, queries, points.transpose(1, 2), alpha=-2.0)


def gather_points(values: Tensor, index: Tensor) -> Tensor:
    """Per-batch gather: values (B,N,C), index (B,...) long -> (B,...,C).

    Implemented as a flat gather with batch offsets (one ONNX Gather, no expand of `values`).
    """
    batch, num_points, channels = values.shape
    offsets = torch.arange(batch, device=index.device).view(batch, *([1] * (index.dim() - 1))) * num_points
    flat = values.reshape(batch * num_points, channels)
    return flat[(index + offsets).reshape(-1)].reshape(*index.shape, channels)


@torch.no_grad()
def farthest_point_sample(xyz: Tensor, npoint: int) -> Tensor:
    """Farthest point sampling, vectorised over the batch: xyz (B,N,3) -> (B,npoint) long.

    As the reference op: starts at index 0, keeps each point's squared distance to the chosen set
    (initialised to 1e10) and picks the arg-max (first index on ties) at every step.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f'farthest_point_sample: xyz must be (B,N,3), got {tuple(xyz.shape)}')
    batch, num_points, _ = xyz.shape
    if not 0 < npoint <= num_points:
        raise ValueError(f'farthest_point_sample: npoint={npoint} must be in [1, N={num_points}]')
    chosen = torch.zeros(batch, npoint, dtype=torch.long, device=xyz.device)
    min_dist = torch.full((batch, num_points), 1e10, dtype=xyz.dtype, device=xyz.device)   # (B,N)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)     # (B,)
    batch_index = torch.arange(batch, device=xyz.device)
    for step in range(npoint):
        chosen[:, step] = farthest
        centre = xyz[batch_index, farthest].unsqueeze(1)                   # (B,1,3)
        offset = xyz - centre                                               # (B,N,3)
        dist = (offset * offset).sum(dim=-1)                                # (B,N), exact as the reference
        min_dist = torch.minimum(min_dist, dist)
        farthest = min_dist.argmax(dim=1)
    return chosen


@torch.no_grad()
def ball_query(radius: float, nsample: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """Neighbours of each query within `radius`: xyz (B,N,3), new_xyz (B,S,3) -> (B,S,nsample) long.

    As the reference `query_ball_point`: the first `nsample` indices (in index order) with squared
    distance < radius^2; unused slots repeat the first index found; a query with no neighbour gets 0.
    """
    batch, num_points, _ = xyz.shape
    dist = _squared_distances(new_xyz, xyz)                                 # (B,S,N)
    # Key = point index inside the ball, num_points outside; the k smallest keys are the first k hits.
    # float32 keys (explicitly, as `dist`) are exact for indices < 2^24 and keep top-k on the fastest ONNX Runtime
    # path; fp16 keys would be exact only up to 2048 and merge neighbouring indices beyond it.
    index_keys = torch.arange(num_points, device=xyz.device, dtype=torch.float32).expand_as(dist)
    outside = torch.full_like(dist, float(num_points), dtype=torch.float32)
    keys = torch.where(dist < radius * radius, index_keys, outside)
    k = min(nsample, int(num_points))        # a Python int: a constant K for TopK in exported graphs (TensorRT)
    first_keys = torch.topk(keys, k, dim=-1, largest=False, sorted=True).values  # (B,S,k) ascending
    if k < nsample:  # fewer points than slots: the extra slots are padding anyway
        first_keys = torch.cat([first_keys, first_keys.new_full((*first_keys.shape[:2], nsample - k),
                                                                float(num_points))], dim=-1)
    first_found = first_keys[..., :1]
    first_found = torch.where(first_found >= num_points, torch.zeros_like(first_found), first_found)
    first_keys = torch.where(first_keys >= num_points, first_found.expand_as(first_keys), first_keys)
    return first_keys.long()


def three_nn_interpolate(unknown_xyz: Tensor, known_xyz: Tensor, known_features: Tensor) -> Tensor:
    """Inverse-distance interpolation from the 3 nearest known points.

    unknown_xyz (B,n,3), known_xyz (B,m,3), known_features (B,m,C) -> (B,n,C).
    Weights are 1/(d+1e-8) normalised to sum 1, d the Euclidean distance (reference three_nn +
    three_interpolate). With m < 3 the available neighbours are used.
    The weights are computed in float32 (1/(0 + 1e-8) = 1e8 is finite there; in fp16 1e-8 is 0 and 1/0 = inf) and
    cast to the features' dtype only for the weighted sum: a convex combination, safe in half precision.
    """
    dist = _squared_distances(unknown_xyz, known_xyz)                       # (B,n,m) float32
    k = min(3, known_xyz.shape[1])
    nearest_dist2, nearest_index = torch.topk(dist, k, dim=-1, largest=False, sorted=True)  # (B,n,k)
    with fp32_region(dist):
        inverse = 1.0 / (torch.sqrt(nearest_dist2.clamp_min(0.0)) + 1e-8)
        weights = inverse / inverse.sum(dim=-1, keepdim=True)              # (B,n,k), each row sums to 1
    neighbour_features = gather_points(known_features, nearest_index)      # (B,n,k,C)
    return (weights.to(neighbour_features.dtype).unsqueeze(-1) * neighbour_features).sum(dim=2)


def _shared_mlp(in_channels: int, widths: Sequence[int], conv: type[nn.Module], norm: type[nn.Module]) -> nn.Sequential:
    """1x1 convolutions + batch norm + ReLU (the PointNet shared MLP)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [conv(in_channels, width, kernel_size=1, bias=False), norm(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    """SSG set abstraction: sample `npoint` centres, group `nsample` neighbours in `radius`, shared MLP, max-pool."""

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.npoint, self.radius, self.nsample = int(npoint), float(radius), int(nsample)
        self.in_channels = int(in_channels)
        self.out_channels = int(mlp[-1])
        self.mlp = _shared_mlp(self.in_channels + 3, mlp, nn.Conv2d, nn.BatchNorm2d)

    def forward(self, xyz: Tensor, features: Tensor | None, sample_index: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """xyz (B,N,3), features (B,N,C_in)|None, sample_index (B,npoint)|None
        -> new_xyz (B,S,3), new_features (B,S,C_out), sample_index (B,S)."""
        if sample_index is None:
            sample_index = farthest_point_sample(xyz, self.npoint)
        new_xyz = gather_points(xyz, sample_index)                                   # (B,S,3)
        neighbour_index = ball_query(self.radius, self.nsample, xyz, new_xyz)        # (B,S,K)
        grouped = gather_points(xyz, neighbour_index) - new_xyz.unsqueeze(2)         # (B,S,K,3) local coords
        if features is not None:
            grouped = torch.cat([grouped, gather_points(features, neighbour_index)], dim=-1)  # (B,S,K,3+C)
        grouped = self.mlp(grouped.permute(0, 3, 1, 2))                              # (B,C_out,S,K)
        new_features = grouped.amax(dim=-1).transpose(1, 2)                          # (B,S,C_out)
        return new_xyz, new_features, sample_index


class FeaturePropagation(nn.Module):
    """Upsample coarse features to the finer level by 3-NN interpolation, concatenate the skip features, shared MLP."""

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(mlp[-1])
        self.mlp = _shared_mlp(self.in_channels, mlp, nn.Conv1d, nn.BatchNorm1d)

    def forward(self, fine_xyz: Tensor, coarse_xyz: Tensor, fine_features: Tensor | None,
                coarse_features: Tensor) -> Tensor:
        """fine_xyz (B,n,3), coarse_xyz (B,m,3), fine_features (B,n,C1)|None, coarse_features (B,m,C2)
        -> (B,n,C_out)."""
        upsampled = three_nn_interpolate(fine_xyz, coarse_xyz, coarse_features)      # (B,n,C2)
        if fine_features is not None:
            upsampled = torch.cat([upsampled, fine_features], dim=-1)
        return self.mlp(upsampled.transpose(1, 2)).transpose(1, 2)


class PointNet2Encoder(nn.Module):
    """The SA levels of the backbone. Level-0 features (`cfg.level0_features`): 'non_xyz' = the channels after xyz
    (ASIS: rgb + normalised room xyz; xyz enters only as coordinates), 'all' = every input channel, xyz included."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.in_channels = cfg.in_channels
        self.feature_start = 3 if cfg.level0_features == 'non_xyz' else 0   # first input channel used as a feature
        levels = []
        channels = cfg.in_channels - self.feature_start
        for npoint, radius, mlp in zip(cfg.sa_npoints, cfg.sa_radii, cfg.sa_mlps):
            levels.append(SetAbstraction(npoint, radius, cfg.sa_nsample, channels, mlp))
            channels = mlp[-1]
        self.levels = nn.ModuleList(levels)

    @property
    def level_channels(self) -> list[int]:
        """Feature widths per level, level 0 (the input points) first."""
        return [self.in_channels - self.feature_start] + [level.out_channels for level in self.levels]

    @torch.no_grad()
    def sample_indices(self, xyz: Tensor) -> list[Tensor]:
        """Nested FPS indices: entry l is (B,npoint_l) into the points of level l (level 0 = input)."""
        indices = []
        for level in self.levels:
            index = farthest_point_sample(xyz, level.npoint)
            indices.append(index)
            xyz = gather_points(xyz, index)
        return indices

    def forward(self, points: Tensor, sample_indices: Sequence[Tensor] | None = None
                ) -> tuple[list[Tensor], list[Tensor]]:
        """points (B,N,C_in) -> xyz per level [(B,N_l,3)], features per level [(B,N_l,C_l)], level 0 first."""
        if points.dim() != 3 or points.shape[-1] != self.in_channels:
            raise ValueError(f'PointNet2Encoder: points must be (B,N,{self.in_channels}), got {tuple(points.shape)}')
        if sample_indices is not None and len(sample_indices) != len(self.levels):
            raise ValueError(f'PointNet2Encoder: got {len(sample_indices)} sample index tensors, '
                             f'need one per SA level ({len(self.levels)})')
        # Coordinates stay float32 at every level (explicit cast: also under autocast or a half-precision input).
        level0 = points[..., self.feature_start:] if self.feature_start < self.in_channels else None
        xyz_levels, feature_levels = [at_least_fp32(points[..., :3])], [level0]
        for depth, level in enumerate(self.levels):
            index = None if sample_indices is None else sample_indices[depth]
            new_xyz, new_features, _ = level(xyz_levels[-1], feature_levels[-1], index)
            xyz_levels.append(new_xyz)
            feature_levels.append(new_features)
        return xyz_levels, feature_levels


class PointNet2Decoder(nn.Module):
    """FP levels from the coarsest SA level back to the input points; cfg.fp_mlps[0] is the deepest."""

    def __init__(self, cfg: ModelConfig, level_channels: Sequence[int]):
        super().__init__()
        levels = []
        coarse_channels = level_channels[-1]
        for depth, mlp in enumerate(cfg.fp_mlps):
            skip_channels = level_channels[-2 - depth]
            levels.append(FeaturePropagation(coarse_channels + skip_channels, mlp))
            coarse_channels = mlp[-1]
        self.levels = nn.ModuleList(levels)
        self.out_channels = coarse_channels

    def forward(self, xyz_levels: Sequence[Tensor], feature_levels: Sequence[Tensor]) -> Tensor:
        """Per-level xyz / features from the encoder -> per-point features (B,N,D)."""
        features = feature_levels[-1]
        for depth, level in enumerate(self.levels):
            fine = -2 - depth
            features = level(xyz_levels[fine], xyz_levels[fine + 1], feature_levels[fine], features)
        return features


class PointNet2Backbone(nn.Module):
    """Shared PointNet++ SSG encoder with `num_decoders` parallel FP decoders (MPNet / ASIS: 2, seg and ins)."""

    def __init__(self, cfg: ModelConfig, num_decoders: int = 2):
        super().__init__()
        self.encoder = PointNet2Encoder(cfg)
        self.decoders = nn.ModuleList(PointNet2Decoder(cfg, self.encoder.level_channels) for _ in range(num_decoders))
        self.out_channels = cfg.feature_dim

    def sample_indices(self, xyz: Tensor) -> list[Tensor]:
        """Nested FPS indices for every SA level (see PointNet2Encoder.sample_indices)."""
        return self.encoder.sample_indices(xyz)

    def forward(self, points: Tensor, sample_indices: Sequence[Tensor] | None = None) -> list[Tensor]:
        """points (B,N,C_in) -> one (B,N,D) feature tensor per decoder."""
        xyz_levels, feature_levels = self.encoder(points, sample_indices)
        return [decoder(xyz_levels, feature_levels) for decoder in self.decoders]
