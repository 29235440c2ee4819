"""Does an instance's confidence mean something? Precision against a confidence threshold (issue 23).

Every predicted instance of the evaluated clouds is a true positive when its best same-class IoU with a ground-truth
instance is >= 0.5 (the mPrec / mRec rule, `InstanceEvaluator`'s records). Sorted by a score, descending, the
predictions kept above each threshold give a precision (TP / kept) and a recall (TP / all gt instances, pooled over
classes); average precision is the area under that curve (all-point interpolation, as Pascal VOC 2010+ / COCO
without the recall grid). A score that means something ranks the true positives first: its AP is well above the
share of true positives (what a random order gives).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def precision_recall(scores, true_positive, num_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall) (K,) of the predictions kept at score >= each prediction's score, from
    the highest score down (ties broken by input order)."""
    scores = np.asarray(scores, dtype=np.float64)
    true_positive = np.asarray(true_positive, dtype=bool)
    if scores.shape != true_positive.shape:
        raise ValueError(f'scores {scores.shape} and true_positive {true_positive.shape} differ in shape')
    order = np.argsort(-scores, kind='stable')
    hits = np.cumsum(true_positive[order])
    kept = np.arange(1, len(order) + 1)
    recall = hits / num_gt if num_gt else np.full(len(order), np.nan)
    return scores[order], hits / kept, recall


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall curve with precision made monotone (all-point interpolation)."""
    if len(precision) == 0 or np.isnan(recall).all():
        return float('nan')
    envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def render_confidence(curves: dict[str, dict], path: str | Path, title: str) -> Path:
    """Two panels: precision vs recall and precision vs threshold, one line per ranking score. `curves` = {name:
    {'scores', 'true_positive', 'num_gt'}}."""
    from mpnet_model.viz.render import new_figure, save_figure

    fig = new_figure(10.0, 4.2)
    pr, pc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, curve in curves.items():
        thresholds, precision, recall = precision_recall(curve['scores'], curve['true_positive'], curve['num_gt'])
        ap = average_precision(precision, recall)
        pr.plot(recall, precision, label=f'{name} (AP {ap:.3f})')
        if curve.get('threshold_axis', True):
            pc.plot(thresholds, precision, label=name)
    share = np.mean(next(iter(curves.values()))['true_positive']) if curves else float('nan')
    pr.axhline(share, color='grey', lw=0.8, ls=':', label=f'random order ({share:.3f})')
    pr.set(xlabel='recall (pooled over classes)', ylabel='precision', xlim=(0, None), ylim=(0, 1.02),
           title='precision vs recall')
    pc.set(xlabel='threshold (instances kept at >= it)', ylabel='precision', ylim=(0, 1.02), xlim=(0, 1),
           title='precision vs confidence threshold')
    for axis in (pr, pc):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc='lower left' if axis is pc else 'upper right')
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
