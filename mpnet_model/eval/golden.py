"""Golden real-frame outputs: store a frame path's per-point results and judge a later run against them.

A golden reference is a compressed npz holding, for one fixed input crop, the per-point `labels` (uint8, 255 =
nothing predicted) and `instances` (int32, -1 = none) that the frame path produced when the reference was made.
A run matches its reference when, over the same points in the same order:

* label agreement: at least `min_label_agreement` (99 %) of the points carry the reference label;
* class histogram: the total-variation distance between the two label histograms (half the L1 distance of the
  class fractions) is at most `max_histogram_shift` (1 %);
* instance count: within `max(instance_count_abs, instance_count_rel x reference count)` of the reference
  (defaults: 2 instances or 10 %, whichever is larger);
* instance partition: the adjusted Rand index (sklearn `adjusted_rand_score`) over the points that have an
  instance in the reference or in the run is at least `min_instance_ari` (0.95); a point with an instance on one
  side only counts in the "no instance" group (-1) on the other, so dropped or invented instances lower the score.

Instance ids are arbitrary (the ARI ignores them); labels are not. Used by tests/test_golden.py, scripts/
regen_goldens.py and any benchmark that must show a rebuilt frame path still gives the same answers.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NO_LABEL = 255          # uint8 stand-in for label -1 (nothing predicted)


@dataclass(frozen=True)
class GoldenTolerance:
    min_label_agreement: float = 0.99
    max_histogram_shift: float = 0.01
    instance_count_abs: int = 2
    instance_count_rel: float = 0.10
    min_instance_ari: float = 0.95

    def instance_count_slack(self, reference_count: int) -> int:
        return max(self.instance_count_abs, int(np.floor(self.instance_count_rel * reference_count)))


@dataclass
class GoldenReference:
    """Per-point reference outputs of one case, with what the reference was made from (free-form `info`)."""

    labels: np.ndarray                  # (N,) uint8, NO_LABEL = nothing predicted
    instances: np.ndarray               # (N,) int32, -1 = no instance
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, labels: np.ndarray, instances: np.ndarray, **info: Any) -> GoldenReference:
        labels = np.asarray(labels).reshape(-1)
        if labels.size and (labels.max() >= NO_LABEL or labels.min() < -1):
            raise ValueError(f'labels must lie in [-1, {NO_LABEL - 1}], got [{labels.min()}, {labels.max()}]')
        instances = np.asarray(instances).reshape(-1)
        if instances.shape != labels.shape:
            raise ValueError(f'instances {instances.shape} and labels {labels.shape} differ in length')
        return cls(np.where(labels < 0, NO_LABEL, labels).astype(np.uint8), instances.astype(np.int32), dict(info))

    def save(self, path: str | Path) -> Path:
        from mpnet_model.io.atomic import atomic_write

        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=self.labels, instances=self.instances,
                            info=np.array(json.dumps(self.info, sort_keys=True)))
        with atomic_write(Path(path)) as stream:
            stream.write(buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> GoldenReference:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(data['labels'].astype(np.uint8), data['instances'].astype(np.int32),
                       json.loads(str(data['info'])))

    @property
    def int_labels(self) -> np.ndarray:
        """(N,) int64 labels with -1 where nothing was predicted (the frame path's convention)."""
        return np.where(self.labels == NO_LABEL, -1, self.labels.astype(np.int64))

    @property
    def num_instances(self) -> int:
        return int(np.unique(self.instances[self.instances >= 0]).size)


@dataclass
class GoldenReport:
    """How a run compares with its reference; `ok` when every figure is within the tolerance."""

    num_points: int
    label_agreement: float
    histogram_shift: float
    instances_reference: int
    instances_run: int
    instance_ari: float
    tolerance: GoldenTolerance = field(default_factory=GoldenTolerance)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return (f'{self.num_points} points: labels agree {self.label_agreement:.2%}, histogram shift '
                f'{self.histogram_shift:.2%}, instances {self.instances_run} vs {self.instances_reference}, '
                f'ARI {self.instance_ari:.3f}' + ('' if self.ok else ' -- FAILED: ' + '; '.join(self.failures)))

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values['ok'] = self.ok
        return values


def class_histogram(labels: np.ndarray, num_bins: int = NO_LABEL + 1) -> np.ndarray:
    """Point counts per label value (uint8 labels, NO_LABEL included)."""
    return np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_bins)


def instance_ari(reference: np.ndarray, run: np.ndarray) -> float:
    """Adjusted Rand index of two instance partitions over the points with an instance on either side
    (1.0 when neither side has any instance)."""
    from sklearn.metrics import adjusted_rand_score

    reference, run = np.asarray(reference).reshape(-1), np.asarray(run).reshape(-1)
    either = (reference >= 0) | (run >= 0)
    if not either.any():
        return 1.0
    return float(adjusted_rand_score(reference[either], run[either]))


def compare(reference: GoldenReference, labels: np.ndarray, instances: np.ndarray,
            tolerance: GoldenTolerance | None = None) -> GoldenReport:
    """Judge a run's per-point labels (int, -1 = none) and instances against `reference`."""
    tolerance = tolerance or GoldenTolerance()
    run = GoldenReference.from_result(labels, instances)
    n = reference.labels.size
    if run.labels.size != n:
        return GoldenReport(run.labels.size, 0.0, 1.0, reference.num_instances, run.num_instances, 0.0, tolerance,
                            [f'the run has {run.labels.size} points, the reference {n}: not the same input'])
    agreement = float(np.mean(run.labels == reference.labels)) if n else 1.0
    shift = 0.5 * float(np.abs(class_histogram(run.labels) - class_histogram(reference.labels)).sum()) / max(n, 1)
    ari = instance_ari(reference.instances, run.instances)
    report = GoldenReport(n, agreement, shift, reference.num_instances, run.num_instances, ari, tolerance)
    if agreement < tolerance.min_label_agreement:
        report.failures.append(f'label agreement {agreement:.2%} < {tolerance.min_label_agreement:.0%}')
    if shift > tolerance.max_histogram_shift:
        report.failures.append(f'class histogram shift {shift:.2%} > {tolerance.max_histogram_shift:.0%}')
    slack = tolerance.instance_count_slack(report.instances_reference)
    if abs(report.instances_run - report.instances_reference) > slack:
        report.failures.append(f'{report.instances_run} instances, reference {report.instances_reference} '
                               f'(tolerance +-{slack})')
    if ari < tolerance.min_instance_ari:
        report.failures.append(f'instance ARI {ari:.3f} < {tolerance.min_instance_ari}')
    return report
