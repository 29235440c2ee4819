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


def _as_tensor(embeddings: torch.Tensor | np.ndarray, ndim: int = 2, caller: str = 'mean_shift') -> torch.Tensor:
    """Validate (N,E) (``ndim`` 2) or (B,N,E) (``ndim`` 3) embeddings -> a float tensor on the input's device."""
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
    if points.numel() and not bool(torch.isfinite(points).all()):
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


def default_max_elements(device: torch.device) -> int:
    """Elements of one (blocks x seeds x points) window tensor per chunk of blocks: the memory bound.

    CPU: 2^23 (32 MiB in float32; larger chunks only add cache misses). CUDA: an eighth of the free device
    memory in float32 elements (the window tensor, its 0/1 copy and the gathered points stay well inside it),
    clipped to [2^22, 2^28].
    """
    if device.type == 'cuda':
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(min(max(free_bytes // 32, 1 << 22), 1 << 28))
    return 1 << 23


def _batched_bin_seeds(points: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bin_seeds` of every block at once: (B,N,E) -> (seeds (S,E), block of each seed (S,)), by block.

    One sort of integer bin keys over the whole batch (the block index is the most significant digit). A block
    whose every point has its own bin is seeded from its points, as sklearn (and :func:`bin_seeds`) do.
    """
    num_blocks, num_points, dim = points.shape
    device = points.device
    bins = torch.round(points / bandwidth).reshape(-1, dim)  # (B*N,E)
    point_block = torch.arange(num_blocks, device=device).repeat_interleave(num_points)  # (B*N,)
    low = bins.amin(0)
    span = bins.amax(0) - low + 1
    block_span = float(torch.prod(span.double()))
    if block_span * num_blocks < 2.0 ** 62:  # (block, bin) as one mixed-radix int64 key: exact and fast
        strides = torch.cumprod(torch.cat([torch.ones_like(span[:1]), span[:-1]]), 0).long()
        keys = ((bins - low).long() * strides).sum(1) + point_block * int(block_span)
        keys, order = torch.sort(keys)
        starts = torch.ones_like(keys, dtype=torch.bool)
        starts[1:] = keys[1:] != keys[:-1]
        unique_bins, unique_block = bins[order[starts]], point_block[order[starts]]
    else:  # embeddings spread over > 2^62 bins: exact but slower row-wise unique
        rows = torch.cat([point_block[:, None].double(), bins.double()], 1)
        unique_rows = torch.unique(rows, dim=0)
        unique_bins, unique_block = unique_rows[:, 1:].to(points.dtype), unique_rows[:, 0].long()
    bins_per_block = torch.bincount(unique_block, minlength=num_blocks)  # (B,)
    from_points = bins_per_block == num_points  # (B,) binning reduced nothing: seed from the points
    keep = ~from_points[unique_block]
    seeds = torch.cat([unique_bins[keep] * bandwidth, points[from_points].reshape(-1, dim)])
    seed_block = torch.cat([unique_block[keep], point_block.reshape(num_blocks, num_points)[from_points].reshape(-1)])
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
    """The points of a chunk of blocks in the two layouts the window matmuls use (see :func:`_window_sums`)."""

    def __init__(self, points: torch.Tensor | None, *, aug: torch.Tensor | None = None,
                 ext_t: torch.Tensor | None = None):  # points (b,N,E)
        if points is not None:
            ones = torch.ones_like(points[..., :1])
            aug = torch.cat([points, ones], -1)
            ext_t = torch.cat([points, ones, (points * points).sum(-1, keepdim=True)], -1).transpose(1, 2)
        self.aug = aug  # (b,N,E+1): [x, 1]
        self.ext_t = ext_t.contiguous()  # (b,E+2,N): [x, 1, |x|^2]^T
        self.dim = self.aug.shape[-1] - 1

    def subset(self, rows: torch.Tensor) -> _BlockPoints:
        """The blocks ``rows`` (r,) only (one gather, done when the set of blocks changes)."""
        return _BlockPoints(None, aug=self.aug[rows], ext_t=self.ext_t[rows])

    def windows(self, queries: torch.Tensor, radius_sq: float) -> torch.Tensor:
        """Flat-kernel windows of queries (b,Q,E) -> (b,Q,E+1) = [sum of the points within radius, their count].

        As :func:`_window_sums`: |q-x|^2 - r^2 is one batched matmul, the comparison writes the 0/1 weights in
        place, and a second batched matmul with [X, 1] gives sums and counts together.
        """
        queries_ext = torch.cat([-2.0 * queries, (queries * queries).sum(-1, keepdim=True) - radius_sq,
                                 torch.ones_like(queries[..., :1])], -1)  # (b,Q,E+2)
        weights = torch.bmm(queries_ext, self.ext_t)  # (b,Q,N) = |q - x|^2 - r^2
        torch.le(weights, 0.0, out=weights)  # 1.0 inside the window (inclusive, as sklearn's radius_neighbors)
        return torch.bmm(weights, self.aug)


def _compact_walkers(means: torch.Tensor, active: torch.Tensor, rows: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the still-moving walkers, one per distinct mean of a block (walkers with bitwise-equal means follow
    the same path from then on, as in :func:`_climb`) and repack them: -> (means (r',W',E), valid, rows (r',))."""
    slot_row, _ = torch.nonzero(active, as_tuple=True)
    moving = means[active]  # (A,E), grouped by row
    block = rows[slot_row]
    order = torch.sort(moving[:, 0], stable=True).indices
    order = order[torch.sort(block[order], stable=True).indices]  # by block, then first coordinate
    moving, block = moving[order], block[order]
    starts = torch.ones_like(block, dtype=torch.bool)
    starts[1:] = (block[1:] != block[:-1]) | (moving[1:] != moving[:-1]).any(1)
    moving, block = moving[starts], block[starts]
    new_rows, row_of_walker = torch.unique_consecutive(block, return_inverse=True)
    padded, valid = _pad_by_block(moving, row_of_walker, new_rows.numel())
    return padded, valid, new_rows


def _climb_blocks(block_points: _BlockPoints, seeds: torch.Tensor, valid: torch.Tensor, bandwidth: float,
                  max_iter: int, check_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat-kernel mean shift of padded seeds (b,S,E) (``valid`` (b,S) marks real ones) in their blocks.

    Every seed stops on its own iteration exactly as in :func:`_climb` (shift <= 1e-3 bandwidth, an empty
    window, or ``max_iter``), recorded on the device with masks; the host looks every ``check_every``
    iterations, collects the finished seeds and repacks the moving ones. Returns the seeds whose last window
    held points: (centres (H,E), intensity (H,) int64, block (H,)), in no particular order.
    """
    radius_sq, stop_thresh = bandwidth * bandwidth, 1e-3 * bandwidth
    dim = seeds.shape[-1]
    rows = torch.arange(seeds.shape[0], device=seeds.device)  # (r,) block of each padded row
    row_points = block_points
    means, active = seeds, valid
    found_centres, found_intensity, found_block = [], [], []
    iteration = 0
    while True:
        centres = means.clone()
        intensity = torch.zeros(active.shape, dtype=torch.int64, device=means.device)
        for _ in range(check_every):
            sums = row_points.windows(means, radius_sq)  # (r,W,E+1)
            counts = sums[..., dim]
            new_means = sums[..., :dim] / counts.clamp_min(1)[..., None]
            empty = counts == 0
            if iteration == max_iter:
                finish = active
            else:
                finish = active & (empty | (torch.linalg.vector_norm(new_means - means, dim=-1) <= stop_thresh))
            centres = torch.where((finish & ~empty)[..., None], new_means, centres)
            intensity = torch.where(finish, counts.round().long(), intensity)  # 0 for an empty window: dropped
            active = active & ~finish
            means = torch.where(active[..., None], new_means, means)
            iteration += 1
            if iteration > max_iter:
                break
        found = intensity > 0  # finished in this round with a non-empty window
        found_centres.append(centres[found])
        found_intensity.append(intensity[found])
        found_block.append(rows[:, None].expand_as(found)[found])
        if iteration > max_iter or not bool(active.any()):  # the one host sync of the round
            break
        means, active, rows = _compact_walkers(means, active, rows)
        row_points = block_points.subset(rows)
    return torch.cat(found_centres), torch.cat(found_intensity), torch.cat(found_block)


def _sklearn_order(centres: torch.Tensor, intensity: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Order grouping the centres by block, each block in sklearn's (intensity, centre) descending order."""
    order = torch.arange(centres.shape[0], device=centres.device)
    for column in range(centres.shape[1] - 1, -1, -1):
        order = order[torch.sort(centres[order, column], descending=True, stable=True).indices]
    order = order[torch.sort(intensity[order], descending=True, stable=True).indices]
    return order[torch.sort(block[order], stable=True).indices]


def _suppress_batched(centres: torch.Tensor, valid: torch.Tensor, bandwidth: float, check_every: int
                      ) -> torch.Tensor:
    """Greedy suppression of :func:`_suppress_near_duplicates` in every block at once.

    centres (b,K,E) strongest first, ``valid`` (b,K) -> (b,K) mask of the kept centres. Step t keeps the
    first still-alive centre of each block and clears its neighbours; steps = the most centres a block keeps.
    """
    sq = (centres * centres).sum(-1)
    near = (sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(centres, centres.transpose(1, 2))
            <= bandwidth * bandwidth)  # (b,K,K)
    alive, kept = valid.clone(), torch.zeros_like(valid)
    slots = torch.arange(valid.shape[1], device=valid.device)
    rows = torch.arange(valid.shape[0], device=valid.device)
    while bool(alive.any()):
        for _ in range(check_every):
            first = alive.to(torch.uint8).argmax(1)  # (b,) first alive centre (0 when none is)
            pick = (slots[None, :] == first[:, None]) & alive.any(1, keepdim=True)  # (b,K) one-hot or nothing
            kept |= pick
            alive &= ~(pick | (near[rows, first] & pick.any(1, keepdim=True)))
    return kept


def _assign_batched(block_points: _BlockPoints, centres: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Nearest kept centre of every point: centres (b,K,E), kept (b,K) -> (b,N) rank of the centre among the
    kept ones (0 = strongest), as :func:`_nearest_centre` over the kept centres."""
    dim = block_points.dim
    points = block_points.aug[..., :dim]
    points_sq = block_points.ext_t[:, dim + 1, :]  # (b,N)
    centres_sq = (centres * centres).sum(-1)  # (b,K)
    distances = (points_sq[:, :, None] + centres_sq[:, None, :]
                 - 2.0 * torch.bmm(points, centres.transpose(1, 2))).clamp_min_(0.0)  # (b,N,K)
    distances.masked_fill_(~kept[:, None, :], float('inf'))
    rank = torch.cumsum(kept, 1) - 1  # (b,K)
    return torch.gather(rank, 1, distances.argmin(-1))


def _mean_shift_chunk(points: torch.Tensor, seeds: torch.Tensor, seed_block: torch.Tensor, bandwidth: float,
                      max_iter: int, check_every: int) -> torch.Tensor:
    """All steps for one chunk: points (b,N,E), seeds (S,E) of blocks ``seed_block`` (S,) -> labels (b,N)."""
    num_blocks = points.shape[0]
    block_points = _BlockPoints(points)
    padded, valid = _pad_by_block(seeds, seed_block, num_blocks)
    centres, intensity, block = _climb_blocks(block_points, padded, valid, bandwidth, max_iter, check_every)
    missing = torch.bincount(block, minlength=num_blocks) == 0  # (b,) every window empty: seed from the points
    if bool(missing.any()):
        rows = torch.nonzero(missing).squeeze(1)
        retry_points = points[rows]
        retry = _climb_blocks(_BlockPoints(retry_points), retry_points,
                              torch.ones(retry_points.shape[:2], dtype=torch.bool, device=points.device),
                              bandwidth, max_iter, check_every)
        centres, intensity = torch.cat([centres, retry[0]]), torch.cat([intensity, retry[1]])
        block = torch.cat([block, rows[retry[2]]])
    order = _sklearn_order(centres, intensity, block)
    padded_centres, valid = _pad_by_block(centres[order], block[order], num_blocks)
    kept = _suppress_batched(padded_centres, valid, bandwidth, check_every)
    return _assign_batched(block_points, padded_centres, kept)


def _plan_chunks(seeds_per_block: np.ndarray, num_points: int, max_elements: int) -> list[np.ndarray]:
    """Blocks sorted by seed count, cut into chunks whose padded window tensor (blocks x most seeds x points)
    stays within ``max_elements`` (a block alone may exceed it): -> list of block index arrays."""
    order = np.argsort(seeds_per_block, kind='stable')
    chunks, start = [], 0
    for stop in range(1, order.size + 1):  # chunk = order[start:stop]; its widest block is the last one
        if stop == order.size or (stop + 1 - start) * seeds_per_block[order[stop]] * num_points > max_elements:
            chunks.append(order[start:stop])
            start = stop
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

    How: seeds of all blocks are padded to (blocks, seeds, E) with masks; every iteration is two batched
    matmuls for the flat-kernel windows of all seeds; each seed stops on its own iteration, recorded on the
    device, and the host checks for convergence every ``check_every`` iterations (then drops finished seeds
    and merges identical ones). Blocks are processed in chunks whose window tensor holds at most
    ``max_elements`` elements (default :func:`default_max_elements` of the device). Half precision input is
    computed in float32 (squared distances by expansion need it).
    """
    if not bandwidth > 0:
        raise ValueError(f'mean_shift_blocks: bandwidth must be > 0, got {bandwidth!r}')
    if max_iter < 0:
        raise ValueError(f'mean_shift_blocks: max_iter must be >= 0, got {max_iter!r}')
    if check_every < 1:
        raise ValueError(f'mean_shift_blocks: check_every must be >= 1, got {check_every!r}')
    points = _as_tensor(block_embeddings, 3, 'mean_shift_blocks')
    if points.dtype in (torch.float16, torch.bfloat16):
        points = points.float()
    num_blocks, num_points, _ = points.shape
    labels = torch.zeros(num_blocks, num_points, dtype=torch.int64, device=points.device)
    if num_blocks and num_points:
        with torch.no_grad():
            seeds, seed_block = _batched_bin_seeds(points, bandwidth)
            seeds_per_block = torch.bincount(seed_block, minlength=num_blocks).cpu().numpy()
            budget = default_max_elements(points.device) if max_elements is None else int(max_elements)
            position = torch.full((num_blocks,), -1, dtype=torch.int64, device=points.device)
            for chunk in _plan_chunks(seeds_per_block, num_points, budget):
                blocks = torch.from_numpy(chunk).to(points.device)
                position.fill_(-1)
                position[blocks] = torch.arange(blocks.numel(), device=points.device)
                chunk_block = position[seed_block]  # (S,) the seed's block within the chunk, -1 if elsewhere
                in_chunk = chunk_block >= 0
                chunk_block = chunk_block[in_chunk]
                order = torch.sort(chunk_block, stable=True).indices
                labels[blocks] = _mean_shift_chunk(points[blocks], seeds[in_chunk][order], chunk_block[order],
                                                   bandwidth, max_iter, check_every)
    return labels.numpy() if isinstance(block_embeddings, np.ndarray) else labels
