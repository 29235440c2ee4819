"""Evaluation reports: per-class tables and the paper's dominance tiers (§4.4), as Markdown and CSV.

Tiers: classes sorted by their share of training points (largest first); the first `C // 3` are *dominant*, the
last `C // 3` *non-dominant*, the rest *mid* — 4 / 5 / 4 for the 13 S3DIS classes as in the paper, 6 / 8 / 6 for
the 20 ScanNet classes. Equal shares keep class order (stable sort), so the split is reproducible.
"""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from mpnet_model.io.atomic import atomic_write

TIERS = ('dominant', 'mid', 'non_dominant')


def _validated_shares(class_shares, num_classes: int | None = None) -> np.ndarray:
    """Shares (C,) as float64, normalised to sum 1; point counts or fractions are both accepted."""
    shares = np.asarray(class_shares, dtype=np.float64)
    if shares.ndim != 1 or shares.size == 0:
        raise ValueError(f'class_shares must be a non-empty 1-D sequence, got shape {shares.shape}')
    if num_classes is not None and shares.shape[0] != num_classes:
        raise ValueError(f'class_shares has {shares.shape[0]} entries for {num_classes} classes')
    if not np.all(np.isfinite(shares)) or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f'class_shares must be finite, >= 0 and not all 0, got {shares.tolist()}')
    return shares / shares.sum()


def assign_tiers(class_shares) -> list[str]:
    """Tier name of every class (in class order) from its training-set share."""
    shares = _validated_shares(class_shares)
    num_classes = shares.shape[0]
    edge = num_classes // 3
    rank = np.empty(num_classes, dtype=np.int64)
    rank[np.argsort(-shares, kind='stable')] = np.arange(num_classes)    # 0 = largest share
    return [TIERS[0] if r < edge else TIERS[2] if r >= num_classes - edge else TIERS[1] for r in rank.tolist()]


def tier_shares(class_shares) -> dict[str, float]:
    """Fraction of all training points in each tier (the paper: 79.17 %, 16.95 %, 3.88 % on S3DIS)."""
    shares = _validated_shares(class_shares)
    tiers = np.asarray(assign_tiers(shares))
    return {tier: float(shares[tiers == tier].sum()) for tier in TIERS}


def tier_means(per_class_values, class_shares) -> dict[str, float]:
    """Mean of a per-class metric (C,) within each tier; NaN classes (undefined metric) are skipped."""
    shares = _validated_shares(class_shares)
    values = np.asarray(per_class_values, dtype=np.float64)
    if values.shape != shares.shape:
        raise ValueError(f'per_class_values has shape {values.shape}, class_shares {shares.shape}')
    tiers = np.asarray(assign_tiers(shares))
    means = {}
    for tier in TIERS:
        defined = values[(tiers == tier) & ~np.isnan(values)]
        means[tier] = float(defined.mean()) if defined.size else float('nan')
    return means


def _flatten(results: dict, prefix: str = '') -> dict:
    """Nested result dicts → one level, keys joined with '.' (e.g. {'instance': {'mPrec': x}} → 'instance.mPrec')."""
    flat = {}
    for key, value in results.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def split_results(results: dict, num_classes: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, per-class arrays (C,)) of a results dict; other entries (confusion matrix, thresholds) are left
    out of the report."""
    scalars, per_class = {}, {}
    for name, value in _flatten(results).items():
        if isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)):
            scalars[name] = float(value)
            continue
        array = np.asarray(value)
        if array.ndim == 1 and array.shape[0] == num_classes and np.issubdtype(array.dtype, np.number):
            per_class[name] = array            # dtype kept: integer arrays are counts, shown as such
    return scalars, per_class


def _format(value, is_count: bool = False) -> str:
    if is_count:
        return str(int(value))
    return 'nan' if math.isnan(value) else f'{value:.4f}'


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _slug(title: str) -> str:
    slug = re.sub(r'[^A-Za-z0-9]+', '_', title).strip('_').lower()
    return slug or 'report'


def write_report(results: dict, class_names, class_shares, out_dir, title: str) -> dict[str, Path]:
    """Write `<slug>.md`, `<slug>_per_class.csv`, `<slug>_summary.csv` (and `<slug>_tiers.csv` when shares are
    given) to `out_dir`; returns their paths by kind (`markdown`, `per_class_csv`, `summary_csv`, `tiers_csv`).

    `results`: metric name → scalar or per-class array (C,), possibly nested one dict per task (e.g. the outputs of
    `SemanticEvaluator.compute()` and `InstanceEvaluator.compute()` under 'semantic' / 'instance').
    `class_shares`: training-set point counts (or fractions) per class, or None to leave out the tiers.
    """
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError('class_names is empty')
    scalars, per_class = split_results(results, num_classes)
    if not scalars and not per_class:
        raise ValueError(f'results for {title!r} hold no scalar and no per-class array of length {num_classes}')
    shares = _validated_shares(class_shares, num_classes) if class_shares is not None else None
    tiers = assign_tiers(shares) if shares is not None else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = _slug(title)
    paths = {'markdown': out_dir / f'{slug}.md', 'per_class_csv': out_dir / f'{slug}_per_class.csv',
             'summary_csv': out_dir / f'{slug}_summary.csv'}
    texts: dict[Path, str] = {}     # file -> content, written once everything is formatted

    metric_names = list(per_class)
    is_count = {m: bool(np.issubdtype(per_class[m].dtype, np.integer)) for m in metric_names}
    class_header = ['class'] + (['share', 'tier'] if tiers else []) + metric_names
    class_rows = []
    for c, name in enumerate(class_names):
        row = [name] + ([shares[c], tiers[c]] if tiers else []) + [per_class[m][c].item() for m in metric_names]
        class_rows.append(row)

    sections = [f'# {title}', '']
    if scalars:
        sections += ['## Summary', '', _markdown_table(['metric', 'value'],
                                                       [[k, _format(v)] for k, v in scalars.items()]), '']
    if per_class:
        markdown_rows = [[row[0]] + ([f'{100 * row[1]:.2f} %', row[2]] if tiers else [])
                         + [_format(per_class[m][c], is_count[m]) for m in metric_names]
                         for c, row in enumerate(class_rows)]
        sections += ['## Per class', '', _markdown_table(class_header, markdown_rows), '']
    if tiers and per_class:
        shares_by_tier = tier_shares(shares)
        tier_rows = [['share of training points'] + [f'{100 * shares_by_tier[t]:.2f} %' for t in TIERS],
                     ['classes'] + [', '.join(n for n, tier in zip(class_names, tiers) if tier == t) for t in TIERS]]
        rate_names = [m for m in metric_names if not is_count[m]]       # tier means of counts say nothing
        tier_values = {m: tier_means(per_class[m], shares) for m in rate_names}
        tier_rows += [[m] + [_format(tier_values[m][t]) for t in TIERS] for m in rate_names]
        sections += ['## Dominance tiers (paper §4.4)', '', _markdown_table(['metric', *TIERS], tier_rows), '']
        paths['tiers_csv'] = out_dir / f'{slug}_tiers.csv'
        tiers_csv = _csv_text(['metric', *TIERS], [['share', *(shares_by_tier[t] for t in TIERS)]]
                              + [[m, *(tier_values[m][t] for t in TIERS)] for m in rate_names])
        texts[paths['tiers_csv']] = tiers_csv

    texts[paths['per_class_csv']] = _csv_text(class_header, class_rows)
    texts[paths['summary_csv']] = _csv_text(['metric', 'value'], [[k, v] for k, v in scalars.items()])
    texts[paths['markdown']] = '\n'.join(sections)
    for path, text in texts.items():
        with atomic_write(path) as stream:      # bytes: UTF-8 whatever the locale (the Markdown has '§')
            stream.write(text.encode('utf-8'))
    return paths
