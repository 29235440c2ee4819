"""Dirty-block scheduling: which blocks of the fixed-frame block grid must be segmented again.

The grid: blocks of `block_size` (1 m) at `stride` (0.5 m) anchored at the fixed frame's origin, so block (i, j)
covers [i s, i s + B] x [j s, j s + B] in every frame, and the map's voxels keep their blocks. Each block is
made of m x m tiles (m = B / s), the s x s cells (i + a, j + b), a, b < m; a voxel lies in the tile of its
centre.

Changes are counted at the scale of *change cells* (cubes of `change_cell`, 0.25 m by default, a whole fraction
of the tile): a change is a change cell that becomes occupied (its first voxel created) or empty (its last voxel
removed because the frame's rays went through it); evictions are not changes (nothing was observed there). So a
surface seen again from a new viewpoint, which fills in 5 cm voxels between the lidar rings of the last view,
changes nothing until the new points reach space the map had not seen (new area, a moved object): a moving
sensor's cost follows the new area, a static scene costs nothing.

Bookkeeping, per tile: its voxel count, its occupied change cells and a cumulative count of changes. Per block:
the sum of its tiles' change counts and its occupied change cells when it was last segmented. A block is
**dirty** when

    changes now - changes at its last run  >=  max(min_changed, dirty_fraction * change cells at its last run)

and it holds at least `min_points` voxels (a block never segmented: all its change cells are changes). The **run set**
is the dirty blocks plus every block overlapping one of them (offsets |a|, |b| < m: BlockMerging joins an object's
pieces through the blocks that overlap, so they run together); all its blocks are then marked as run. With a
block cap the dirty blocks nearest the sensor go first and the others stay pending for the next frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpnet_model.mapping.table import KeyTable, pack_cells, pack_voxels, unpack_cells

DEFAULT_DIRTY_FRACTION = 0.5
DEFAULT_MIN_CHANGED = 10
DEFAULT_CHANGE_CELL = 0.25


@dataclass
class RunPlan:
    run: np.ndarray          # (R, 2) int64 block cells to segment (dirty + overlapping neighbours)
    dirty: np.ndarray        # (D, 2) int64 the dirty blocks among them
    pending: int = 0         # dirty blocks left for later frames (block cap)


class BlockSchedule:
    def __init__(self, block_size: float = 1.0, stride: float = 0.5, min_points: int = 20,
                 dirty_fraction: float = DEFAULT_DIRTY_FRACTION, min_changed: int = DEFAULT_MIN_CHANGED,
                 change_cell: float = DEFAULT_CHANGE_CELL):
        span = block_size / stride
        if not stride > 0 or abs(span - round(span)) > 1e-6 or round(span) < 1:
            raise ValueError(f'block_size={block_size} must be a whole multiple of stride={stride}')
        if not 0 <= dirty_fraction or min_changed < 1 or min_points < 1:
            raise ValueError(f'dirty_fraction={dirty_fraction} must be >= 0, min_changed={min_changed} and '
                             f'min_points={min_points} >= 1')
        self.block_size, self.stride, self.span = float(block_size), float(stride), int(round(span))
        self.min_points, self.dirty_fraction, self.min_changed = int(min_points), float(dirty_fraction), \
            int(min_changed)
        if not change_cell > 0:
            raise ValueError(f'change_cell={change_cell} must be > 0')
        self.change_cell = float(change_cell)
        self.tiles = KeyTable({'changes': ((), np.int64, 0), 'voxels': ((), np.int64, 0), 'cells': ((), np.int64, 0)})
        self.blocks = KeyTable({'changes_at_run': ((), np.int64, 0), 'cells_at_run': ((), np.int64, 0)})
        self.cells = KeyTable({'voxels': ((), np.int64, 0)})      # change cells: voxels in each
        self._touched = np.zeros(0, np.int64)          # tile keys changed since the last plan
        self._pending = np.zeros(0, np.int64)          # dirty block keys left over by a block cap
        a, b = np.meshgrid(np.arange(self.span), np.arange(self.span), indexing='ij')
        self._tile_offsets = np.stack([a.ravel(), b.ravel()], 1)                         # (m*m, 2)
        reach = np.arange(-(self.span - 1), self.span)
        a, b = np.meshgrid(reach, reach, indexing='ij')
        self._neighbour_offsets = np.stack([a.ravel(), b.ravel()], 1)                   # ((2m-1)^2, 2)

    # --- voxel changes -----------------------------------------------------------------------------------------

    def record(self, added: np.ndarray = (), removed: np.ndarray = (), evicted: np.ndarray = ()) -> None:
        """Centres (K, 3) of the voxels a frame created, removed (seen through) and evicted."""
        added, removed, evicted = (np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in (added, removed, evicted))
        born = self._count_cells(added, +1)
        died = self._count_cells(removed, -1)
        emptied = self._count_cells(evicted, -1)
        changed = np.concatenate([born, died])
        if len(changed):
            keys, counts = np.unique(changed, return_counts=True)
            rows = self.tiles.ensure(keys)
            self.tiles['changes'][rows] += counts
            self._touched = np.union1d(self._touched, keys)
        for tiles, sign in ((born, +1), (died, -1), (emptied, -1)):
            self._add('cells', tiles, sign)
        for centres, sign in ((added, +1), (removed, -1), (evicted, -1)):
            self._add('voxels', self._tiles_of(centres), sign)
        if len(evicted):
            self._forget(np.unique(self._tiles_of(evicted)))

    def _tiles_of(self, centres: np.ndarray) -> np.ndarray:
        return pack_cells(np.floor(centres[:, :2] / self.stride).astype(np.int64))

    def _count_cells(self, centres: np.ndarray, sign: int) -> np.ndarray:
        """Update the change cells' voxel counts; tile keys of the cells that became occupied (sign +1) or empty."""
        if not len(centres):
            return np.zeros(0, np.int64)
        index = np.floor(centres / self.change_cell).astype(np.int64)
        keys, first, counts = np.unique(pack_voxels(index), return_index=True, return_counts=True)
        rows = self.cells.ensure(keys)
        before = self.cells['voxels'][rows].copy()
        self.cells['voxels'][rows] = before + sign * counts
        after = self.cells['voxels'][rows]
        flipped = (before == 0) & (after > 0) if sign > 0 else (before > 0) & (after <= 0)
        gone = np.zeros(len(self.cells), dtype=bool)
        gone[rows[after <= 0]] = True
        centres_of = (index[first[flipped]] + 0.5) * self.change_cell
        self.cells.drop(gone)
        return self._tiles_of(centres_of)

    def _add(self, column: str, tiles: np.ndarray, sign: int) -> None:
        if len(tiles):
            keys, counts = np.unique(tiles, return_counts=True)
            rows = self.tiles.ensure(keys)
            self.tiles[column][rows] += sign * counts

    def _forget(self, tiles: np.ndarray) -> None:
        """Evicted tiles left empty go, with every block that contains them (it is new again if the sensor comes
        back: its change count starts over)."""
        rows, found = self.tiles.find(tiles)
        empty = tiles[found & (self.tiles['voxels'][rows] <= 0)]
        if not len(empty):
            return
        mask = np.zeros(len(self.tiles), dtype=bool)
        mask[self.tiles.find(empty)[0]] = True
        self.tiles.drop(mask)
        blocks = self._cover(empty)
        rows, found = self.blocks.find(blocks)
        mask = np.zeros(len(self.blocks), dtype=bool)
        mask[rows[found]] = True
        self.blocks.drop(mask)
        self._touched = np.setdiff1d(self._touched, empty)

    # --- geometry ----------------------------------------------------------------------------------------------

    def _cover(self, tiles: np.ndarray) -> np.ndarray:
        """Unique keys of the blocks that contain any of the tiles."""
        cells = unpack_cells(tiles)
        return np.unique(pack_cells((cells[:, None, :] - self._tile_offsets[None]).reshape(-1, 2)))

    def block_tiles(self, blocks: np.ndarray) -> np.ndarray:
        """(K, m*m) tile keys of blocks (K,) keys."""
        cells = unpack_cells(blocks)
        return pack_cells((cells[:, None, :] + self._tile_offsets[None]).reshape(-1, 2)).reshape(len(blocks), -1)

    def neighbourhood(self, blocks: np.ndarray) -> np.ndarray:
        """Unique keys of the blocks and of every block overlapping one of them."""
        cells = unpack_cells(blocks)
        return np.unique(pack_cells((cells[:, None, :] + self._neighbour_offsets[None]).reshape(-1, 2)))

    def _sums(self, blocks: np.ndarray, columns: tuple[str, ...] = ('changes', 'voxels')) -> list[np.ndarray]:
        """Tile columns summed over the tiles of each block."""
        tiles = self.block_tiles(blocks)
        return [self.tiles.get(name, tiles.reshape(-1)).reshape(tiles.shape).sum(1) for name in columns]

    # --- planning ----------------------------------------------------------------------------------------------

    def dirty_blocks(self) -> np.ndarray:
        """Keys of the dirty blocks (only blocks over tiles changed since the last plan, or left pending, can be)."""
        candidates = np.union1d(self._cover(self._touched), self._pending) if len(self._touched) \
            else self._pending
        if not len(candidates):
            return candidates
        changes, voxels = self._sums(candidates)
        changes_at_run = self.blocks.get('changes_at_run', candidates)
        cells_at_run = self.blocks.get('cells_at_run', candidates)
        threshold = np.maximum(self.min_changed, self.dirty_fraction * cells_at_run)
        return candidates[(voxels >= self.min_points) & (changes - changes_at_run >= threshold)]

    def plan(self, origin: np.ndarray | None = None, max_blocks: int | None = None) -> RunPlan:
        """The run set for now (see the module docstring); with `max_blocks`, the dirty blocks nearest `origin`
        whose run set fits (at least the nearest dirty block, with its neighbours). Call `mark_run(plan)` once the
        blocks were segmented."""
        dirty = self.dirty_blocks()
        self._touched = np.zeros(0, np.int64)
        pending = np.zeros(0, np.int64)
        run = self._existing(self.neighbourhood(dirty)) if len(dirty) else dirty
        if max_blocks is not None and len(run) > max_blocks and len(dirty):
            centres = (unpack_cells(dirty) * self.stride + self.block_size / 2).astype(np.float64)
            where = np.zeros(2) if origin is None else np.asarray(origin, np.float64)[:2]
            order = np.argsort(np.hypot(*(centres - where).T), kind='stable')
            low, high = 0, len(order)                       # the most dirty blocks whose run set fits
            while low < high:
                middle = (low + high + 1) // 2
                if len(self._existing(self.neighbourhood(dirty[order[:middle]]))) <= max_blocks:
                    low = middle
                else:
                    high = middle - 1
            low = max(low, 1)                   # at least the nearest one, or a small cap would stall the map
            pending, dirty = dirty[order[low:]], np.sort(dirty[order[:low]])
            run = self._existing(self.neighbourhood(dirty)) if len(dirty) else dirty
        self._pending = pending
        return RunPlan(unpack_cells(run), unpack_cells(dirty), len(pending))

    def _existing(self, blocks: np.ndarray) -> np.ndarray:
        return blocks[self._sums(blocks)[1] > 0]

    def mark_run(self, plan: RunPlan) -> None:
        if not len(plan.run):
            return
        keys = pack_cells(plan.run)
        changes, cells = self._sums(keys, ('changes', 'cells'))
        rows = self.blocks.ensure(keys)
        self.blocks['changes_at_run'][rows] = changes
        self.blocks['cells_at_run'][rows] = cells

    def mark_all_run(self) -> None:
        """Every block holding voxels counts as segmented now (a loaded map)."""
        if len(self.tiles):
            blocks = self._existing(self._cover(self.tiles.keys))
            self.mark_run(RunPlan(unpack_cells(blocks), np.zeros((0, 2), np.int64)))
        self._touched = np.zeros(0, np.int64)
        self._pending = np.zeros(0, np.int64)

    def region_tiles(self, run: np.ndarray) -> np.ndarray:
        """Sorted unique tile keys covered by the blocks `run` (R, 2)."""
        return np.unique(self.block_tiles(pack_cells(run)).reshape(-1))

    def num_blocks(self) -> int:
        """Blocks of the grid holding at least `min_points` voxels now."""
        if not len(self.tiles):
            return 0
        blocks = self._cover(self.tiles.keys)
        return int((self._sums(blocks)[1] >= self.min_points).sum())
