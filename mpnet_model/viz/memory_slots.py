"""Memory addressing pictures (paper Fig. 3): which points read which memory slot.

Input weights are the addressing weights of `PrototypeMemory.read` / `MPNet.forward(...)['ins_weights']`,
reshaped per scene to (N, M) (softmax over the M slots for every point).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps

from mpnet_model.viz.render import axes_box_px, check_xyz, new_figure, perspective_view, save_figure, select_points

# Pseudo colour: dark (unused) -> bright yellow (strongly addressed); readable on white.
SLOT_COLORMAP = 'inferno'


def _check_weights(weights, num_points: int | None = None, name: str = 'weights') -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] == 0:
        raise ValueError(f'{name} must have shape (N, M) with M >= 1 slots, got {weights.shape}')
    if num_points is not None and len(weights) != num_points:
        raise ValueError(f'{name} has {len(weights)} rows but the scene has {num_points} points')
    if not np.isfinite(weights).all():
        raise ValueError(f'{name} contains NaN or inf values')
    return weights


def top_slots(weights, k: int, by: str = 'mean') -> np.ndarray:
    """The `k` most used memory slots of (N, M) addressing weights, most used first -> (k,) int64.

    by='mean':   highest mean addressing weight over all points (how much of the scene reads the slot);
    by='argmax': most points whose largest weight falls on the slot (how many points it "wins").
    Ties keep the lower slot index first.
    """
    weights = _check_weights(weights)
    num_slots = weights.shape[1]
    if not 1 <= k <= num_slots:
        raise ValueError(f'k must be in [1, {num_slots}] (number of slots), got {k}')
    if by == 'mean':
        score = weights.mean(axis=0)                                             # (M,)
    elif by == 'argmax':
        score = np.bincount(weights.argmax(axis=1), minlength=num_slots).astype(np.float64)  # (M,)
    else:
        raise ValueError(f"by must be 'mean' or 'argmax', got {by!r}")
    return np.argsort(-score, kind='stable')[:k].astype(np.int64)


def render_memory_slots(xyz_list, weights_list, slot_ids, path, scene_names=None, title: str = '',
                        max_points: int = 100_000, height_fraction: float | None = 0.9,
                        point_size: int | None = None, dpi: int = 110) -> Path:
    """Grid PNG: columns = scenes, rows = memory slots; each point coloured by its weight for that slot.

    xyz_list: list of (N_s,3); weights_list: list of (N_s,M); slot_ids: slot indices to show (e.g. from
    `top_slots`). Each row is normalised to [0, 1] by that slot's min / max over all shown scenes, so the
    colours compare the scenes for one slot. Scenes are shown in perspective (nearest surface visible).
    """
    if len(xyz_list) == 0 or len(xyz_list) != len(weights_list):
        raise ValueError(f'need the same non-zero number of scenes in xyz_list ({len(xyz_list)}) and '
                         f'weights_list ({len(weights_list)})')
    slot_ids = np.asarray(slot_ids, dtype=np.int64).reshape(-1)
    if len(slot_ids) == 0:
        raise ValueError('slot_ids is empty: no memory slot to show')
    scene_names = list(scene_names) if scene_names is not None else [f'scene {i}' for i in range(len(xyz_list))]
    if len(scene_names) != len(xyz_list):
        raise ValueError(f'{len(scene_names)} scene_names for {len(xyz_list)} scenes')

    scenes = []                                                  # (xyz (n,3), slot weights (n,S)) per scene
    for i, (xyz, weights) in enumerate(zip(xyz_list, weights_list)):
        xyz = check_xyz(xyz)
        weights = _check_weights(weights, len(xyz), name=f'weights_list[{i}]')
        if slot_ids.min() < 0 or slot_ids.max() >= weights.shape[1]:
            raise ValueError(f'slot_ids must be in [0, {weights.shape[1] - 1}], got {slot_ids.tolist()}')
        keep = select_points(xyz, max_points, height_fraction)
        scenes.append((xyz[keep], weights[keep][:, slot_ids]))
    all_slot_weights = np.concatenate([w for _, w in scenes], axis=0)       # (sum n, S)
    lo, hi = all_slot_weights.min(axis=0), all_slot_weights.max(axis=0)     # (S,) per-slot range
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    n_rows, n_cols = len(slot_ids), len(scenes)
    fig = new_figure(3.2 * n_cols + 0.6, 2.6 * n_rows + (0.7 if title else 0.4), dpi=dpi)
    grid = [[fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1) for c in range(n_cols)] for r in range(n_rows)]
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.02, top=1.0 - (0.7 if title else 0.4) / fig.get_figheight(),
                        wspace=0.03, hspace=0.06)
    cmap = colormaps[SLOT_COLORMAP]
    for c, (xyz, slot_weights) in enumerate(scenes):
        normalised = (slot_weights - lo) / span                               # (n,S) in [0,1]
        view = perspective_view(xyz, axes_box_px(grid[0][c]), point_size)     # one projection per scene
        for r in range(n_rows):
            ax = grid[r][c]
            view.show(ax, cmap(normalised[:, r])[:, :3])
            if r == 0:
                ax.set_title(scene_names[c], fontsize=9)
            if c == 0:
                ax.text(-0.04, 0.5, f'slot {slot_ids[r]}', transform=ax.transAxes, rotation=90,
                        ha='right', va='center', fontsize=9)
    colourbar_ax = fig.add_axes((0.92, 0.2, 0.015, 0.6))
    colourbar_ax.imshow(np.linspace(1, 0, 256)[:, None], aspect='auto', cmap=cmap, extent=(0, 1, 0, 1))
    colourbar_ax.set_xticks([])
    colourbar_ax.set_yticks([0, 1], ['min', 'max'], fontsize=8)
    colourbar_ax.yaxis.tick_right()
    colourbar_ax.set_title('weight\n(per slot)', fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
