"""Identity metrics for instance ids over a sequence of frames with ground truth (CLEAR-MOT style counts).

Per frame, each ground-truth instance (with at least `min_points` points in the frame) is matched to the predicted
instance sharing the most of its points when their point IoU is >= `min_iou` (0.5 makes the matching one-to-one).
Over the sequence, per ground-truth instance:

* an **id switch** is a matched frame whose predicted id differs from the id it was last matched to;
* a **fragmentation** is a return to "matched" after one or more frames where it was visible but unmatched.

`ids_per_object` is the mean number of distinct predicted ids an object received (1.0 is perfect).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IdentityMetrics:
    frames: int
    objects: int               # ground-truth instances seen in any frame
    matches: int               # (frame, object) pairs matched
    visible: int               # (frame, object) pairs visible
    id_switches: int
    fragmentations: int
    ids_per_object: float

    @property
    def recall(self) -> float:
        return self.matches / self.visible if self.visible else 0.0


def match_frame(gt: np.ndarray, pred: np.ndarray, min_iou: float = 0.5, min_points: int = 1
                ) -> tuple[dict[int, int], set[int]]:
    """({gt id: pred id} for pairs with point IoU >= min_iou, visible gt ids). -1 means none in both."""
    gt, pred = np.asarray(gt).reshape(-1), np.asarray(pred).reshape(-1)
    gt_ids, gt_sizes = np.unique(gt[gt >= 0], return_counts=True)
    visible = {int(g) for g, size in zip(gt_ids, gt_sizes) if size >= min_points}
    pred_ids, pred_sizes = np.unique(pred[pred >= 0], return_counts=True)
    pred_size = dict(zip(pred_ids.tolist(), pred_sizes.tolist()))
    gt_size = dict(zip(gt_ids.tolist(), gt_sizes.tolist()))
    both = (gt >= 0) & (pred >= 0)
    pairs, counts = np.unique(np.stack([gt[both], pred[both]], axis=1), axis=0, return_counts=True)
    matches: dict[int, tuple[int, float]] = {}
    for (g, p), shared in zip(pairs.tolist(), counts.tolist()):
        if g not in visible:
            continue
        iou = shared / (gt_size[g] + pred_size[p] - shared)
        if iou >= min_iou and iou > matches.get(g, (-1, -1.0))[1]:
            matches[g] = (p, iou)
    return {g: p for g, (p, _) in matches.items()}, visible


def identity_metrics(frames: Iterable[tuple[np.ndarray, np.ndarray]], min_iou: float = 0.5,
                     min_points: int = 1) -> IdentityMetrics:
    """Id switches and fragmentations over `frames` of (ground-truth ids (N,), predicted ids (N,))."""
    last_id: dict[int, int] = {}
    was_matched: dict[int, bool] = {}
    interrupted: dict[int, bool] = {}
    ids_seen: dict[int, set[int]] = {}
    count = matches_total = visible_total = switches = fragments = 0
    for gt, pred in frames:
        count += 1
        matches, visible = match_frame(gt, pred, min_iou, min_points)
        visible_total += len(visible)
        matches_total += len(matches)
        for g in visible:
            ids_seen.setdefault(g, set())
            if g in matches:
                p = matches[g]
                if g in last_id and last_id[g] != p:
                    switches += 1
                if interrupted.get(g):
                    fragments += 1
                    interrupted[g] = False
                last_id[g] = p
                ids_seen[g].add(p)
                was_matched[g] = True
            elif was_matched.get(g):
                interrupted[g] = True
                was_matched[g] = False
    tracked = [len(v) for v in ids_seen.values() if v]
    return IdentityMetrics(frames=count, objects=len(ids_seen), matches=matches_total, visible=visible_total,
                           id_switches=switches, fragmentations=fragments,
                           ids_per_object=float(np.mean(tracked)) if tracked else 0.0)


def sweep_masks(xyz: np.ndarray, size: float = 3.0, step: float = 0.25, return_trip: bool = False
                ) -> list[np.ndarray]:
    """A moving-sensor sequence over a whole room: masks of the points inside a `size` x `size` m (horizontal)
    window whose centre moves `step` m per frame along the room's longer horizontal axis (and back with
    `return_trip`), centred on the other axis. Objects enter, cross and leave the window, partly seen at its edges;
    on the return trip they come back after being out of view for many frames."""
    xyz = np.asarray(xyz)
    low, high = xyz[:, :2].min(axis=0), xyz[:, :2].max(axis=0)
    axis = int(np.argmax(high - low))
    other = 1 - axis
    centre_other = (low[other] + high[other]) / 2
    forward = np.arange(low[axis] + size / 2, high[axis] - size / 2 + 1e-9, step)
    if forward.size == 0:
        forward = np.array([(low[axis] + high[axis]) / 2])
    positions = np.concatenate([forward, forward[::-1][1:]]) if return_trip else forward
    masks = []
    for position in positions:
        inside = (np.abs(xyz[:, axis] - position) <= size / 2) & (np.abs(xyz[:, other] - centre_other) <= size / 2)
        masks.append(inside)
    return masks
