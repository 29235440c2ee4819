"""Persistent instance ids: box IoU, the tracker's association rules, and id switches / fragmentations on a
moving-sensor sequence with ground truth (a synthetic room swept by a moving window)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mpnet_model.data.synthetic import generate_room
from mpnet_model.eval.tracking_metrics import identity_metrics, match_frame, sweep_masks
from mpnet_model.infer.tracking import InstanceTracker, box_iou, relabel


@dataclass
class Info:
    id: int
    class_id: int
    centre: np.ndarray
    extent: np.ndarray


def info(local_id, class_id, centre, extent=(1.0, 1.0, 1.0)):
    return Info(local_id, class_id, np.asarray(centre, float), np.asarray(extent, float))


def test_box_iou_reference():
    a = np.array([[0.0, 0.0, 0.0]]), np.array([[1.0, 1.0, 1.0]])
    b = np.array([[0.5, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), np.array([[1.0] * 3, [1.0] * 3, [2.0] * 3])
    iou = box_iou(a[0], a[1], b[0], b[1])
    np.testing.assert_allclose(iou, [[0.5 / 1.5, 0.0, 1.0 / 8.0]])


def test_ids_persist_when_the_frame_order_changes():
    tracker = InstanceTracker()
    first = tracker.update([info(0, 1, (0, 0, 0)), info(1, 2, (5, 0, 0)), info(2, 1, (10, 0, 0))])
    # Next frame: same objects slightly moved, numbered in another order (the segmenter sorts by size).
    second = tracker.update([info(0, 1, (10.2, 0, 0)), info(1, 1, (0.1, 0, 0)), info(2, 2, (5, 0.2, 0))])
    assert list(second) == [first[2], first[0], first[1]]


def test_class_gates_association_and_new_objects_get_fresh_ids():
    tracker = InstanceTracker()
    (chair,) = tracker.update([info(0, 1, (0, 0, 0))])
    ids = tracker.update([info(0, 2, (0, 0, 0)), info(1, 1, (0.05, 0, 0))])   # a table where the chair was
    assert ids[1] == chair and ids[0] not in (chair,) and ids[0] > chair


def test_miss_budget_keeps_then_retires_an_id():
    tracker = InstanceTracker(max_misses=2)
    (first,) = tracker.update([info(0, 1, (0, 0, 0))])
    tracker.update([])
    tracker.update([])                                   # unseen for 2 frames: still within the budget
    (again,) = tracker.update([info(0, 1, (0, 0, 0))])
    assert again == first
    for _ in range(3):
        tracker.update([])                               # unseen for 3 > 2 frames: retired
    (later,) = tracker.update([info(0, 1, (0, 0, 0))])
    assert later != first


def test_far_moves_are_not_associated():
    tracker = InstanceTracker(max_distance=1.0, min_iou=0.1)
    (first,) = tracker.update([info(0, 1, (0, 0, 0), (0.5, 0.5, 0.5))])
    (second,) = tracker.update([info(0, 1, (1.5, 0, 0), (0.5, 0.5, 0.5))])   # no overlap, 1.5 m > 1 m
    assert second != first


def test_relabel_maps_points_and_infos_by_their_own_ids():
    instances = np.array([-1, 3, 3, 0, -1])
    infos = [info(3, 1, (0, 0, 0)), info(0, 2, (1, 1, 1))]
    points, renamed = relabel(instances, infos, np.array([17, 4]))
    assert points.tolist() == [-1, 17, 17, 4, -1] and [i.id for i in renamed] == [17, 4]


def test_identity_metrics_reference():
    gt = np.array([0] * 10 + [1] * 10)
    frames = [(gt, np.array([5] * 10 + [6] * 10)),
              (gt, np.array([5] * 10 + [6] * 10)),
              (gt, np.array([7] * 10 + [6] * 10)),      # object 0: switch 5 -> 7
              (gt, np.array([-1] * 10 + [6] * 10)),     # object 0: visible, unmatched
              (gt, np.array([7] * 10 + [6] * 10))]      # object 0: back (fragmentation), same id: no switch
    metrics = identity_metrics(frames)
    assert (metrics.id_switches, metrics.fragmentations, metrics.objects) == (1, 1, 2)
    assert metrics.matches == 9 and metrics.visible == 10 and metrics.ids_per_object == 1.5
    matched, visible = match_frame(gt, np.array([5] * 4 + [6] * 16))      # IoU 0.4 and 10/16 = 0.625
    assert matched == {1: 6} and visible == {0, 1}


def frame_detections(xyz, sem, ins, rng, min_points=30):
    """What a good segmenter reports for a frame: the visible ground-truth instances (a few points lost at random),
    numbered largest first (the segmenter's per-frame order), with their class and box."""
    keep = rng.random(len(xyz)) > 0.05
    ids, sizes = np.unique(ins[keep], return_counts=True)
    order = [i for i in ids[np.argsort(-sizes, kind='stable')] if (ins[keep] == i).sum() >= min_points]
    local = np.full(len(xyz), -1)
    infos = []
    for k, gt_id in enumerate(order):
        members = keep & (ins == gt_id)
        local[members] = k
        low, high = xyz[members].min(axis=0), xyz[members].max(axis=0)
        infos.append(info(k, int(np.bincount(sem[members]).argmax()), (low + high) / 2, high - low))
    return local, infos


@pytest.mark.parametrize('seed', [3, 11])
def test_moving_sensor_sequence_keeps_ids(seed):
    xyz, _rgb, sem, ins, _meta = generate_room(np.random.default_rng(seed), room_type='office', density=300)
    masks = sweep_masks(xyz, size=3.0, step=0.25)
    assert len(masks) >= 5
    rng = np.random.default_rng(0)
    tracked, per_frame = [], []
    tracker = InstanceTracker()
    for mask in masks:
        local, infos = frame_detections(xyz[mask], sem[mask], ins[mask], rng)
        persistent, _ = relabel(local, infos, tracker.update(infos))
        tracked.append((ins[mask], persistent))
        per_frame.append((ins[mask], local))
    with_tracker = identity_metrics(tracked, min_points=30)
    without = identity_metrics(per_frame, min_points=30)
    print(f'seed {seed}: {len(masks)} frames, {with_tracker.objects} objects: id switches {with_tracker.id_switches} '
          f'(per-frame ids {without.id_switches}), fragmentations {with_tracker.fragmentations}, ids per object '
          f'{with_tracker.ids_per_object:.2f} ({without.ids_per_object:.2f})')
    assert without.id_switches > 10                       # the problem: per-frame numbering renames objects
    assert with_tracker.id_switches <= max(1, without.id_switches // 20)
    assert with_tracker.ids_per_object < 1.1
    assert with_tracker.recall == without.recall          # the tracker renames, it never loses an instance
