"""Mean-shift clustering of instance embeddings, vectorised in torch (CPU or CUDA).

Reproduces ``sklearn.cluster.MeanShift(bandwidth, bin_seeding=True)`` as ASIS/MPNet use it, step by step:

1. seeds: bins of width ``bandwidth`` (``get_bin_seeds`` with ``min_bin_freq=1``):
   ``unique(round(X / bandwidth)) * bandwidth``; when every point has its own bin sklearn falls back to the
   points themselves, and so do we;
2. every seed climbs with a flat kernel (mean of the points within ``bandwidth``, inclusive) until it moves by
   at most ``1e-3 * bandwidth`` or ``max_iter`` is reached. All seeds iterate together: one (seeds x points)
   distance matrix per iteration, chunked to bound memory, converged seeds leave the active set;
3. a seed whose window holds no point is dropped; centres are sorted by intensity (points within the window
   at the last step), ties broken by the centre coordinates, both descending (as sklearn);
4. greedy suppression: a centre within ``bandwidth`` of a stronger kept centre is removed;
5. every point takes the nearest remaining centre (``cluster_all=True``).
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_BANDWIDTH = 0.6
MAX_ITER = 300
# Bound on the elements of one (seeds x points) distance block: 4M floats = 16 MB in float32.
_MAX_BLOCK_ELEMENTS = 1 << 22


def _as_tensor(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        points = embeddings.detach()
    elif isinstance(embeddings, np.ndarray):
        points = torch.from_numpy(np.ascontiguousarray(embeddings))
    else:
        raise TypeError('mean_shift: embeddings must be a torch.Tensor or numpy.ndarray, '
                        f'got {type(embeddings).__name__}')
    if points.dim() != 2:
        raise ValueError(f'mean_shift: embeddings must have shape (N, E), got {tuple(points.shape)}')
    if not points.is_floating_point():
        points = points.float()
    if points.numel() and not bool(torch.isfinite(points).all()):
        raise ValueError('mean_shift: embeddings contain NaN or inf')
    return points


def _squared_distances(queries: torch.Tensor, points: torch.Tensor, points_sq: torch.Tensor) -> torch.Tensor:
    """(Q,E), (N,E), (N,) -> (Q,N) squared Euclidean distances via one matmul (clamped at 0 for rounding)."""
    queries_sq = (queries * queries).sum(1, keepdim=True)  # (Q,1)
    return (queries_sq + points_sq[None, :] - 2.0 * queries @ points.T).clamp_min_(0.0)


def _unique_rows(rows: torch.Tensor, sort_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge identical rows: (R,E), key (R,) -> (unique (U,E), inverse (R,)); much faster than unique(dim=0).

    Rows are sorted by ``sort_key`` (equal rows must have equal keys) and a new group starts wherever the
    row differs from its predecessor. If different rows share a key, equal rows may not be neighbours and
    stay separate: never a wrong merge, only a missed one (an injective key, as for the bins, misses none).
    """
    order = torch.sort(sort_key, stable=True).indices
    sorted_rows = rows[order]
    starts = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    starts[1:] = (sorted_rows[1:] != sorted_rows[:-1]).any(1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(starts, 0) - 1
    return sorted_rows[starts], inverse


def bin_seeds(points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """sklearn ``get_bin_seeds(X, bandwidth, min_bin_freq=1)``: (N,E) -> (S,E) seeds on the bandwidth grid."""
    bins = torch.round(points / bandwidth)  # (N,E); torch.round is half-to-even like numpy
    low, span = bins.amin(0), bins.amax(0) - bins.amin(0) + 1
    if float(torch.prod(span.double())) < 2.0 ** 62:  # the bin's mixed-radix index fits int64: exact, fast
        strides = torch.cumprod(torch.cat([torch.ones_like(span[:1]), span[:-1]]), 0).long()
        bin_keys = ((bins - low).long() * strides).sum(1)
        unique_bins = _unique_rows(bins, bin_keys)[0]
    else:
        unique_bins = torch.unique(bins, dim=0)
    if unique_bins.shape[0] == points.shape[0]:
        return points.clone()  # sklearn: binning did not reduce anything, seed from the points themselves
    return unique_bins * bandwidth


def _window_sums(queries: torch.Tensor, points_ext_t: torch.Tensor, points_aug_t: torch.Tensor,
                 radius_sq: float) -> torch.Tensor:
    """Flat-kernel window of every query: (Q,E) -> (Q,E+1) = [sum of the points within radius, their count].

    Few memory passes over the (Q,N) block, which dominates the cost: |q-x|^2 - r^2 is one matmul
    [-2q, |q|^2 - r^2, 1] . [x, 1, |x|^2], the comparison writes the 0/1 weights in place, and one matmul
    with [X, 1] gives sums and counts together (computed as ([X,1]^T W^T)^T, which BLAS runs faster here).
    """
    queries_ext = torch.cat([-2.0 * queries, (queries * queries).sum(1, keepdim=True) - radius_sq,
                             torch.ones_like(queries[:, :1])], 1)  # (Q,E+2)
    weights = queries_ext @ points_ext_t  # (Q,N) = |q - x|^2 - r^2
    torch.le(weights, 0.0, out=weights)  # 1.0 inside the window (inclusive, as sklearn's radius_neighbors)
    return (points_aug_t @ weights.T).T  # (Q,E+1)


def _climb(points: torch.Tensor, seeds: torch.Tensor, bandwidth: float, max_iter: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean shift of all seeds at once -> (centres (S,E), intensity (S,) int64; 0 = empty window).

    Seeds whose means become bitwise identical while both still move follow the same path from then on, so
    they share one "walker": a cluster's seeds collapse to one after a few steps and each iteration costs
    (walkers x points) instead of (seeds x points). Results per seed are those of sklearn's per-seed loop.
    """
    num_points, dim = points.shape
    device, dtype = points.device, points.dtype
    ones = torch.ones(num_points, 1, dtype=dtype, device=device)
    points_aug_t = torch.cat([points, ones], 1).T.contiguous()  # (E+1,N)
    points_ext_t = torch.cat([points, ones, (points * points).sum(1, keepdim=True)], 1).T.contiguous()  # (E+2,N)
    radius_sq = bandwidth * bandwidth
    stop_thresh = 1e-3 * bandwidth
    num_seeds = seeds.shape[0]
    centres = seeds.clone()  # (S,E)
    intensity = torch.zeros(num_seeds, dtype=torch.int64, device=device)
    walker_means = seeds.clone()  # (W,E)
    active_seeds = torch.arange(num_seeds, device=device)  # (A,) seeds still climbing
    active_walker = torch.arange(num_seeds, device=device)  # (A,) their walker
    rows_per_chunk = max(1, _MAX_BLOCK_ELEMENTS // max(num_points, 1))
    for iteration in range(max_iter + 1):
        if active_seeds.numel() == 0:
            break
        sums = torch.cat([_window_sums(walker_means[s:s + rows_per_chunk], points_ext_t, points_aug_t, radius_sq)
                          for s in range(0, walker_means.shape[0], rows_per_chunk)])  # (W,E+1)
        counts = sums[:, dim]
        empty = counts == 0  # sklearn stops such a seed and drops it (intensity 0)
        new_means = sums[:, :dim] / counts.clamp_min(1)[:, None]
        done = empty | (torch.linalg.vector_norm(new_means - walker_means, dim=1) <= stop_thresh)
        if iteration == max_iter:
            done = torch.ones_like(done)
        seed_done = done[active_walker]
        finished_seeds, finished_walker = active_seeds[seed_done], active_walker[seed_done]
        centres[finished_seeds] = torch.where(empty[:, None], walker_means, new_means)[finished_walker]
        intensity[finished_seeds] = torch.where(empty, 0, counts.round().long())[finished_walker]
        moving = ~done
        moving_means = new_means[moving]
        merged_means, merged_index = _unique_rows(moving_means, moving_means[:, 0])
        walker_remap = torch.full_like(done, -1, dtype=torch.int64)
        walker_remap[moving] = merged_index
        active_seeds, active_walker = active_seeds[~seed_done], walker_remap[active_walker[~seed_done]]
        walker_means = merged_means
    return centres, intensity


def _sort_by_intensity(centres: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """Order of sklearn's ``sorted(key=(intensity, tuple(centre)), reverse=True)``: stable sorts, least key first."""
    order = torch.arange(centres.shape[0], device=centres.device)
    for column in range(centres.shape[1] - 1, -1, -1):
        order = order[torch.sort(centres[order, column], descending=True, stable=True).indices]
    return order[torch.sort(intensity[order], descending=True, stable=True).indices]


def _suppress_near_duplicates(sorted_centres: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Greedy suppression as sklearn: (S,E) sorted strongest first -> (K,) indices of the kept centres.

    The loop visits kept centres only (a handful), each step clears the neighbours of one centre at once.
    """
    sq = (sorted_centres * sorted_centres).sum(1)
    near = (_squared_distances(sorted_centres, sorted_centres, sq) <= bandwidth * bandwidth).cpu().numpy()  # (S,S)
    alive = np.ones(sorted_centres.shape[0], dtype=bool)
    kept = []
    current = 0
    while current < alive.size:
        kept.append(current)
        alive[near[current]] = False  # near[current, current] is True: the centre itself leaves the queue too
        following = np.flatnonzero(alive[current + 1:])
        if following.size == 0:
            break
        current = current + 1 + int(following[0])
    return torch.as_tensor(kept, dtype=torch.int64, device=sorted_centres.device)


def _nearest_centre(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,E), (K,E) -> (N,) int64 index of the nearest centre, chunked over points."""
    centres_sq = (centres * centres).sum(1)
    rows_per_chunk = max(1, _MAX_BLOCK_ELEMENTS // max(centres.shape[0], 1))
    return torch.cat([_squared_distances(points[s:s + rows_per_chunk], centres, centres_sq).argmin(1)
                      for s in range(0, points.shape[0], rows_per_chunk)])


def mean_shift_torch(points: torch.Tensor, bandwidth: float = DEFAULT_BANDWIDTH, max_iter: int = MAX_ITER
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor core of :func:`mean_shift`: (N,E) float tensor -> (labels (N,) int64, centres (K,E)), same device."""
    if not bandwidth > 0:
        raise ValueError(f'mean_shift: bandwidth must be > 0, got {bandwidth!r}')
    if max_iter < 0:
        raise ValueError(f'mean_shift: max_iter must be >= 0, got {max_iter!r}')
    num_points, dim = points.shape
    if num_points == 0:
        return (torch.zeros(0, dtype=torch.int64, device=points.device),
                torch.zeros(0, dim, dtype=points.dtype, device=points.device))
    centres, intensity = _climb(points, bin_seeds(points, bandwidth), bandwidth, max_iter)
    found = intensity > 0
    if not bool(found.any()):
        # A bin centre can be up to bandwidth/2*sqrt(E) from its points, so every window may be empty (sklearn
        # raises here). Seeding from the points themselves always succeeds: each window holds its own seed.
        centres, intensity = _climb(points, points.clone(), bandwidth, max_iter)
        found = intensity > 0
    centres, intensity = centres[found], intensity[found]
    order = _sort_by_intensity(centres, intensity)
    sorted_centres = centres[order]
    cluster_centres = sorted_centres[_suppress_near_duplicates(sorted_centres, bandwidth)]
    return _nearest_centre(points, cluster_centres), cluster_centres


def mean_shift(embeddings: torch.Tensor | np.ndarray, bandwidth: float = DEFAULT_BANDWIDTH, *,
               max_iter: int = MAX_ITER, return_centres: bool = False):
    """Cluster instance embeddings (N,E) like ``sklearn.cluster.MeanShift(bandwidth, bin_seeding=True)``.

    Runs on the device of a tensor input (numpy input runs on CPU) in the input's float precision.
    Returns ``labels (N,) int64`` (cluster 0 = the strongest centre), or ``(labels, centres (K,E))`` when
    ``return_centres`` is true; numpy in -> numpy out, tensor in -> tensor out.
    """
    points = _as_tensor(embeddings)
    labels, centres = mean_shift_torch(points, bandwidth, max_iter)
    if isinstance(embeddings, np.ndarray):
        labels, centres = labels.numpy(), centres.numpy()
    return (labels, centres) if return_centres else labels


def mean_shift_blocks(block_embeddings: torch.Tensor | np.ndarray, bandwidth: float = DEFAULT_BANDWIDTH, *,
                      max_iter: int = MAX_ITER):
    """Per-block mean shift of a batch (B,N,E) -> labels (B,N) int64 (ids local to each block).

    Blocks are independent clusterings; this is a convenience loop (each block is already one batched
    problem over all its seeds), returning the same array type as the input.
    """
    if block_embeddings.ndim != 3:
        raise ValueError('mean_shift_blocks: embeddings must have shape (B, N, E), '
                         f'got {tuple(block_embeddings.shape)}')
    num_blocks, num_points, dim = block_embeddings.shape
    points = _as_tensor(block_embeddings.reshape(num_blocks * num_points, dim)).reshape(num_blocks, num_points, dim)
    labels = torch.zeros(num_blocks, num_points, dtype=torch.int64, device=points.device)
    for block_index in range(num_blocks):
        labels[block_index] = mean_shift_torch(points[block_index], bandwidth, max_iter)[0]
    return labels.numpy() if isinstance(block_embeddings, np.ndarray) else labels
