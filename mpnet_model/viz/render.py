"""Point-cloud pictures as PNG: a top view plus a perspective view, coloured by RGB, class or instance.

Uses `matplotlib.figure.Figure` with the Agg canvas directly (no pyplot, no global backend switch), so importing
this module never changes how other code plots. Every PNG is written atomically (temp file + os.replace).

Views are rasterised here with numpy (projection + z-buffer of small point splats) and shown with `imshow`:
drawing 200k individual markers with Agg / mplot3d takes ~5 s per panel on a slow CPU, the z-buffer ~0.2 s,
and it is computed once per view and re-painted for every colouring (class, instance, memory slot...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mpnet_model.data.classes import (
    IGNORE_LABEL,
    UNLABELLED_GREY,
    class_colour_table,
    instance_colour_table,
    palette,
)
from mpnet_model.io.atomic import atomic_write

# Viewing angles (degrees) of the perspective panel: looking down into the room from a corner.
PERSPECTIVE_ELEV = 40.0
PERSPECTIVE_AZIM = -60.0


def new_figure(width_in: float, height_in: float, dpi: int = 120) -> Figure:
    """A pyplot-free figure bound to an Agg canvas (safe in threads and headless processes)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor='white')
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write `fig` as PNG to `path` atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    with atomic_write(path, suffix='.tmp.png') as stream:
        fig.savefig(stream, format='png', dpi=dpi or fig.dpi, facecolor=fig.get_facecolor())
    return path


def subsample_indices(num_points: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted, reproducible random subset of `max_points` indices (all indices when small enough).

    Random rather than strided so block-ordered clouds are not aliased into stripes.
    """
    if max_points <= 0:
        raise ValueError(f'max_points must be positive, got {max_points}')
    if num_points <= max_points:
        return np.arange(num_points)
    return np.sort(np.random.default_rng(seed).choice(num_points, size=max_points, replace=False))


def check_xyz(xyz) -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f'xyz must have shape (N, 3), got {xyz.shape}')
    if len(xyz) == 0:
        raise ValueError('xyz is empty: nothing to render')
    if not np.isfinite(xyz).all():
        raise ValueError('xyz contains NaN or inf values')
    return xyz


def _colours_to_float(colours, num_points: int) -> np.ndarray:
    """(N,3) uint8 0-255 or float 0-1 -> (N,3) float 0-1."""
    colours = np.asarray(colours)
    if colours.shape != (num_points, 3):
        raise ValueError(f'colours must have shape ({num_points}, 3) to match xyz, got {colours.shape}')
    if colours.dtype == np.uint8:
        return colours.astype(np.float64) / 255.0
    colours = colours.astype(np.float64)
    if colours.size and (colours.min() < 0.0 or colours.max() > 1.0):
        raise ValueError(f'float colours must lie in [0, 1] (pass uint8 for 0-255), got range '
                         f'[{colours.min():.3g}, {colours.max():.3g}]')
    return colours


def class_colours(labels, num_classes: int) -> np.ndarray:
    """(N,) class ids -> (N,3) uint8 colours from `palette(num_classes)`; -1 (unlabelled) -> grey."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f'labels must have shape (N,), got {labels.shape}')
    labels = labels.astype(np.int64)
    bad = (labels < IGNORE_LABEL) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f'class labels must be in [-1, {num_classes - 1}], found {np.unique(labels[bad])[:10]}')
    # Grey sits at index C of the table, so -1 maps to it via a shifted index.
    return class_colour_table(num_classes)[np.where(labels == IGNORE_LABEL, num_classes, labels)]


def instance_colours(instances) -> np.ndarray:
    """(N,) instance ids -> (N,3) uint8, the same colour for the same id in every call (and in RViz); -1 -> grey."""
    instances = np.asarray(instances)
    if instances.ndim != 1:
        raise ValueError(f'instances must have shape (N,), got {instances.shape}')
    instances = instances.astype(np.int64)
    if (instances < IGNORE_LABEL).any():
        raise ValueError(f'instance ids must be >= -1, found {instances.min()}')
    ids, inverse = np.unique(instances, return_inverse=True)           # colour the K unique ids only
    return instance_colour_table(ids)[inverse.reshape(-1)]


def _height_mask(xyz: np.ndarray, height_fraction: float | None) -> np.ndarray:
    """Points below `height_fraction` of the z range, so an indoor ceiling does not hide the room."""
    if height_fraction is None:
        return np.ones(len(xyz), dtype=bool)
    if not 0.0 < height_fraction <= 1.0:
        raise ValueError(f'height_fraction must be in (0, 1] or None, got {height_fraction}')
    z = xyz[:, 2]
    cut = z.min() + height_fraction * (z.max() - z.min())
    return z <= cut


@dataclass
class RasterView:
    """Which point is visible in which pixel of one view; paint it with any per-point colouring.

    shape (H, W); pixels (P,) flat indices of covered pixels; winners (P,) index of the nearest point there;
    extent (left, right, bottom, top) for `imshow(origin='lower')` in view units (metres for the top view).
    """
    shape: tuple[int, int]
    pixels: np.ndarray
    winners: np.ndarray
    extent: tuple[float, float, float, float]

    def paint(self, rgb: np.ndarray) -> np.ndarray:
        """(N,3) float 0-1 per-point colours -> (H,W,4) float RGBA image, transparent where no point."""
        image = np.zeros((self.shape[0] * self.shape[1], 4), dtype=np.float32)
        image[self.pixels, :3] = rgb[self.winners]
        image[self.pixels, 3] = 1.0
        return image.reshape(self.shape[0], self.shape[1], 4)

    def show(self, ax, rgb: np.ndarray) -> None:
        """Draw the painted view into a 2-D axes without ticks or frame."""
        ax.imshow(self.paint(rgb), extent=self.extent, origin='lower', interpolation='antialiased')
        ax.set_axis_off()


def _splat_offsets(radius: int) -> np.ndarray:
    """(K,2) integer pixel offsets of a disc of `radius` pixels (radius 0 = the pixel itself)."""
    r = np.arange(-radius, radius + 1)
    du, dv = np.meshgrid(r, r, indexing='xy')
    inside = du ** 2 + dv ** 2 <= radius ** 2 + radius  # +radius rounds the disc (r=1 -> 3x3 square)
    return np.stack([du[inside], dv[inside]], axis=1)


def auto_splat_radius(pix: np.ndarray, cell: int = 4, hits_per_pixel: float = 4.0) -> int:
    """Splat radius (px) that closes the gaps of typical surfaces without making them blobby.

    Surface density d (points per pixel) = median point count of the occupied `cell` x `cell` pixel cells
    (the median ignores thin dense walls seen edge-on); choose r so a (2r+1)^2 splat gets ~`hits_per_pixel`.
    """
    cells = pix // cell
    _, counts = np.unique(cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1], return_counts=True)
    density = float(np.median(counts)) / cell ** 2
    return int(np.clip(np.ceil((np.sqrt(hits_per_pixel / density) - 1.0) / 2.0), 0, 6))


def rasterize(uv: np.ndarray, depth: np.ndarray, box_px: tuple[int, int] = (640, 640), radius: int | None = None,
              pad_px: int = 3) -> RasterView:
    """Z-buffer of disc splats: uv (N,2) view-plane coordinates, depth (N,) smaller = closer.

    Scales uv uniformly to fit a (width, height) pixel box (best: the axes' size on the figure, so one
    image pixel = one screen pixel); each pixel keeps its nearest point. radius None = from density.
    """
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    box = np.asarray(box_px, dtype=np.float64)
    if box.shape != (2,) or (box < 2 * pad_px + 2).any():
        raise ValueError(f'box_px must be (width, height) of at least {2 * pad_px + 2} pixels, got {box_px}')
    scale = float(((box - 1 - 2 * pad_px) / span).min())                             # px per view unit
    width, height = (np.ceil((hi - lo) * scale).astype(np.int64) + 1 + 2 * pad_px).tolist()
    pix = np.round((uv - lo) * scale).astype(np.int64) + pad_px                     # (N,2) u, v pixel
    if radius is None:
        radius = auto_splat_radius(pix)
    if radius < 0:
        raise ValueError(f'splat radius must be >= 0 pixels, got {radius}')

    offsets = _splat_offsets(int(radius))                                            # (K,2)
    by_depth = np.argsort(depth, kind='stable')                                      # (N,) nearest first
    rank = np.empty(len(uv), dtype=np.int64)
    rank[by_depth] = np.arange(len(uv))                                              # (N,) 0 = nearest
    splat = (pix[:, None, :] + offsets[None, :, :]).reshape(-1, 2)                   # (N*K,2)
    splat_rank = np.repeat(rank, len(offsets))                                       # (N*K,)
    inside = (splat[:, 0] >= 0) & (splat[:, 0] < width) & (splat[:, 1] >= 0) & (splat[:, 1] < height)
    flat = splat[inside, 1] * width + splat[inside, 0]
    # Z-buffer of depth ranks: each pixel keeps the smallest rank (= nearest point) that lands on it.
    zbuffer = np.full(width * height, len(uv), dtype=np.int64)
    np.minimum.at(zbuffer, flat, splat_rank[inside])
    pixels = np.flatnonzero(zbuffer < len(uv))
    extent = (lo[0] - (pad_px + 0.5) / scale, lo[0] + (width - pad_px - 0.5) / scale,
              lo[1] - (pad_px + 0.5) / scale, lo[1] + (height - pad_px - 0.5) / scale)
    return RasterView((height, width), pixels, by_depth[zbuffer[pixels]], extent)


def top_view(xyz: np.ndarray, box_px: tuple[int, int] = (640, 640), radius: int | None = None) -> RasterView:
    """Orthographic view from above: x right, y up, the highest point wins each pixel."""
    return rasterize(xyz[:, :2], -xyz[:, 2], box_px, radius)


def perspective_view(xyz: np.ndarray, box_px: tuple[int, int] = (640, 640), radius: int | None = None,
                     elev: float = PERSPECTIVE_ELEV, azim: float = PERSPECTIVE_AZIM,
                     distance: float = 1.6) -> RasterView:
    """Pinhole camera looking at the cloud's centre from `elev`/`azim` degrees (mplot3d convention),
    `distance` times the bounding-box diagonal away (larger = weaker perspective)."""
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    centre = 0.5 * (lo + hi)
    diagonal = float(max(np.linalg.norm(hi - lo), 1e-6))
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    towards_eye = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    eye = centre + distance * diagonal * towards_eye
    forward = -towards_eye
    up_hint = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.999 else np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up_hint)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = xyz - eye                                                        # (N,3) camera-centred
    depth = rel @ forward                                                  # (N,) > 0 in front of the camera
    uv = np.stack([rel @ right, rel @ up], axis=1) / depth[:, None]        # (N,2) perspective division
    return rasterize(uv, depth, box_px, radius)


def axes_box_px(ax) -> tuple[int, int]:
    """(width, height) in pixels that `ax` occupies on its figure (valid once the layout is set)."""
    fig = ax.get_figure()
    pos = ax.get_position()
    width_in, height_in = fig.get_size_inches()
    return max(int(pos.width * width_in * fig.dpi), 16), max(int(pos.height * height_in * fig.dpi), 16)


def select_points(xyz, max_points: int, height_fraction: float | None) -> np.ndarray:
    """Indices of the points to draw: below the height cut, then a deterministic subset."""
    keep = np.flatnonzero(_height_mask(xyz, height_fraction))
    if len(keep) == 0:
        raise ValueError('no points left after the height cut')
    return keep[subsample_indices(len(keep), max_points)]


def render_views(xyz, colours, path, title: str = '', max_points: int = 200_000, point_size: int | None = None,
                 height_fraction: float | None = 0.9, dpi: int = 120) -> Path:
    """One PNG with a top view (x-y) and a perspective 3-D view of a coloured cloud.

    xyz (N,3); colours (N,3) uint8 0-255 or float 0-1. At most `max_points` points are drawn (same
    deterministic subset every call); `point_size` is the splat radius in pixels (None = by density).
    Points above `height_fraction` of the z range are left out so ceilings do not cover the room
    (None keeps all). Returns the written path.
    """
    xyz = check_xyz(xyz)
    rgb = _colours_to_float(colours, len(xyz))
    keep = select_points(xyz, max_points, height_fraction)
    xyz, rgb = xyz[keep], rgb[keep]

    fig = new_figure(11.0, 5.3 if title else 5.0, dpi=dpi)
    ax_top, ax_persp = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9 if title else 0.94, wspace=0.03)
    top_view(xyz, axes_box_px(ax_top), point_size).show(ax_top, rgb)
    perspective_view(xyz, axes_box_px(ax_persp), point_size).show(ax_persp, rgb)
    ax_top.set_title('top view', fontsize=9)
    ax_persp.set_title('perspective', fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def render_segmentation(xyz, labels, instances, class_names, path, title: str = '', gt_labels=None,
                        gt_instances=None, max_points: int = 200_000, point_size: int | None = None,
                        height_fraction: float | None = 0.9, dpi: int = 110) -> Path:
    """Grid PNG: rows [by class, by instance] x columns [prediction] or [prediction, ground truth].

    Each cell shows a top view and a perspective view; a legend lists the class names that occur. xyz (N,3),
    labels / instances / gt_* (N,) with -1 = none (either gt array may be omitted). All panels draw the same
    deterministic subset of at most `max_points` points; the two projections are computed once.
    """
    xyz = check_xyz(xyz)
    n = len(xyz)
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError('class_names is empty')

    def checked(name, values):
        if values is None:
            return None
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f'{name} must have shape ({n},) to match xyz, got {values.shape}')
        return values.astype(np.int64)

    labels, instances = checked('labels', labels), checked('instances', instances)
    gt_labels, gt_instances = checked('gt_labels', gt_labels), checked('gt_instances', gt_instances)
    if labels is None or instances is None:
        raise ValueError('labels and instances (the prediction) are required')

    keep = select_points(xyz, max_points, height_fraction)
    columns = [('prediction', labels, instances)]
    if gt_labels is not None or gt_instances is not None:
        columns.append(('ground truth', gt_labels, gt_instances))
    rows = [('class', lambda v: class_colours(v, num_classes)), ('instance', instance_colours)]

    n_cols = 2 * len(columns)                                   # each column = top + perspective subplot
    fig = new_figure(3.3 * n_cols, 2 * 3.0 + (0.9 if title else 0.6), dpi=dpi)
    grid = [[fig.add_subplot(2, n_cols, r * n_cols + k + 1) for k in range(n_cols)] for r in range(2)]
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1, top=0.9 if title else 0.95, wspace=0.03, hspace=0.1)
    # Geometry is shared by all panels: project once per view, paint per colouring.
    views = (top_view(xyz[keep], axes_box_px(grid[0][0]), point_size),
             perspective_view(xyz[keep], axes_box_px(grid[0][1]), point_size))
    for r, (row_name, colour_fn) in enumerate(rows):
        for c, (col_name, col_labels, col_instances) in enumerate(columns):
            values = col_labels if row_name == 'class' else col_instances
            axes = grid[r][2 * c:2 * c + 2]
            axes[0].set_title(f'{col_name} - by {row_name}', fontsize=9, loc='left')
            if values is None:
                for ax in axes:
                    ax.set_axis_off()
                axes[0].text(0.5, 0.5, f'no ground-truth {row_name}', ha='center', va='center',
                             transform=axes[0].transAxes, fontsize=9, color='0.4')
                continue
            rgb = colour_fn(values[keep]).astype(np.float32) / 255.0
            for ax, view in zip(axes, views):
                view.show(ax, rgb)

    # Legend: the classes among the drawn points, in class order.
    present = np.unique(np.concatenate([v[keep] for v in (labels, gt_labels) if v is not None]))
    colours = palette(num_classes)
    handles = [Patch(facecolor=np.array(colours[k]) / 255.0, label=class_names[k]) for k in present if k >= 0]
    if (present == IGNORE_LABEL).any():
        handles.append(Patch(facecolor=np.array(UNLABELLED_GREY) / 255.0, label='unlabelled'))
    if handles:
        fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
