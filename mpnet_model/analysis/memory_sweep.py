"""Memory size (§4.3 "Memory Size"): train one row for several Mc (memory slots per class, M = Mc x C) and plot
mPrec / mRec against Mc. The paper sees the scores rise with Mc and level off beyond 200 (it uses 150).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpnet_model.analysis import AnalysisConfig
from mpnet_model.analysis.ablation import (
    SUMMARY_COLUMNS,
    _json_safe,
    format_percent,
    markdown_table,
    row_metrics,
    row_runs,
)
from mpnet_model.io.atomic import atomic_write_text
from mpnet_model.train.config import TrainConfig

PLOTTED = (('mPrec', 'instance mPrec'), ('mRec', 'instance mRec'), ('mIoU', 'semantic mIoU'))


def sweep_figure(mem_per_class: list[int], metrics: list[dict[str, tuple[float, float]]], path: Path,
                 title: str) -> Path:
    """Line plot of mPrec / mRec (and mIoU) in % against Mc, with ± std bars when several seeds were run."""
    from mpnet_model.viz.render import new_figure, save_figure

    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.asarray(mem_per_class, dtype=np.float64)
    for key, label in PLOTTED:
        mean = np.array([100 * m[key][0] for m in metrics])                  # (V,)
        std = np.array([100 * m[key][1] for m in metrics])
        ax.errorbar(x, mean, yerr=np.where(np.isnan(std), 0.0, std), marker='o', capsize=3, label=label,
                    ls='--' if key == 'mIoU' else '-')
    ax.set_xscale('log' if x.max() / max(x.min(), 1) >= 8 else 'linear')
    ax.set_xticks(x, [str(int(v)) for v in x])
    ax.minorticks_off()
    ax.set_xlabel('memory slots per class Mc (M = Mc x C)')
    ax.set_ylabel('%')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def run_memory_sweep(base: TrainConfig, acfg: AnalysisConfig, out_dir: str | Path, progress: bool = True
                     ) -> dict[str, Path]:
    """Train / evaluate `acfg.sweep_row` for every Mc; write memory_sweep.md, .json and .png to `out_dir`."""
    from mpnet_model.config import ABLATIONS

    if not ABLATIONS[acfg.sweep_row]['use_ins_memory']:
        raise ValueError(f'analysis.sweep_row={acfg.sweep_row!r} uses no memory: the memory size changes nothing')
    out_dir = Path(out_dir)
    values = sorted(set(acfg.sweep_mem_per_class))
    metrics = []
    for mc in values:
        results = row_runs(base, acfg, acfg.sweep_row, out_dir, progress, mem_per_class=mc)
        metrics.append(row_metrics(results))
    num_classes = base.model.num_classes
    rows = [[str(mc), str(mc * num_classes)] + [format_percent(*m[c]) for c in SUMMARY_COLUMNS]
            for mc, m in zip(values, metrics)]
    title = f'Memory size sweep, row {acfg.sweep_row!r}, seeds {acfg.seeds}'
    png = sweep_figure(values, metrics, out_dir / 'memory_sweep.png', title)
    text = '\n'.join([f'# {title}', '', f'Whole-room evaluation on the {acfg.split} split, metrics in %. '
                      'Paper §4.3: performance grows with Mc and is stable beyond 200; Mc = 150 is used.', '',
                      markdown_table(['Mc', 'M', *SUMMARY_COLUMNS], rows), '', '![memory sweep](memory_sweep.png)',
                      ''])
    table = atomic_write_text(out_dir / 'memory_sweep.md', text)
    data = {str(mc): {k: {'mean': m, 'std': s} for k, (m, s) in metric.items()} for mc, metric in zip(values, metrics)}
    raw = atomic_write_text(out_dir / 'memory_sweep.json', json.dumps(_json_safe(data), indent=1))
    return {'table': table, 'json': raw, 'plot': png}
