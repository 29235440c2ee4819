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

Entry points: :func:`mean_shift` (one point set), :func:`mean_shift_blocks` (every block of a frame in one
batched computation on the input's device: what the frame path uses) and :func:`mean_shift_blocks_reference`
(one :func:`mean_shift` per block: the reference of tests and benchmarks). The batched version adds, with the
same result: equal points of a block (resampled lidar columns) counted once with their multiplicity; padded
seeds with masks and batched matmuls for the windows; each seed's stop recorded on the device and checked by
the host only every few iterations; chunks of blocks of similar size bounded by memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpnet_model.infer.device_ops import available_memory, compact, counts, read_host, to_device

DEFAULT_BANDWIDTH = 0.6
MAX_ITER = 300
# Bound on the elements of one (seeds x points) distance block: 4M floats = 16 MB in float32.
_MAX_BLOCK_ELEMENTS = 1 << 22


def _as_tensor(embeddings: torch.Tensor | np.ndarray, ndim: int = 2, caller: str = 'mean_shift',
               check_finite: bool = True) -> torch.Tensor:
    """Validate (N,E) (``ndim`` 2) or (B,N,E) (``ndim`` 3) embeddings -> a float tensor on the input's device.
    ``check_finite=False``: the caller checks for NaN / inf itself (the device path, in its one host read)."""
    if isinstance(embeddings, torch.Tensor):
        points = embeddings.detach()
    elif isinstance(embeddings, np.ndarray):
        points = torch.from_numpy(np.ascontiguousarray(embeddings))
    else:
        raise TypeError(f'{caller}: embeddings must be a torch.Tensor or numpy.ndarray, '
                        f'got {type(embeddings).__name__}')
    if points.dim() != ndim:
        expected = '(N, E)' if ndim == 2 else '(B, N, E)'
        raise ValueError(f'{caller}: embeddings must have shape {expected}, got {tuple(points.shape)}')
    if not points.is_floating_point():
        points = points.float()
    if check_finite and points.numel() and not bool(torch.isfinite(points).all()):
        raise ValueError(f'{caller}: embeddings contain NaN or inf')
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


def mean_shift_blocks_reference(block_embeddings: torch.Tensor | np.ndarray, bandwidth: float = DEFAULT_BANDWIDTH,
                                *, max_iter: int = MAX_ITER):
    """Per-block loop over :func:`mean_shift_torch`: (B,N,E) -> labels (B,N) int64, the same array type as the input.

    The reference of :func:`mean_shift_blocks` (tests and the frame benchmark's reference path): one Python call
    per block, each iteration syncing the device. Use :func:`mean_shift_blocks` in production.
    """
    points = _as_tensor(block_embeddings, 3, 'mean_shift_blocks')
    labels = torch.zeros(points.shape[:2], dtype=torch.int64, device=points.device)
    for block_index in range(points.shape[0]):
        labels[block_index] = mean_shift_torch(points[block_index], bandwidth, max_iter)[0]
    return labels.numpy() if isinstance(block_embeddings, np.ndarray) else labels


# ---------------------------------------------------------------------------------------------------------------
# Batched mean shift: all blocks of a frame in one computation on the input's device.
# ---------------------------------------------------------------------------------------------------------------

CHECK_EVERY = 4  # iterations between two convergence checks (each check is one device -> host sync)
_CPU_PASS_ELEMENTS = 1 << 19  # CPU: window elements per matmul pass, 2 MiB: the 0/1 weights stay in cache


def _cpu_strategy(device: torch.device) -> bool:
    """True on the CPU: numpy row sorts, cache-sized window passes, walkers regrouped by size (a GPU does not mind
    padding, but every extra group costs kernel launches). Tests switch it off to run the GPU strategy on a CPU."""
    return device.type == 'cpu'


def default_max_elements(device: torch.device) -> int:
    """Seed slots x points of one chunk of blocks (the padded (blocks, seeds, points) window): the memory bound.

    CUDA: the window tensor is computed in one pass, so an eighth of the memory the device can give
    (`device_ops.available_memory`: free memory plus the caching allocator's unused reserve, which a frame leaves
    behind) in float32 elements, clipped to [2^22, 2^30] (4 GiB: a 15 m lidar frame in one chunk, whose padding
    costs a GPU less than repeating the iterations per chunk). CPU: 2^23 (the window is computed in cache-sized
    passes of 2^19 elements into one reused buffer, so the chunk bounds the padded bookkeeping; smaller chunks pad
    less but loop more, 2^23 was the fastest on the shared Ouster frames).
    """
    if device.type == 'cuda':
        return int(min(max(available_memory(device) // 32, 1 << 22), 1 << 30))
    return 1 << 23


def _distinct_points(points: torch.Tensor, width: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the bitwise-equal embeddings of each block: (B,N,E) -> (distinct (B,D,E), multiplicity (B,D) float
    (0 = padding), index of each point's distinct row (B,N)). D = the most distinct rows of a block (one host
    read) unless ``width`` is given (>= that, e.g. N: no read).

    A block resampled from few points (a sparse lidar column: a few dozen points drawn up to N) repeats its
    points, and the model gives equal points equal embeddings. Mean shift over the distinct points weighted by
    their multiplicity is the same computation (window sums and counts are weighted sums), with D << N.
    Equal rows are found next to each other after one batched sort by the first coordinate (equal rows that a
    different row with the same first coordinate separates stay apart: only a missed merge, never a wrong one).
    """
    num_blocks, num_points, dim = points.shape
    device = points.device
    if _cpu_strategy(device) and device.type == 'cpu':  # numpy's row sort is ~2x faster than torch's on the CPU
        order = torch.from_numpy(np.argsort(points[..., 0].numpy(), axis=1))
    else:
        order = torch.sort(points[..., 0], dim=1).indices  # (B,N)
    flat_order = (order + torch.arange(num_blocks, device=device)[:, None] * num_points).reshape(-1)
    sorted_points = points.reshape(-1, dim).index_select(0, flat_order).view(num_blocks, num_points, dim)
    starts = torch.ones(num_blocks, num_points, dtype=torch.bool, device=device)
    starts[:, 1:] = (sorted_points[:, 1:] != sorted_points[:, :-1]).any(-1)
    distinct_of_sorted = torch.cumsum(starts, 1) - 1  # (B,N)
    if width is None:
        width = int(distinct_of_sorted[:, -1].max()) + 1
    target = (distinct_of_sorted + torch.arange(num_blocks, device=device)[:, None] * width).reshape(-1)
    starts = starts.reshape(-1)
    distinct = points.new_zeros(num_blocks * width + 1, dim)  # + a dump row for the repeats of a run
    distinct.index_copy_(0, torch.where(starts, target, num_blocks * width), sorted_points.reshape(-1, dim))
    distinct = distinct[:-1]
    multiplicity = counts(target, num_blocks * width).to(points.dtype)
    inverse = torch.empty_like(flat_order)
    inverse[flat_order] = distinct_of_sorted.reshape(-1)
    return (distinct.view(num_blocks, width, dim), multiplicity.view(num_blocks, width),
            inverse.view(num_blocks, num_points))


def _batched_bin_seeds(rows: torch.Tensor, row_block: torch.Tensor, num_blocks: int, num_points: int,
                       bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bin_seeds` of every block at once: the distinct points (M,E) of blocks ``row_block`` (M,) ->
    (seeds (S,E), block of each seed (S,)), grouped by block.

    One sort of integer bin keys over the whole batch (the block index is the most significant digit). A block
    whose ``num_points`` points all have their own bin is seeded from its points, as sklearn (and
    :func:`bin_seeds`) do.
    """
    dim = rows.shape[1]
    bins = torch.round(rows / bandwidth)  # (M,E)
    low = bins.amin(0)
    span = bins.amax(0) - low + 1
    block_span = float(torch.prod(span.double()))
    if block_span * num_blocks < 2.0 ** 62:  # (block, bin) as one mixed-radix int64 key: exact and fast
        strides = torch.cumprod(torch.cat([torch.ones_like(span[:1]), span[:-1]]), 0).long()
        keys = ((bins - low).long() * strides).sum(1) + row_block * int(block_span)
        keys, order = torch.sort(keys)
        starts = torch.ones_like(keys, dtype=torch.bool)
        starts[1:] = keys[1:] != keys[:-1]
        unique_bins, unique_block = bins[order[starts]], row_block[order[starts]]
    else:  # embeddings spread over > 2^62 bins: exact but slower row-wise unique
        unique_rows = torch.unique(torch.cat([row_block[:, None].double(), bins.double()], 1), dim=0)
        unique_bins, unique_block = unique_rows[:, 1:].to(rows.dtype), unique_rows[:, 0].long()
    from_points = torch.bincount(unique_block, minlength=num_blocks) == num_points  # (B,) binning reduced nothing
    keep = ~from_points[unique_block]
    point_seeds = from_points[row_block]
    seeds = torch.cat([unique_bins[keep] * bandwidth, rows[point_seeds].reshape(-1, dim)])
    seed_block = torch.cat([unique_block[keep], row_block[point_seeds]])
    order = torch.sort(seed_block, stable=True).indices
    return seeds[order], seed_block[order]


def _pad_by_block(values: torch.Tensor, block: torch.Tensor, num_blocks: int, width: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows grouped by block ((M,...) with ``block`` (M,) non-decreasing) -> padded (num_blocks, W, ...) and the
    (num_blocks, W) mask of real rows; W = the largest group unless given. One host sync (W) when not given."""
    counts = torch.bincount(block, minlength=num_blocks)
    if width is None:
        width = int(counts.max()) if block.numel() else 0
    first = torch.cumsum(counts, 0) - counts  # (num_blocks,) row of each block's first value
    slot = torch.arange(block.numel(), device=block.device) - first[block]
    padded = values.new_zeros((num_blocks, width) + tuple(values.shape[1:]))
    padded[block, slot] = values
    valid = torch.zeros(num_blocks, width, dtype=torch.bool, device=block.device)
    valid[block, slot] = True
    return padded, valid


class _BlockPoints:
    """The points of a chunk of blocks in the layouts the window matmuls use, and the reused window buffer."""

    def __init__(self, points: torch.Tensor | None, weights: torch.Tensor | None, pass_elements: int, *,
                 aug_t: torch.Tensor | None = None, ext_t: torch.Tensor | None = None):  # (b,N,E), (b,N)
        if points is not None:
            ones = torch.ones_like(points[..., :1])
            aug_t = (torch.cat([points, ones], -1) * weights[..., None]).transpose(1, 2).contiguous()
            ext_t = torch.cat([points, ones, (points * points).sum(-1, keepdim=True)], -1).transpose(1, 2)
        self.aug_t = aug_t  # (b,E+1,N): w [x, 1]^T, w = multiplicity (0 = padding)
        self.ext_t = ext_t.contiguous()  # (b,E+2,N): [x, 1, |x|^2]^T
        self.dim = self.aug_t.shape[1] - 1
        self.pass_elements = pass_elements
        self._buffer: torch.Tensor | None = None

    def subset(self, rows: torch.Tensor) -> _BlockPoints:
        """The blocks ``rows`` (r,) only (one gather, done when the set of blocks changes)."""
        subset = _BlockPoints(None, None, self.pass_elements, aug_t=self.aug_t[rows], ext_t=self.ext_t[rows])
        subset._buffer = self._buffer
        return subset

    def windows(self, queries: torch.Tensor, radius_sq: float) -> torch.Tensor:
        """Flat-kernel windows of queries (b,Q,E) -> (b,Q,E+1) = [sum of the points within radius, their count]
        (each point counted with its multiplicity).

        As :func:`_window_sums`: |q-x|^2 - r^2 is one batched matmul, the comparison writes the 0/1 weights in
        place, and a second batched matmul with [X, 1] gives sums and counts together. The (b,Q,N) weights go
        to one buffer reused across iterations (a fresh tensor of that size costs more in page faults than the
        matmul), in passes of at most ``pass_elements`` (cache-sized on the CPU, one pass on CUDA).
        """
        num_blocks, num_queries, _ = queries.shape
        num_points = self.ext_t.shape[2]
        queries_ext = torch.cat([-2.0 * queries, (queries * queries).sum(-1, keepdim=True) - radius_sq,
                                 torch.ones_like(queries[..., :1])], -1)  # (b,Q,E+2)
        per_pass = max(1, min(num_blocks, self.pass_elements // max(num_queries * num_points, 1)))
        needed = per_pass * num_queries * num_points
        if self._buffer is None or self._buffer.numel() < needed:
            self._buffer = torch.empty(needed, dtype=queries.dtype, device=queries.device)
        sums_t = queries.new_empty(num_blocks, self.dim + 1, num_queries)
        for start in range(0, num_blocks, per_pass):
            stop = min(num_blocks, start + per_pass)
            weights = self._buffer[:(stop - start) * num_queries * num_points].view(
                stop - start, num_queries, num_points)
            torch.bmm(queries_ext[start:stop], self.ext_t[start:stop], out=weights)  # |q - x|^2 - r^2
            torch.le(weights, 0.0, out=weights)  # 1.0 inside the window (inclusive, as sklearn's radius_neighbors)
            torch.bmm(self.aug_t[start:stop], weights.transpose(1, 2), out=sums_t[start:stop])
        return sums_t.transpose(1, 2).contiguous()


@dataclass
class _Walkers:
    """Padded walkers of some blocks: means (r,W,E), still moving (r,W), their blocks (r,) and those blocks' points;
    centres (r,W,E) and intensity (r,W) record the walkers that stop in the current round."""
    means: torch.Tensor
    active: torch.Tensor
    rows: torch.Tensor
    points: _BlockPoints
    centres: torch.Tensor | None = None
    intensity: torch.Tensor | None = None


def _regroup_walkers(groups: list[_Walkers], block_points: _BlockPoints, size_classes: bool) -> list[_Walkers]:
    """Keep the still-moving walkers, one per distinct mean of a block (walkers with bitwise-equal means follow
    the same path from then on, as in :func:`_climb`) and repack them by block, blocks with similar walker
    counts together when ``size_classes`` (padding at most doubles the work), else all in one group."""
    moving = torch.cat([group.means[group.active] for group in groups])  # (A,E)
    block = torch.cat([group.rows[:, None].expand_as(group.active)[group.active] for group in groups])  # (A,)
    if moving.shape[0] == 0:
        return []
    order = torch.sort(moving[:, 0], stable=True).indices
    order = order[torch.sort(block[order], stable=True).indices]  # by block, then first coordinate
    moving, block = moving[order], block[order]
    starts = torch.ones_like(block, dtype=torch.bool)
    starts[1:] = (block[1:] != block[:-1]) | (moving[1:] != moving[:-1]).any(1)
    moving, block = moving[starts], block[starts]
    blocks, walkers_per_block = torch.unique_consecutive(block, return_counts=True)
    classes = _size_classes(walkers_per_block.cpu().numpy(), size_classes)
    regrouped = []
    num_blocks = int(block_points.ext_t.shape[0])
    for members in classes:
        rows = blocks[torch.from_numpy(members).to(blocks.device)]
        walker_rows, walker_block = _rows_of_blocks(block, rows, num_blocks)
        means, valid = _pad_by_block(moving[walker_rows], walker_block, rows.numel())
        regrouped.append(_Walkers(means, valid, rows, block_points.subset(rows)))
    return regrouped


def _climb_blocks(block_points: _BlockPoints, seeds: torch.Tensor, valid: torch.Tensor, bandwidth: float,
                  max_iter: int, check_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat-kernel mean shift of padded seeds (b,S,E) (``valid`` (b,S) marks real ones) in their blocks.

    Every seed stops on its own iteration exactly as in :func:`_climb` (shift <= 1e-3 bandwidth, an empty
    window, or ``max_iter``), recorded on the device with masks; the host looks after 1, 2, 4, then every
    ``check_every`` iterations, collects the finished seeds and repacks the moving ones (on the CPU in groups
    of blocks with similar walker counts). Returns the seeds whose last window held points:
    (centres (H,E), intensity (H,) int64, block (H,)), in no particular order.
    """
    radius_sq, stop_sq = bandwidth * bandwidth, (1e-3 * bandwidth) ** 2
    dim = seeds.shape[-1]
    size_classes = _cpu_strategy(seeds.device)
    groups = [_Walkers(seeds, valid, torch.arange(seeds.shape[0], device=seeds.device), block_points)]
    found_centres, found_intensity, found_block = [], [], []
    iteration = 0
    while groups:
        for group in groups:
            group.centres = group.means.clone()
            group.intensity = torch.zeros(group.active.shape, dtype=torch.int64, device=seeds.device)
        for _ in range(max(1, min(check_every, iteration))):  # checks after 1, 2, 4, then every check_every
            for group in groups:
                sums = group.points.windows(group.means, radius_sq)  # (r,W,E+1)
                counts = sums[..., dim]
                new_means = sums[..., :dim] / counts.clamp_min(1)[..., None]
                empty = counts == 0
                finish = group.active
                if iteration < max_iter:
                    finish = finish & (empty | (((new_means - group.means) ** 2).sum(-1) <= stop_sq))
                group.centres = torch.where((finish & ~empty)[..., None], new_means, group.centres)
                group.intensity = torch.where(finish, counts.round().long(), group.intensity)  # 0 if empty
                group.active = group.active & ~finish
                group.means = torch.where(group.active[..., None], new_means, group.means)
            iteration += 1
            if iteration > max_iter:
                break
        for group in groups:
            found = group.intensity > 0  # finished in this round with a non-empty window
            found_centres.append(group.centres[found])
            found_intensity.append(group.intensity[found])
            found_block.append(group.rows[:, None].expand_as(found)[found])
        if iteration > max_iter:
            break
        groups = _regroup_walkers(groups, block_points, size_classes)  # the round's host sync
    return torch.cat(found_centres), torch.cat(found_intensity), torch.cat(found_block)


def _sklearn_order(centres: torch.Tensor, intensity: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Order grouping the centres by block, each block in sklearn's (intensity, centre) descending order."""
    order = torch.arange(centres.shape[0], device=centres.device)
    for column in range(centres.shape[1] - 1, -1, -1):
        order = order[torch.sort(centres[order, column], descending=True, stable=True).indices]
    order = order[torch.sort(intensity[order], descending=True, stable=True).indices]
    return order[torch.sort(block[order], stable=True).indices]


def _suppress_batched(centres: torch.Tensor, valid: torch.Tensor, bandwidth: float, check_every: int,
                      steps: int | None = None) -> torch.Tensor:
    """Greedy suppression of :func:`_suppress_near_duplicates` in every block at once.

    centres (b,K,E) strongest first, ``valid`` (b,K) -> (b,K) mask of the kept centres. Step t keeps the
    first still-alive centre of each block and clears its neighbours; steps = the most centres a block keeps:
    checked on the host every ``check_every`` steps, or exactly ``steps`` steps when the caller gives a bound
    (e.g. K: no host check; steps past the last kept centre change nothing).
    """
    sq = (centres * centres).sum(-1)
    near = (sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(centres, centres.transpose(1, 2))
            <= bandwidth * bandwidth)  # (b,K,K)
    alive, kept = valid.clone(), torch.zeros_like(valid)
    slots = torch.arange(valid.shape[1], device=valid.device)
    rows = torch.arange(valid.shape[0], device=valid.device)
    while (steps is None and bool(alive.any())) or (steps is not None and steps > 0):
        for _ in range(check_every if steps is None else steps):
            first = alive.to(centres.dtype).argmax(1)  # (b,) first alive centre (0 when none is)
            pick = (slots[None, :] == first[:, None]) & alive.any(1, keepdim=True)  # (b,K) one-hot or nothing
            kept |= pick
            alive &= ~(pick | (near[rows, first] & pick.any(1, keepdim=True)))
        steps = None if steps is None else 0
    return kept


def _assign_batched(block_points: _BlockPoints, centres: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Nearest centre of every point: centres (b,K,E) strongest first, ``valid`` (b,K) -> (b,N) index of the
    nearest valid centre (0 = strongest), as :func:`_nearest_centre`."""
    dim = block_points.dim
    points = block_points.ext_t[:, :dim, :].transpose(1, 2)  # (b,N,E)
    points_sq = block_points.ext_t[:, dim + 1, :]  # (b,N)
    centres_sq = (centres * centres).sum(-1).masked_fill_(~valid, float('inf'))  # (b,K)
    distances = torch.baddbmm(points_sq[:, :, None] + centres_sq[:, None, :], points, centres.transpose(1, 2),
                              alpha=-2.0)  # (b,N,K)
    return distances.argmin(-1)


def _climb_chunk(points: torch.Tensor, weights: torch.Tensor, seeds: torch.Tensor, seed_block: torch.Tensor,
                 bandwidth: float, max_iter: int, check_every: int, pass_elements: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Climb the seeds (S,E) of blocks ``seed_block`` (S,) in the chunk's distinct points (b,D,E) with their
    multiplicities (b,D) -> the found centres (H,E), intensity (H,), block in the chunk (H,)."""
    num_blocks = points.shape[0]
    block_points = _BlockPoints(points, weights, pass_elements)
    padded, valid = _pad_by_block(seeds, seed_block, num_blocks)
    centres, intensity, block = _climb_blocks(block_points, padded, valid, bandwidth, max_iter, check_every)
    missing = torch.bincount(block, minlength=num_blocks) == 0  # (b,) every window empty: seed from the points
    if bool(missing.any()):
        rows = torch.nonzero(missing).squeeze(1)
        retry = _climb_blocks(block_points.subset(rows), points[rows], weights[rows] > 0, bandwidth, max_iter,
                              check_every)
        centres, intensity = torch.cat([centres, retry[0]]), torch.cat([intensity, retry[1]])
        block = torch.cat([block, rows[retry[2]]])
    return centres, intensity, block


def _rows_of_blocks(row_block: torch.Tensor, blocks: torch.Tensor, num_blocks: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (grouped by block, ``row_block`` (M,)) belonging to ``blocks`` (b,) -> (their indices, in block order
    of ``blocks`` and then row order; their block's position in ``blocks``)."""
    position = torch.full((num_blocks,), -1, dtype=torch.int64, device=row_block.device)
    position[blocks] = torch.arange(blocks.numel(), device=row_block.device)
    local = position[row_block]
    rows = torch.nonzero(local >= 0).squeeze(1)
    rows = rows[torch.sort(local[rows], stable=True).indices]
    return rows, local[rows]


def _size_classes(sizes: np.ndarray, split: bool = True) -> list[np.ndarray]:
    """Block indices grouped by size class (sizes in (2^(k-1), 2^k]), so padding each group to its largest block
    at most doubles it; one group when not ``split`` (the GPU strategy: padding is cheap there, launches are
    not): -> list of index arrays (blocks of size 0 left out)."""
    if not split:
        return [np.flatnonzero(sizes > 0)] if np.any(sizes > 0) else []
    classes = np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64)
    return [np.flatnonzero((classes == k) & (sizes > 0)) for k in np.unique(classes[sizes > 0])]


def _plan_chunks(points_per_block: np.ndarray, seeds_per_block: np.ndarray, max_elements: int
                 ) -> list[np.ndarray]:
    """Blocks sorted by (distinct points, seeds), cut into chunks whose padded window tensor (blocks x most seeds
    x most points) stays within ``max_elements`` (a block alone may exceed it): -> list of block index arrays."""
    order = np.lexsort((seeds_per_block, points_per_block))
    chunks, start = [], 0
    widest_seeds = 0
    for stop in range(1, order.size + 1):  # chunk = order[start:stop]
        widest_seeds = max(widest_seeds, seeds_per_block[order[stop - 1]])
        if stop < order.size:
            next_block = order[stop]
            padded = ((stop + 1 - start) * max(widest_seeds, seeds_per_block[next_block])
                      * points_per_block[next_block])
            if padded <= max_elements:
                continue
        chunks.append(order[start:stop])
        start, widest_seeds = stop, 0
    return chunks


def mean_shift_blocks(block_embeddings: torch.Tensor | np.ndarray, bandwidth: float = DEFAULT_BANDWIDTH, *,
                      max_iter: int = MAX_ITER, max_elements: int | None = None, check_every: int = CHECK_EVERY):
    """Mean shift of every block of a frame in one batched computation: (B,N,E) -> labels (B,N) int64.

    Contract (used by ``infer/scene.py``): ``block_embeddings`` is a numpy array or a torch tensor on any
    device; the result has the input's array type (numpy -> numpy; tensor -> int64 tensor on the SAME device,
    no host round trip of the data). Labels are local to each block, 0 = the block's strongest centre.
    Semantics per block are those of :func:`mean_shift` (sklearn ``MeanShift(bandwidth, bin_seeding=True)``:
    bin seeding, flat kernel, duplicate suppression, nearest centre), so each row equals
    :func:`mean_shift_blocks_reference` up to float rounding in the batched matmuls.

    How: equal embeddings of a block (resampled points) become one point weighted by its multiplicity
    (:func:`_distinct_points`); seeds of all blocks are padded to (blocks, seeds, E) with masks; every
    iteration is two batched matmuls for the flat-kernel windows of all seeds; each seed stops on its own
    iteration, recorded on the device, and the host checks for convergence after 1, 2, 4, then every
    ``check_every`` iterations (then drops finished seeds and merges identical ones). Blocks are processed in
    chunks of similar size whose window tensor holds at most ``max_elements`` elements (default
    :func:`default_max_elements` of the device). Half precision input is computed in float32 (squared
    distances by expansion need it).
    """
    if not bandwidth > 0:
        raise ValueError(f'mean_shift_blocks: bandwidth must be > 0, got {bandwidth!r}')
    if max_iter < 0:
        raise ValueError(f'mean_shift_blocks: max_iter must be >= 0, got {max_iter!r}')
    if check_every < 1:
        raise ValueError(f'mean_shift_blocks: check_every must be >= 1, got {check_every!r}')
    points = _as_tensor(block_embeddings, 3, 'mean_shift_blocks', check_finite=False)  # checked in the body
    if points.dtype in (torch.float16, torch.bfloat16):
        points = points.float()
    num_blocks, num_points, _ = points.shape
    labels = torch.zeros(num_blocks, num_points, dtype=torch.int64, device=points.device)
    if num_blocks and num_points:
        with torch.no_grad():
            labels = _mean_shift_all(points, bandwidth, max_iter, max_elements, check_every)
    return labels.numpy() if isinstance(block_embeddings, np.ndarray) else labels


def _mean_shift_all(points: torch.Tensor, bandwidth: float, max_iter: int, max_elements: int | None,
                    check_every: int) -> torch.Tensor:
    """The body of :func:`mean_shift_blocks` for a non-empty (B,N,E) float tensor -> (B,N) int64 labels."""
    num_blocks, num_points, _ = points.shape
    device = points.device
    if not _cpu_strategy(device):
        labels = _mean_shift_device(points, bandwidth, max_iter, max_elements, check_every)
        if labels is not None:
            return labels
    elif not bool(torch.isfinite(points).all()):
        raise ValueError('mean_shift_blocks: embeddings contain NaN or inf')
    distinct, weights, inverse = _distinct_points(points)  # (B,D,E), (B,D), (B,N)
    real = weights > 0
    row_block, _ = torch.nonzero(real, as_tuple=True)
    seeds, seed_block = _batched_bin_seeds(distinct[real], row_block, num_blocks, num_points, bandwidth)
    seeds_per_block = torch.bincount(seed_block, minlength=num_blocks)
    distinct_per_block, seeds_per_block = torch.stack([real.sum(1), seeds_per_block]).cpu().numpy()  # one sync
    budget = default_max_elements(device) if max_elements is None else int(max_elements)
    pass_elements = min(budget, _CPU_PASS_ELEMENTS) if _cpu_strategy(device) else budget
    # 1. Climb all seeds, in chunks of blocks of similar size.
    found = []
    for chunk in _plan_chunks(distinct_per_block, seeds_per_block, budget):
        blocks = torch.from_numpy(chunk).to(device)
        width = int(distinct_per_block[chunk].max())
        rows, chunk_block = _rows_of_blocks(seed_block, blocks, num_blocks)
        centres, intensity, block = _climb_chunk(distinct[blocks, :width], weights[blocks, :width], seeds[rows],
                                                 chunk_block, bandwidth, max_iter, check_every, pass_elements)
        found.append((centres, intensity, blocks[block]))
    centres, intensity, block = (torch.cat(parts) for parts in zip(*found))
    # 2. Sort each block's centres as sklearn and suppress near duplicates, in groups of blocks with similar
    # numbers of centres (a few blocks find 100+ centres, most a few dozen).
    order = _sklearn_order(centres, intensity, block)
    centres, block = centres[order], block[order]
    centres_per_block = torch.bincount(block, minlength=num_blocks).cpu().numpy()
    kept_centres, kept_block = [], []
    split = _cpu_strategy(device)
    for group in _size_classes(centres_per_block, split):
        blocks = torch.from_numpy(group).to(device)
        rows, group_block = _rows_of_blocks(block, blocks, num_blocks)
        padded_centres, valid = _pad_by_block(centres[rows], group_block, blocks.numel())
        kept = _suppress_batched(padded_centres, valid, bandwidth, check_every)
        kept_centres.append(padded_centres[kept])  # by block, strongest first
        kept_block.append(blocks[torch.nonzero(kept, as_tuple=True)[0]])
    kept_centres, kept_block = torch.cat(kept_centres), torch.cat(kept_block)
    # 3. Every distinct point takes its nearest kept centre, in groups of blocks with similar point counts.
    order = torch.sort(kept_block, stable=True).indices  # by block, each strongest first
    kept_centres, kept_block = kept_centres[order], kept_block[order]
    distinct_labels = torch.zeros(distinct.shape[:2], dtype=torch.int64, device=device)
    for group in _size_classes(distinct_per_block, split):
        blocks = torch.from_numpy(group).to(device)
        rows, group_block = _rows_of_blocks(kept_block, blocks, num_blocks)
        padded_centres, valid = _pad_by_block(kept_centres[rows], group_block, blocks.numel())
        width = int(distinct_per_block[group].max())
        block_points = _BlockPoints(distinct[blocks, :width], weights[blocks, :width], pass_elements)
        distinct_labels[blocks, :width] = _assign_batched(block_points, padded_centres, valid)
    return torch.gather(distinct_labels, 1, inverse)


# ---------------------------------------------------------------------------------------------------------------
# The GPU strategy without per-round host syncs (issue 25): the same computation as `_mean_shift_all` in padded
# per-block layouts, with the host reading one plan per call and the climb's convergence at a few checks.
# ---------------------------------------------------------------------------------------------------------------

FIRST_CHECK = 4  # device climb: first convergence check after FIRST_CHECK * check_every iterations, then doubling


def _padded_bin_seeds(distinct: torch.Tensor, real: torch.Tensor, num_points: int, bandwidth: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_batched_bin_seeds` in the padded layout, without host reads: distinct points (B,W,E) with ``real``
    (B,W) -> (seeds (B,W,E), slot-packed per block, zero padding; seeds per block (B,); a 0-d flag: the bins'
    mixed-radix keys fit int64, i.e. the values are exact; when it is False the caller takes the row-wise path).
    Per block the same seeds in the same order: the distinct bins in key order, or the block's points when
    binning reduced nothing (sklearn)."""
    num_blocks, width, dim = distinct.shape
    bins = torch.round(distinct / bandwidth)  # (B,W,E)
    largest = torch.finfo(bins.dtype).max
    low = torch.where(real[..., None], bins, largest).reshape(-1, dim).amin(0)
    span = torch.where(real[..., None], bins, -largest).reshape(-1, dim).amax(0) - low + 1
    exact = torch.prod(span.double()) * num_blocks < 2.0 ** 62
    strides = torch.cumprod(torch.cat([torch.ones_like(span[:1]), span[:-1]]), 0).long()
    never = torch.iinfo(torch.int64).max
    keys = torch.where(real, ((bins - low).long() * strides).sum(-1), never)  # (B,W)
    keys, order = torch.sort(keys, dim=1)
    starts = torch.ones_like(real)
    starts[:, 1:] = keys[:, 1:] != keys[:, :-1]
    starts &= keys != never
    distinct_bins = starts.sum(1)  # (B,)
    slot = torch.where(starts, torch.cumsum(starts, 1) - 1, width)  # (B,W) padding -> a dump slot
    sorted_bins = torch.gather(bins, 1, order[..., None].expand(-1, -1, dim))
    seeds = bins.new_zeros(num_blocks, width + 1, dim).scatter_(1, slot[..., None].expand(-1, -1, dim),
                                                                sorted_bins)[:, :width] * bandwidth
    from_points = distinct_bins == num_points  # (B,) binning reduced nothing: seed from the points
    seeds = torch.where(from_points[:, None, None], distinct, seeds)
    return seeds, torch.where(from_points, real.sum(1), distinct_bins), exact


def _climb_fixed(block_points: _BlockPoints, seeds: torch.Tensor, valid: torch.Tensor, bandwidth: float,
                 max_iter: int, check_every: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`_climb_blocks` with walkers at a fixed padded width: seeds (b,S,E), ``valid`` (b,S) -> (centres
    (b,S,E), intensity (b,S) int64, 0 = not found; found centres per block (b,) on the host).

    Every seed stops on its own iteration exactly as there, recorded with ``torch.where``; no walkers are merged
    or repacked. The host looks after FIRST_CHECK * check_every iterations, then at twice as many each time (one
    read of the active and found counts per block: the only syncs) and drops the blocks whose seeds all stopped.
    """
    radius_sq, stop_sq = bandwidth * bandwidth, (1e-3 * bandwidth) ** 2
    num_blocks, _, dim = seeds.shape
    device = seeds.device
    out_centres, out_intensity = seeds.clone(), torch.zeros(valid.shape, dtype=torch.int64, device=device)
    found = np.zeros(num_blocks, dtype=np.int64)
    rows = torch.arange(num_blocks, device=device)  # the blocks still climbing
    means, active, points = seeds, valid, block_points
    centres, intensity = out_centres.clone(), out_intensity.clone()
    iteration, check = 0, FIRST_CHECK * check_every
    host_rows = np.arange(num_blocks)
    while True:
        for _ in range(min(check, max_iter + 1) - iteration):
            sums = points.windows(means, radius_sq)  # (r,S,E+1)
            window_counts = sums[..., dim]
            new_means = sums[..., :dim] / window_counts.clamp_min(1)[..., None]
            empty = window_counts == 0
            finish = active
            if iteration < max_iter:
                finish = finish & (empty | (((new_means - means) ** 2).sum(-1) <= stop_sq))
            centres = torch.where((finish & ~empty)[..., None], new_means, centres)
            intensity = torch.where(finish, window_counts.round().long(), intensity)  # 0 if empty
            active = active & ~finish
            means = torch.where(active[..., None], new_means, means)
            iteration += 1
        still, found_now = read_host(active.sum(1), (intensity > 0).sum(1))  # the check's one sync
        found[host_rows] = found_now
        out_centres[rows], out_intensity[rows] = centres, intensity
        moving = still > 0
        if iteration > max_iter or not moving.any():
            break
        if not moving.all():  # drop the finished blocks (their results are stored)
            keep = compact(active.any(1), int(moving.sum()))
            rows, host_rows = rows[keep], host_rows[moving]
            means, active, centres, intensity = means[keep], active[keep], centres[keep], intensity[keep]
            points = points.subset(keep)
        check *= 2
    return out_centres, out_intensity, found


def _sorted_centres(centres: torch.Tensor, intensity: torch.Tensor, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block (row) sklearn's order of :func:`_sklearn_order`, found centres (intensity > 0) first: (B,S,E),
    (B,S) -> the first ``width`` slots (B,width,E) and their mask of found centres (B,width)."""
    num_blocks, num_slots, dim = centres.shape
    order = torch.arange(num_slots, device=centres.device).expand(num_blocks, -1)
    for column in range(dim - 1, -1, -1):
        key = torch.gather(centres[..., column], 1, order)
        order = torch.gather(order, 1, torch.sort(key, dim=1, descending=True, stable=True).indices)
    key = torch.gather(intensity, 1, order)
    order = torch.gather(order, 1, torch.sort(key, dim=1, descending=True, stable=True).indices)[:, :width]
    return (torch.gather(centres, 1, order[..., None].expand(-1, -1, dim)),
            torch.gather(intensity, 1, order) > 0)


def _mean_shift_device(points: torch.Tensor, bandwidth: float, max_iter: int, max_elements: int | None,
                       check_every: int) -> torch.Tensor | None:
    """:func:`_mean_shift_all` for the GPU strategy with a handful of host syncs: (B,N,E) -> (B,N) int64 labels,
    or None when the bins do not fit int64 keys (the caller's row-wise path then runs).

    The same steps as there, on padded per-block tensors: distinct points and bin seeds are computed at full
    width; one host read brings the distinct points and seeds per block (the chunk plan, as `_plan_chunks`) and
    the NaN check; each chunk climbs at a fixed padded width (:func:`_climb_fixed`: one sync per convergence
    check); centres are sorted per block, suppressed in a host-known number of steps and assigned in one pass.
    """
    num_blocks, num_points, dim = points.shape
    device = points.device
    distinct, weights, inverse = _distinct_points(points, width=num_points)  # (B,N,E), (B,N), (B,N)
    real = weights > 0
    seeds, seed_counts, exact = _padded_bin_seeds(distinct, real, num_points, bandwidth)
    distinct_per_block, seeds_per_block, (exact, finite) = read_host(
        real.sum(1), seed_counts, torch.stack([exact, torch.isfinite(points).all()]))  # the call's plan
    if not finite:
        raise ValueError('mean_shift_blocks: embeddings contain NaN or inf')
    if not exact:
        return None
    budget = default_max_elements(device) if max_elements is None else int(max_elements)
    parts = []  # (blocks (b,) on the device, their rows on the host, centres (b,S,E), intensity (b,S), found (b,))
    for chunk in _plan_chunks(distinct_per_block, seeds_per_block, budget):
        blocks = to_device(chunk, device)
        width, num_seeds = int(distinct_per_block[chunk].max()), int(seeds_per_block[chunk].max())
        block_points = _BlockPoints(distinct[blocks, :width], weights[blocks, :width], budget)
        chunk_seeds = seeds[blocks, :num_seeds]
        valid = torch.arange(num_seeds, device=device)[None, :] < seed_counts[blocks][:, None]
        centres, intensity, found = _climb_fixed(block_points, chunk_seeds, valid, bandwidth, max_iter,
                                                 check_every)
        parts.append((blocks, chunk, centres, intensity, found))
        missing = np.flatnonzero(found == 0)  # every window empty: seed from the block's points
        if missing.size:
            rows = to_device(missing, device)
            retry = _climb_fixed(block_points.subset(rows), distinct[blocks[rows], :width],
                                 weights[blocks[rows], :width] > 0, bandwidth, max_iter, check_every)
            parts.append((blocks[rows], chunk[missing], *retry))
    # Found centres of every block in one padded tensor (a retry overwrites its block's empty row).
    num_slots = max(part[2].shape[1] for part in parts)
    all_centres = points.new_zeros(num_blocks, num_slots, dim)
    all_intensity = torch.zeros(num_blocks, num_slots, dtype=torch.int64, device=device)
    found_per_block = np.zeros(num_blocks, dtype=np.int64)
    for blocks, host_blocks, centres, intensity, found in parts:
        all_centres[blocks, :centres.shape[1]] = centres
        all_intensity[blocks] = 0
        all_intensity[blocks, :intensity.shape[1]] = intensity
        found_per_block[host_blocks] = found
    most = int(found_per_block.max())
    centres, valid = _sorted_centres(all_centres, all_intensity, most)  # (B,K,E) strongest first
    kept = _suppress_batched(centres, valid, bandwidth, check_every, steps=most)
    width = int(distinct_per_block.max())
    slot = _assign_batched(_BlockPoints(distinct[:, :width], weights[:, :width], budget), centres, kept)
    rank = torch.cumsum(kept, 1) - 1  # label = rank of the nearest kept centre, 0 = the strongest
    return torch.gather(torch.gather(rank, 1, slot), 1, inverse)
