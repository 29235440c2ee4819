"""Evaluation metrics of the paper: S3DIS semantic and instance metrics (ASIS / SGPN definitions) and ScanNet AP.

All evaluators accumulate over rooms (`add` once per room) and report with `compute()`. Inputs are per-point numpy
arrays of one room; every per-point step is vectorised (contingency matrices via `np.bincount`), loops run only over
instances, classes and IoU thresholds.

Choices and deviations from the reference scripts (ASIS `eval_iou_accuracy.py`, ScanNet
`evaluate_semantic_instance.py`), all deliberate:

* Semantic: classes that appear neither in the ground truth nor in the predictions have IoU = NaN and are left out
  of mIoU; classes without ground truth have accuracy = NaN and are left out of mAcc. ASIS divides the IoU sum by
  the number of classes (and takes a plain mean of accuracies), which is the same on full S3DIS areas, where every
  class occurs, but becomes NaN or biased on subsets.
* Instance (S3DIS): identical to ASIS — a gt instance is a `gt_ins` id, its class the majority `gt_sem`; a predicted
  instance is a `pred_ins` id (>= 0), its class the majority `pred_sem`; Cov per class is the per-room mean of each
  gt instance's best same-class IoU, then averaged over the rooms containing that class (likewise WCov weighted by
  gt instance size); a predicted instance is a TP when its best same-class IoU is >= 0.5; recall = TP / #gt.
  Additions: points with `gt_sem == ignore_label` are dropped before anything else, and points with `gt_ins < 0`
  belong to no gt instance (ASIS data has neither). Where ASIS yields 0/0 we define: precision = 0 for a class that
  has gt instances but no predictions (a missed class counts as a failure), NaN when the class has neither; recall
  = NaN without gt instances. Class means skip NaN (ASIS takes a plain mean, which is NaN as soon as one class is).
* ScanNet AP: the official matching and PR-curve integration, replicated step by step, including its quirks
  (gt-centred greedy matching in prediction order, strict `IoU > threshold`, predictions and gt smaller than
  `min_region_size` points skipped, unmatched predictions lying mostly on void / instance-less / small gt not
  counted as false positives). "AP" is the mean over thresholds 0.50:0.05:0.90 exactly as the official script
  (`np.arange(0.5, 0.95, 0.05)` stops at 0.90). gt points with `gt_sem` outside `eval_classes` (or == ignore) are
  void; `gt_ins < 0` with an evaluated class plays the role of ScanNet's instance-less "group" ids (< 1000).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from mpnet_model.data.classes import IGNORE_LABEL
from mpnet_model.io.atomic import atomic_write

# IoU thresholds of the official ScanNet script: 0.50, 0.55, ..., 0.90, then 0.25.
SCANNET_AP_THRESHOLDS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)


class MetricInputError(ValueError):
    """Per-point arrays given to an evaluator are malformed; the message names the array and the problem."""


def _as_labels(name: str, values, num_points: int | None = None) -> np.ndarray:
    """A 1-D int64 view of `values`, checked for shape; `name` is used in the error message."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise MetricInputError(f'{name} must be 1-D (one label per point), got shape {array.shape}')
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise MetricInputError(f'{name} must hold integer labels, got dtype {array.dtype} with fractions')
    array = array.astype(np.int64, copy=False)
    if num_points is not None and array.shape[0] != num_points:
        raise MetricInputError(f'{name} has {array.shape[0]} points, expected {num_points}')
    return array


def _check_range(name: str, labels: np.ndarray, num_classes: int, allowed_extra: int | None = None) -> None:
    """Every label in [0, num_classes), or equal to `allowed_extra` (the ignore label) when given."""
    bad = (labels < 0) | (labels >= num_classes)
    if allowed_extra is not None:
        bad &= labels != allowed_extra
    if np.any(bad):
        raise MetricInputError(
            f'{name} has labels outside [0, {num_classes})'
            + (f' other than ignore label {allowed_extra}' if allowed_extra is not None else '')
            + f': {np.unique(labels[bad])[:10].tolist()}')


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio with NaN where the denominator is 0 (undefined, not zero)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over defined entries; NaN (without a warning) when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else float('nan')


# ----------------------------------------------------------------------------------------------------------------
# Semantic segmentation
# ----------------------------------------------------------------------------------------------------------------

class SemanticEvaluator:
    """Confusion matrix over rooms → oAcc, mAcc, mIoU and per-class IoU / accuracy (S3DIS / ASIS definitions)."""

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows gt, columns prediction

    def add(self, pred, gt) -> None:
        """Accumulate one room: `pred` (N,) and `gt` (N,) class ids; gt points equal to `ignore_label` are skipped."""
        gt = _as_labels('gt', gt)
        pred = _as_labels('pred', pred, gt.shape[0])
        keep = gt != self.ignore_label
        gt, pred = gt[keep], pred[keep]
        _check_range('gt', gt, self.num_classes)
        _check_range('pred', pred, self.num_classes)
        counts = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict:
        """Per-class `iou`, `acc` (C,) and means; classes absent from gt and prediction are excluded (NaN)."""
        true_positive = np.diag(self.confusion).astype(np.float64)
        gt_count = self.confusion.sum(axis=1)
        pred_count = self.confusion.sum(axis=0)
        iou = _safe_divide(true_positive, gt_count + pred_count - true_positive)
        acc = _safe_divide(true_positive, gt_count)
        total = self.confusion.sum()
        return {
            'oAcc': float(true_positive.sum() / total) if total else float('nan'),
            'mAcc': _nanmean(acc),
            'mIoU': _nanmean(iou),
            'iou': iou,
            'acc': acc,
            'gt_points': gt_count,
            'pred_points': pred_count,
            'confusion': self.confusion.copy(),
        }


# ----------------------------------------------------------------------------------------------------------------
# S3DIS instance segmentation (ASIS / SGPN)
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceRecords:
    """One row per instance (gt or predicted) over all rooms, with its best same-class match on the other side.

    room (K,) str, instance (K,) int64 id in that room's labels, sem (K,) int64 class, num_points (K,) int64,
    best_iou (K,) float64 (0 when nothing of the same class overlaps), best_match (K,) int64 id of the best matching
    instance on the other side (-1 when none overlaps).
    """

    room: np.ndarray
    instance: np.ndarray
    sem: np.ndarray
    num_points: np.ndarray
    best_iou: np.ndarray
    best_match: np.ndarray

    def __len__(self) -> int:
        return int(self.instance.shape[0])

    def keys(self) -> list[tuple[str, int]]:
        """(room, instance id) per row: the identity used to compare models on the same gt instances."""
        return list(zip(self.room.tolist(), self.instance.tolist()))

    def key_mask(self, keys) -> np.ndarray:
        """(K,) bool: which rows' (room, instance) keys are in `keys`."""
        wanted = set(keys)
        return np.fromiter(((room, int(ins)) in wanted for room, ins in zip(self.room, self.instance)),
                           dtype=bool, count=len(self))

    def save(self, path: str) -> None:
        """Write to `.npz` atomically (so a baseline's records can be reused by a later run)."""
        with atomic_write(path) as stream:
            np.savez(stream, room=self.room.astype(str), instance=self.instance, sem=self.sem,
                     num_points=self.num_points, best_iou=self.best_iou, best_match=self.best_match)

    @classmethod
    def load(cls, path: str) -> InstanceRecords:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(room=data['room'].astype(object), instance=data['instance'], sem=data['sem'],
                           num_points=data['num_points'], best_iou=data['best_iou'], best_match=data['best_match'])
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f'cannot read instance records from {path}: {error}') from error

    @classmethod
    def concatenate(cls, parts: list[InstanceRecords]) -> InstanceRecords:
        if not parts:
            empty_int = np.zeros(0, dtype=np.int64)
            return cls(np.zeros(0, dtype=object), empty_int, empty_int, empty_int, np.zeros(0), empty_int)
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ('room', 'instance', 'sem', 'num_points', 'best_iou', 'best_match')))


@dataclass(frozen=True)
class InstanceEvaluationRecords:
    """Per-instance results of one evaluation: `gt` instances and `pred` (predicted) instances."""

    gt: InstanceRecords
    pred: InstanceRecords


def _group_instances(instance_ids: np.ndarray, sem: np.ndarray, num_classes: int):
    """Instances of one room: ids (K,), index of each point (N,) (-1 = none), majority class (K,), sizes (K,).

    Points with a negative id belong to no instance. The class is the majority label (ties → smaller class id,
    as `scipy.stats.mode` in ASIS).
    """
    member = instance_ids >= 0
    ids, inverse = np.unique(instance_ids[member], return_inverse=True)
    point_index = np.full(instance_ids.shape[0], -1, dtype=np.int64)
    point_index[member] = inverse
    class_counts = np.bincount(inverse * num_classes + sem[member],
                               minlength=ids.shape[0] * num_classes).reshape(ids.shape[0], num_classes)
    return ids, point_index, class_counts.argmax(axis=1), class_counts.sum(axis=1)


def _intersections(pred_index: np.ndarray, gt_index: np.ndarray, num_pred: int, num_gt: int) -> np.ndarray:
    """(P, G) shared point counts of disjoint point groupings (bincount of pred * G + gt)."""
    both = (pred_index >= 0) & (gt_index >= 0)
    return np.bincount(pred_index[both] * num_gt + gt_index[both],
                       minlength=num_pred * num_gt).reshape(num_pred, num_gt)


def _pairwise_iou(intersection: np.ndarray, pred_sizes: np.ndarray, gt_sizes: np.ndarray) -> np.ndarray:
    """(P, G) IoU from the (P, G) intersections and the group sizes."""
    union = pred_sizes[:, None] + gt_sizes[None, :] - intersection
    return _safe_divide(intersection, union)


def fragments_per_gt(intersection: np.ndarray) -> np.ndarray:
    """(G,) number of predicted instances that are fragments of each gt instance.

    A predicted instance is a fragment of the gt instance holding most of its points (its *home*; ties -> the
    smaller gt index); a prediction that touches no gt instance is nobody's fragment. Classes play no part: this
    measures grouping only. 1 = one piece, >= 2 = split (over-segmented), 0 = missed or swallowed by a prediction
    whose home is another gt instance (under-segmented).
    """
    num_pred, num_gt = intersection.shape
    if num_pred == 0 or num_gt == 0:
        return np.zeros(num_gt, dtype=np.int64)
    touches = intersection.max(axis=1) > 0
    home = intersection.argmax(axis=1)[touches]
    return np.bincount(home, minlength=num_gt).astype(np.int64)


def _best_same_class(iou: np.ndarray, same_class: np.ndarray, other_ids: np.ndarray, axis: int):
    """Best same-class IoU along `axis` (0 when none) and the id of that match (-1 when it does not overlap)."""
    masked = np.where(same_class, iou, 0.0)
    if masked.shape[axis] == 0:
        length = masked.shape[1 - axis]
        return np.zeros(length), np.full(length, -1, dtype=np.int64)
    best = masked.max(axis=axis)
    best_id = other_ids[masked.argmax(axis=axis)]
    return best, np.where(best > 0, best_id, -1)


class InstanceEvaluator:
    """S3DIS instance metrics over rooms, as ASIS `eval_iou_accuracy.py`: mCov, mWCov, mPrec, mRec at IoU 0.5."""

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, ignore_label: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.iou_threshold = float(iou_threshold)
        self.ignore_label = ignore_label
        self._cov_sum = np.zeros(num_classes)            # sum over rooms of the room's mean coverage
        self._wcov_sum = np.zeros(num_classes)           # sum over rooms of the room's size-weighted coverage
        self._rooms_with_gt = np.zeros(num_classes, dtype=np.int64)
        self._num_gt = np.zeros(num_classes, dtype=np.int64)
        self._num_pred = np.zeros(num_classes, dtype=np.int64)
        self._true_positive = np.zeros(num_classes, dtype=np.int64)
        self._fragments = np.zeros(num_classes, dtype=np.int64)     # over-segmentation: see fragments_per_gt
        self._split = np.zeros(num_classes, dtype=np.int64)         # gt instances with >= 2 fragments
        self._gt_parts: list[InstanceRecords] = []
        self._pred_parts: list[InstanceRecords] = []
        self._rooms: set[str] = set()

    def add(self, pred_sem, pred_ins, gt_sem, gt_ins, room_id: str | None = None) -> None:
        """Accumulate one room. All arrays (N,); `pred_ins` / `gt_ins` < 0 = no instance.

        `room_id` names the room in `instance_records()` (default `room<k>` in call order); it must be unique.
        """
        gt_sem = _as_labels('gt_sem', gt_sem)
        num_points = gt_sem.shape[0]
        gt_ins = _as_labels('gt_ins', gt_ins, num_points)
        pred_sem = _as_labels('pred_sem', pred_sem, num_points)
        pred_ins = _as_labels('pred_ins', pred_ins, num_points)
        room = str(room_id) if room_id is not None else f'room{len(self._rooms)}'
        if room in self._rooms:
            raise MetricInputError(f'room_id {room!r} was already added; room ids must be unique')

        keep = gt_sem != self.ignore_label
        gt_sem, gt_ins, pred_sem, pred_ins = gt_sem[keep], gt_ins[keep], pred_sem[keep], pred_ins[keep]
        _check_range('gt_sem', gt_sem, self.num_classes)
        _check_range('pred_sem', pred_sem, self.num_classes)
        self._rooms.add(room)

        gt_ids, gt_index, gt_class, gt_sizes = _group_instances(gt_ins, gt_sem, self.num_classes)
        pred_ids, pred_index, pred_class, pred_sizes = _group_instances(pred_ins, pred_sem, self.num_classes)
        intersection = _intersections(pred_index, gt_index, pred_ids.shape[0], gt_ids.shape[0])   # (P, G)
        iou = _pairwise_iou(intersection, pred_sizes, gt_sizes)                       # (P, G)
        same_class = pred_class[:, None] == gt_class[None, :]
        gt_best, gt_match = _best_same_class(iou, same_class, pred_ids, axis=0)      # (G,)
        pred_best, pred_match = _best_same_class(iou, same_class, gt_ids, axis=1)    # (P,)

        classes = self.num_classes
        gt_per_class = np.bincount(gt_class, minlength=classes)
        cov_sum = np.bincount(gt_class, weights=gt_best, minlength=classes)
        weighted_sum = np.bincount(gt_class, weights=gt_best * gt_sizes, minlength=classes)
        points_per_class = np.bincount(gt_class, weights=gt_sizes, minlength=classes)
        present = gt_per_class > 0
        self._cov_sum[present] += cov_sum[present] / gt_per_class[present]
        self._wcov_sum[present] += weighted_sum[present] / points_per_class[present]
        self._rooms_with_gt += present
        self._num_gt += gt_per_class
        self._num_pred += np.bincount(pred_class, minlength=classes)
        self._true_positive += np.bincount(pred_class[pred_best >= self.iou_threshold], minlength=classes)
        fragments = fragments_per_gt(intersection)                                   # (G,)
        self._fragments += np.bincount(gt_class, weights=fragments, minlength=classes).astype(np.int64)
        self._split += np.bincount(gt_class[fragments >= 2], minlength=classes)

        self._gt_parts.append(InstanceRecords(np.full(gt_ids.shape[0], room, dtype=object), gt_ids, gt_class,
                                              gt_sizes, gt_best, gt_match))
        self._pred_parts.append(InstanceRecords(np.full(pred_ids.shape[0], room, dtype=object), pred_ids,
                                                pred_class, pred_sizes, pred_best, pred_match))

    def compute(self) -> dict:
        """Per-class arrays (C,) `cov`, `wcov`, `precision`, `recall`, counts, and means mCov, mWCov, mPrec, mRec.

        Over-segmentation, per gt class: `fragments` = predicted instances per gt instance (their mean number of
        fragments, `fragments_per_gt`), `split` = share of gt instances split into >= 2 fragments; class means
        mFrag / mSplit. The perfect grouping has 1.0 and 0.0.
        """
        cov = _safe_divide(self._cov_sum, self._rooms_with_gt)
        wcov = _safe_divide(self._wcov_sum, self._rooms_with_gt)
        precision = _safe_divide(self._true_positive, self._num_pred)
        precision[(self._num_pred == 0) & (self._num_gt > 0)] = 0.0   # missed class: a failure, not undefined
        recall = _safe_divide(self._true_positive, self._num_gt)
        fragments = _safe_divide(self._fragments, self._num_gt)
        split = _safe_divide(self._split, self._num_gt)
        return {
            'mCov': _nanmean(cov), 'mWCov': _nanmean(wcov), 'mPrec': _nanmean(precision), 'mRec': _nanmean(recall),
            'mFrag': _nanmean(fragments), 'mSplit': _nanmean(split),
            'cov': cov, 'wcov': wcov, 'precision': precision, 'recall': recall,
            'fragments': fragments, 'split': split,
            'num_gt': self._num_gt.copy(), 'num_pred': self._num_pred.copy(),
            'true_positive': self._true_positive.copy(),
        }

    def instance_records(self) -> InstanceEvaluationRecords:
        """Every gt and predicted instance seen so far with its best same-class IoU (for rare-case studies)."""
        return InstanceEvaluationRecords(gt=InstanceRecords.concatenate(self._gt_parts),
                                         pred=InstanceRecords.concatenate(self._pred_parts))


STRUCTURE_CLASSES = ('ceiling', 'floor', 'wall')     # not objects: left out of the object recall


@dataclass
class AgnosticMatches:
    """The IoU >= threshold matches of one cloud: predicted and gt instance ids, IoU, gt class (each gt and each
    prediction appears at most once: at IoU > 0.5 a match is unique)."""
    pred: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    gt_class: np.ndarray


class AgnosticInstanceEvaluator:
    """Class-agnostic instance precision / recall at IoU `iou_threshold` (default 0.5) over clouds: a predicted
    instance (any class, or none: a clustering peer) is a true positive when it overlaps some gt instance by IoU >=
    the threshold; precision = TP / predictions, recall = matched gt instances / gt instances. `object_recall` is
    the recall over gt instances whose (majority) class is not structure (`structure`: names in `class_names`).
    Points with the ignore label are dropped; gt_ins < 0 belongs to no instance."""

    def __init__(self, class_names, iou_threshold: float = 0.5, ignore_label: int = IGNORE_LABEL,
                 structure=STRUCTURE_CLASSES):
        self.class_names = tuple(class_names)
        self.iou_threshold = float(iou_threshold)
        self.ignore_label = ignore_label
        self.structure = np.array([name in structure for name in self.class_names])
        self.num_pred = self.true_positive = 0
        self.gt_per_class = np.zeros(len(self.class_names), dtype=np.int64)
        self.matched_per_class = np.zeros(len(self.class_names), dtype=np.int64)

    def add(self, pred_ins, gt_sem, gt_ins) -> AgnosticMatches:
        """Accumulate one cloud (all arrays (N,)); returns its matches."""
        gt_sem = _as_labels('gt_sem', gt_sem)
        gt_ins = _as_labels('gt_ins', gt_ins, gt_sem.shape[0])
        pred_ins = _as_labels('pred_ins', pred_ins, gt_sem.shape[0])
        keep = gt_sem != self.ignore_label
        gt_sem, gt_ins, pred_ins = gt_sem[keep], gt_ins[keep], pred_ins[keep]
        _check_range('gt_sem', gt_sem, len(self.class_names))
        gt_ids, gt_index, gt_class, gt_sizes = _group_instances(gt_ins, gt_sem, len(self.class_names))
        pred_ids, pred_index, _, pred_sizes = _group_instances(pred_ins, np.zeros_like(pred_ins), 1)
        intersection = _intersections(pred_index, gt_index, pred_ids.shape[0], gt_ids.shape[0])
        iou = np.nan_to_num(_pairwise_iou(intersection, pred_sizes, gt_sizes))            # (P, G)
        matched = iou >= self.iou_threshold
        rows, cols = np.nonzero(matched)
        self.num_pred += pred_ids.shape[0]
        self.true_positive += int(matched.any(axis=1).sum())
        self.gt_per_class += np.bincount(gt_class, minlength=len(self.class_names))
        self.matched_per_class += np.bincount(gt_class[matched.any(axis=0)], minlength=len(self.class_names))
        return AgnosticMatches(pred_ids[rows], gt_ids[cols], iou[rows, cols], gt_class[cols])

    def compute(self) -> dict:
        objects = ~self.structure
        gt, matched = self.gt_per_class, self.matched_per_class
        return {'precision': self.true_positive / self.num_pred if self.num_pred else float('nan'),
                'recall': matched.sum() / gt.sum() if gt.sum() else float('nan'),
                'object_recall': matched[objects].sum() / gt[objects].sum() if gt[objects].sum() else float('nan'),
                'predictions': int(self.num_pred), 'gt_instances': int(gt.sum()),
                'gt_objects': int(gt[objects].sum()), 'recall_per_class': _safe_divide(matched, gt)}


def select_rare_cases(gt_records: InstanceRecords, fraction: float = 0.2, per_class: bool = False,
                      ) -> list[tuple[str, int]]:
    """Keys (room, gt instance id) of the `fraction` of gt instances with the lowest best IoU (paper §4.4).

    Run on the baseline's records; ceil(fraction * count) instances are taken (over all instances, or within each
    class when `per_class`), ties broken by (room, instance id) so the set is reproducible.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    order = np.lexsort((gt_records.instance, gt_records.room.astype(str), gt_records.best_iou))
    if per_class:
        groups = [order[gt_records.sem[order] == c] for c in np.unique(gt_records.sem)]
    else:
        groups = [order]
    keys = gt_records.keys()
    return [keys[i] for group in groups for i in group[:math.ceil(fraction * group.shape[0])]]


def precision_on_subset(records: InstanceEvaluationRecords, subset_keys, num_classes: int,
                        iou_threshold: float = 0.5) -> dict:
    """Instance precision and recall of one model restricted to a set of gt instances (e.g. the rare cases).

    Recall: share of the subset's gt instances whose best same-class IoU is >= `iou_threshold`.
    Precision: among predicted instances whose best-overlapping same-class gt instance is in the subset, the share
    with IoU >= `iou_threshold` (predictions attributable to those gt instances; ones overlapping no gt are left
    out, as they cannot be assigned to a case). Per class (C,) and means over classes with a defined value.
    """
    gt, pred = records.gt, records.pred
    subset_keys = list(subset_keys)
    gt_in_subset = gt.key_mask(subset_keys)
    matched_keys = [(room, int(match)) for room, match in zip(pred.room, pred.best_match)]
    wanted = set(subset_keys)
    pred_on_subset = np.fromiter((key in wanted for key in matched_keys), dtype=bool, count=len(pred))
    if gt_in_subset.sum() < len(wanted):
        raise ValueError(f'{len(wanted) - int(gt_in_subset.sum())} of {len(wanted)} subset keys are not gt '
                         'instances of these records (rooms evaluated under other ids or another split?)')

    num_gt = np.bincount(gt.sem[gt_in_subset], minlength=num_classes)
    gt_hits = np.bincount(gt.sem[gt_in_subset & (gt.best_iou >= iou_threshold)], minlength=num_classes)
    num_pred = np.bincount(pred.sem[pred_on_subset], minlength=num_classes)
    pred_hits = np.bincount(pred.sem[pred_on_subset & (pred.best_iou >= iou_threshold)], minlength=num_classes)
    precision = _safe_divide(pred_hits, num_pred)
    precision[(num_pred == 0) & (num_gt > 0)] = 0.0
    recall = _safe_divide(gt_hits, num_gt)
    return {'mPrec': _nanmean(precision), 'mRec': _nanmean(recall), 'precision': precision, 'recall': recall,
            'num_gt': num_gt, 'num_pred': num_pred}


# ----------------------------------------------------------------------------------------------------------------
# ScanNet AP (official evaluate_semantic_instance.py)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _ClassScan:
    """What the AP matching needs about one class in one scan (instances only, no points)."""

    gt_sizes: np.ndarray            # (G,) points per gt region of this class (instances and the instance-less group)
    gt_countable: np.ndarray        # (G,) bool: a real instance with >= min_region_size points
    gt_group: np.ndarray            # (G,) bool: the region of this class's points without an instance id
    gt_small: np.ndarray            # (G,) bool: fewer than min_region_size points
    pred_sizes: np.ndarray          # (P,) points per predicted mask (masks below min size already dropped)
    pred_scores: np.ndarray         # (P,)
    pred_void: np.ndarray           # (P,) points of the mask on void gt
    intersection: np.ndarray        # (G, P)


@dataclass
class _APCounts:
    """Scores and labels of one class at one threshold over all scans."""

    true: list = field(default_factory=list)
    score: list = field(default_factory=list)
    hard_false_negatives: int = 0


def _match_class_scan(scan: _ClassScan, threshold: float, counts: _APCounts) -> None:
    """Official greedy matching of one class in one scan at one IoU threshold (loops over instances only)."""
    union = scan.gt_sizes[:, None] + scan.pred_sizes[None, :] - scan.intersection
    overlap = _safe_divide(scan.intersection, union)                           # (G, P)
    visited = np.zeros(scan.pred_sizes.shape[0], dtype=bool)
    for gt_index in np.flatnonzero(scan.gt_countable):
        matched_score = None
        for pred_index in np.flatnonzero(scan.intersection[gt_index] > 0):
            if visited[pred_index] or not overlap[gt_index, pred_index] > threshold:
                continue
            confidence = scan.pred_scores[pred_index]
            if matched_score is None:
                matched_score = confidence
                visited[pred_index] = True
            else:   # a second prediction on a matched gt: the lower-scoring one is a false positive
                counts.true.append(0.0)
                counts.score.append(min(matched_score, confidence))
                matched_score = max(matched_score, confidence)
        if matched_score is None:
            counts.hard_false_negatives += 1
        else:
            counts.true.append(1.0)
            counts.score.append(matched_score)
    # Predictions overlapping no gt region of their class above the threshold are false positives, unless most of
    # them lies on void points, instance-less regions or too-small gt (the official code adds a small group twice).
    found_gt = np.any(overlap > threshold, axis=0)                               # (P,)
    ignored_gt = scan.gt_group.astype(np.int64) + scan.gt_small
    ignored = scan.pred_void + (ignored_gt[:, None] * scan.intersection).sum(axis=0)
    false_positive = ~found_gt & (ignored / scan.pred_sizes <= threshold)
    counts.true.extend([0.0] * int(false_positive.sum()))
    counts.score.extend(scan.pred_scores[false_positive].tolist())


def _average_precision(true: np.ndarray, score: np.ndarray, hard_false_negatives: int) -> float:
    """Area under the PR curve exactly as the official script (unique thresholds, trapezoid-like step widths)."""
    if true.size == 0:   # every prediction ignored and nothing matched (the official script would crash)
        return 0.0
    order = np.argsort(score, kind='stable')
    score_sorted, true_sorted = score[order], true[order]
    cumsum = np.cumsum(true_sorted)
    _, unique_indices = np.unique(score_sorted, return_index=True)
    num_examples, num_true = score_sorted.shape[0], cumsum[-1]
    below = np.append(cumsum, 0.0)[unique_indices - 1]      # true examples scored below each threshold
    tp = num_true - below
    fp = num_examples - unique_indices - tp
    fn = below + hard_false_negatives
    precision = np.append(tp / (tp + fp), 1.0)               # the last point (recall 0, precision 1) is artificial
    recall = np.append(tp / (tp + fn), 0.0)
    recall_padded = np.concatenate([recall[:1], recall, [0.0]])
    step_widths = np.convolve(recall_padded, [-0.5, 0, 0.5], 'valid')
    return float(np.dot(precision, step_widths))


class ScanNetAPEvaluator:
    """ScanNet benchmark instance AP (official `evaluate_semantic_instance.py`): AP@0.25, AP@0.5, AP (0.5:0.9).

    `eval_classes`: class indices that are evaluated (the benchmark leaves out wall and floor: pass
    `range(2, 20)` with `SCANNET_CLASSES`); gt points of other classes count as void, predictions of other classes
    are dropped.
    """

    def __init__(self, num_classes: int, eval_classes=None, min_region_size: int = 100,
                 ignore_label: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.eval_classes = np.arange(num_classes) if eval_classes is None else np.asarray(list(eval_classes))
        if np.any((self.eval_classes < 0) | (self.eval_classes >= num_classes)):
            raise ValueError(f'eval_classes must lie in [0, {num_classes}), got {self.eval_classes.tolist()}')
        self.min_region_size = int(min_region_size)
        self.ignore_label = ignore_label
        self._scans: list[dict[int, _ClassScan]] = []

    def add(self, gt_sem, gt_ins, pred_masks, pred_labels, pred_scores) -> None:
        """Accumulate one scan: gt_sem, gt_ins (N,); pred_masks (K, N) bool; pred_labels, pred_scores (K,)."""
        gt_sem = _as_labels('gt_sem', gt_sem)
        num_points = gt_sem.shape[0]
        gt_ins = _as_labels('gt_ins', gt_ins, num_points)
        _check_range('gt_sem', gt_sem, self.num_classes, self.ignore_label)
        pred_masks = np.asarray(pred_masks, dtype=bool)
        if pred_masks.size == 0:
            pred_masks = np.zeros((0, num_points), dtype=bool)
        if pred_masks.ndim != 2 or pred_masks.shape[1] != num_points:
            raise MetricInputError(f'pred_masks must be (K, {num_points}) bool, got shape {pred_masks.shape}')
        pred_labels = _as_labels('pred_labels', np.asarray(pred_labels).reshape(-1), pred_masks.shape[0])
        pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if pred_scores.shape[0] != pred_masks.shape[0]:
            raise MetricInputError(f'pred_scores has {pred_scores.shape[0]} entries for {pred_masks.shape[0]} masks')
        _check_range('pred_labels', pred_labels, self.num_classes)

        evaluated = np.isin(gt_sem, self.eval_classes)
        # gt regions: (class, instance id) pairs of evaluated points; instance id -1 is the class's group region.
        instance_slot = np.maximum(gt_ins, -1) + 1                                   # 0 = no instance
        stride = int(instance_slot.max(initial=0)) + 1
        region_ids, region_index = np.unique((gt_sem * stride + instance_slot)[evaluated], return_inverse=True)
        region_class = region_ids // stride
        region_is_group = (region_ids % stride) == 0
        point_region = sparse.csr_matrix(
            (np.ones(region_index.shape[0], dtype=np.int64), (np.flatnonzero(evaluated), region_index)),
            shape=(num_points, region_ids.shape[0]))
        mask_matrix = sparse.csr_matrix(pred_masks, dtype=np.int64)                  # (K, N), memory ~ mask points
        intersection = (mask_matrix @ point_region).toarray().T                      # (R, K)
        region_sizes = np.bincount(region_index, minlength=region_ids.shape[0])
        pred_sizes = pred_masks.sum(axis=1)
        pred_void = mask_matrix @ (~evaluated).astype(np.int64)                      # (K,)

        keep_pred = np.isin(pred_labels, self.eval_classes) & (pred_sizes >= self.min_region_size)
        scan = {}
        for class_id in self.eval_classes.tolist():
            gt_rows = region_class == class_id
            pred_cols = keep_pred & (pred_labels == class_id)
            gt_small = region_sizes[gt_rows] < self.min_region_size
            scan[class_id] = _ClassScan(
                gt_sizes=region_sizes[gt_rows], gt_group=region_is_group[gt_rows], gt_small=gt_small,
                gt_countable=~region_is_group[gt_rows] & ~gt_small,
                pred_sizes=pred_sizes[pred_cols], pred_scores=pred_scores[pred_cols], pred_void=pred_void[pred_cols],
                intersection=intersection[np.ix_(gt_rows, pred_cols)])
        self._scans.append(scan)

    def add_from_labels(self, gt_sem, gt_ins, pred_sem, pred_ins, point_scores=None) -> None:
        """Accumulate one scan given per-point predictions (pred_ins < 0 = none).

        Each predicted instance becomes a mask labelled with its majority `pred_sem`, scored by the mean of
        `point_scores` (N,) over its points (1.0 when not given).
        """
        pred_ins = _as_labels('pred_ins', pred_ins)
        pred_sem = _as_labels('pred_sem', pred_sem, pred_ins.shape[0])
        _check_range('pred_sem', pred_sem, self.num_classes)
        masks, labels, scores = masks_from_instance_labels(pred_ins, pred_sem, self.num_classes, point_scores)
        self.add(gt_sem, gt_ins, masks, labels, scores)

    def compute(self) -> dict:
        """Per-class AP arrays (C,) `ap`, `ap50`, `ap25` (NaN for classes not evaluated or without gt and preds),
        `ap_per_threshold` (C, T) with `thresholds` (T,), and means mAP, mAP50, mAP25 over classes with a value."""
        thresholds = SCANNET_AP_THRESHOLDS
        ap = np.full((self.num_classes, thresholds.shape[0]), np.nan)
        for class_id in self.eval_classes.tolist():
            per_scan = [scan[class_id] for scan in self._scans]
            has_gt = any(s.gt_countable.any() for s in per_scan)
            has_pred = any(s.pred_sizes.shape[0] > 0 for s in per_scan)
            for t, threshold in enumerate(thresholds):
                if not has_gt:
                    continue                                    # undefined: NaN as in the official script
                if not has_pred:
                    ap[class_id, t] = 0.0
                    continue
                counts = _APCounts()
                for scan in per_scan:
                    _match_class_scan(scan, float(threshold), counts)
                ap[class_id, t] = _average_precision(np.asarray(counts.true), np.asarray(counts.score, dtype=float),
                                                     counts.hard_false_negatives)
        main = ~np.isclose(thresholds, 0.25)
        per_class_ap = ap[:, main].mean(axis=1)
        ap50 = ap[:, np.isclose(thresholds, 0.5)][:, 0]
        ap25 = ap[:, np.isclose(thresholds, 0.25)][:, 0]
        return {'mAP': _nanmean(per_class_ap), 'mAP50': _nanmean(ap50), 'mAP25': _nanmean(ap25),
                'ap': per_class_ap, 'ap50': ap50, 'ap25': ap25, 'ap_per_threshold': ap, 'thresholds': thresholds}


def masks_from_instance_labels(pred_ins, pred_sem, num_classes: int, point_scores=None):
    """Per-point instance ids → (masks (K, N) bool, labels (K,) majority class, scores (K,) mean point score)."""
    pred_ins = _as_labels('pred_ins', pred_ins)
    pred_sem = _as_labels('pred_sem', pred_sem, pred_ins.shape[0])
    ids, point_index, labels, sizes = _group_instances(pred_ins, pred_sem, num_classes)
    masks = point_index[None, :] == np.arange(ids.shape[0])[:, None]
    if point_scores is None:
        scores = np.ones(ids.shape[0])
    else:
        point_scores = np.asarray(point_scores, dtype=np.float64).reshape(-1)
        if point_scores.shape[0] != pred_ins.shape[0]:
            raise MetricInputError(f'point_scores has {point_scores.shape[0]} points, expected {pred_ins.shape[0]}')
        member = point_index >= 0
        scores = np.bincount(point_index[member], weights=point_scores[member], minlength=ids.shape[0]) / sizes
    return masks, labels, scores
