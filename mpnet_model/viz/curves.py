"""Training curves from TensorBoard logs (paper Fig. 5), e.g. per-class instance precision with / without memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import lfilter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpnet_model.viz.render import new_figure, save_figure

EVENT_FILE_GLOB = 'events.out.tfevents.*'


def read_scalars(tb_dir, tag_prefix: str = '') -> dict[str, list[tuple[int, float]]]:
    """All scalar series under `tb_dir` whose tag starts with `tag_prefix` -> {tag: [(step, value)] by step}.

    Event files in sub-folders (e.g. from SummaryWriter.add_scalars) are read too; their tags are prefixed by
    the sub-folder path ('sub/tag'). A step logged twice (a resumed run) keeps the last value written.
    """
    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir():
        raise FileNotFoundError(f'TensorBoard log folder not found: {tb_dir}')
    folders = sorted({f.parent for f in tb_dir.rglob(EVENT_FILE_GLOB)})
    if not folders:
        raise FileNotFoundError(f'no TensorBoard event files ({EVENT_FILE_GLOB}) under {tb_dir}')
    series: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={'scalars': 0})  # 0 = keep every value
        accumulator.Reload()
        rel = folder.relative_to(tb_dir).as_posix()
        for tag in accumulator.Tags()['scalars']:
            name = tag if rel == '.' else f'{rel}/{tag}'
            if not name.startswith(tag_prefix):
                continue
            by_step = {int(e.step): float(e.value) for e in accumulator.Scalars(tag)}  # later events win
            series[name] = sorted(by_step.items())
    return series


def smooth(values, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average (weight 0 = raw), started at the first value."""
    values = np.asarray(values, dtype=np.float64)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f'smoothing weight must be in [0, 1), got {weight}')
    if weight == 0.0 or len(values) == 0:
        return values
    # y[n] = (1-w) x[n] + w y[n-1], with y[-1] = x[0]
    smoothed, _ = lfilter([1.0 - weight], [1.0, -weight], values, zi=[weight * values[0]])
    return smoothed


def render_curves(runs: dict, tags, path, title: str = '', smoothing: float = 0.0, ylabel: str = '',
                  dpi: int = 120) -> Path:
    """One panel per tag (e.g. one class), one line per run: runs = {run name: {tag: [(step, value)]}}.

    A run without a tag is simply absent from that panel; a tag no run has is an error (likely a typo).
    """
    tags = list(tags)
    if not runs:
        raise ValueError('runs is empty: nothing to plot')
    if not tags:
        raise ValueError('tags is empty: nothing to plot')
    missing = [tag for tag in tags if not any(tag in series for series in runs.values())]
    if missing:
        known = sorted({tag for series in runs.values() for tag in series})
        raise KeyError(f'tags {missing} not found in any run; known tags: {known[:20]}')

    n_cols = min(len(tags), 3)
    n_rows = int(np.ceil(len(tags) / n_cols))
    fig = new_figure(4.2 * n_cols, 3.2 * n_rows + (0.4 if title else 0.0), dpi=dpi)
    colours = [f'C{i % 10}' for i in range(len(runs))]           # same colour for a run in every panel
    for i, tag in enumerate(tags):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        for colour, (run_name, series) in zip(colours, runs.items()):
            if tag not in series or len(series[tag]) == 0:
                continue
            points = np.asarray(series[tag], dtype=np.float64)                # (T,2) step, value
            ax.plot(points[:, 0], smooth(points[:, 1], smoothing), color=colour, label=run_name, lw=1.6)
            if smoothing > 0:
                ax.plot(points[:, 0], points[:, 1], color=colour, alpha=0.25, lw=0.8)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel('step', fontsize=9)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if i == 0:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
