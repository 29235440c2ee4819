"""Metrics against hand-computed rooms (every expected number below is counted by hand in the comments)."""
import numpy as np
import pytest

from mpnet_model.eval.metrics import (
    InstanceEvaluator,
    InstanceRecords,
    MetricInputError,
    ScanNetAPEvaluator,
    SemanticEvaluator,
    fragments_per_gt,
    masks_from_instance_labels,
    precision_on_subset,
    select_rare_cases,
)

# ------------------------------------------------------------------------------------------------ semantic


def test_semantic_hand_example():
    # gt     0 0 1 1 1 -1 ; pred 0 1 1 1 0 2 → last point ignored.
    # confusion: (0,0)=1 (0,1)=1 (1,1)=2 (1,0)=1 → tp=[1,2,0], gt=[2,3,0], pred=[2,3,0]
    evaluator = SemanticEvaluator(3)
    evaluator.add(np.array([0, 1, 1, 1, 0, 2]), np.array([0, 0, 1, 1, 1, -1]))
    result = evaluator.compute()
    assert result['oAcc'] == pytest.approx(3 / 5)
    np.testing.assert_allclose(result['iou'][:2], [1 / 3, 2 / 4])
    assert np.isnan(result['iou'][2])                       # class 2 absent from gt and prediction: excluded
    assert result['mIoU'] == pytest.approx((1 / 3 + 1 / 2) / 2)
    np.testing.assert_allclose(result['acc'][:2], [1 / 2, 2 / 3])
    assert result['mAcc'] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_semantic_accumulates_rooms_and_counts_false_predicted_class():
    evaluator = SemanticEvaluator(3)
    evaluator.add([0, 0], [0, 0])
    evaluator.add([0, 2], [0, 0])                            # class 2 predicted but never in gt: IoU 0, acc NaN
    result = evaluator.compute()
    np.testing.assert_allclose(result['iou'][[0, 2]], [3 / 4, 0.0])
    assert result['mIoU'] == pytest.approx(3 / 8)
    assert result['mAcc'] == pytest.approx(3 / 4)
    assert result['confusion'].sum() == 4


def test_semantic_rejects_bad_input():
    evaluator = SemanticEvaluator(3)
    with pytest.raises(MetricInputError, match='pred has 1 points'):
        evaluator.add([0], [0, 1])
    with pytest.raises(MetricInputError, match='outside'):
        evaluator.add([0, 3], [0, 1])
    with pytest.raises(MetricInputError, match='1-D'):
        evaluator.add(np.zeros((2, 2), int), np.zeros((2, 2), int))


def test_semantic_empty_is_nan():
    result = SemanticEvaluator(2).compute()
    assert np.isnan(result['oAcc']) and np.isnan(result['mIoU'])


# ------------------------------------------------------------------------------------------------ instance
# Room "a", 10 points, classes 0 and 1:
#   gt_sem   0 0 0 0 | 0 0 | 1 1 1 1
#   gt_ins   0 0 0 0 | 1 1 | 2 2 2 2        g0 (cls 0, 4 pts), g1 (cls 0, 2 pts), g2 (cls 1, 4 pts)
#   pred_ins 5 5 5 -1| 6 6 | 7 7 7 8        p5 (3 pts), p6 (2 pts, sem 0/1 tie → class 0), p7 (3 pts), p8 (1 pt)
#   pred_sem 0 0 0 0 | 0 1 | 1 1 1 1
# IoU: p5-g0 3/4, p6-g1 1, p7-g2 3/4, p8-g2 1/4.
# class 0: cov (0.75 + 1) / 2 = 0.875, wcov (0.75*4 + 1*2) / 6 = 5/6; TP p5, p6 → prec 1, rec 1
# class 1: cov 0.75, wcov 0.75; TP p7, FP p8 → prec 1/2, rec 1
ROOM_A = dict(
    gt_sem=np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1]),
    gt_ins=np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2]),
    pred_ins=np.array([5, 5, 5, -1, 6, 6, 7, 7, 7, 8]),
    pred_sem=np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]),
)
# Room "b": one gt chair (class 0, 2 pts), nothing predicted → its coverage is 0.
ROOM_B = dict(gt_sem=np.array([0, 0]), gt_ins=np.array([3, 3]), pred_ins=np.array([-1, -1]),
              pred_sem=np.array([0, 0]))


def _add(evaluator, room, room_id):
    evaluator.add(room['pred_sem'], room['pred_ins'], room['gt_sem'], room['gt_ins'], room_id=room_id)


def test_instance_single_room_hand_example():
    evaluator = InstanceEvaluator(2)
    _add(evaluator, ROOM_A, 'a')
    result = evaluator.compute()
    np.testing.assert_allclose(result['cov'], [0.875, 0.75])
    np.testing.assert_allclose(result['wcov'], [5 / 6, 0.75])
    np.testing.assert_allclose(result['precision'], [1.0, 0.5])
    np.testing.assert_allclose(result['recall'], [1.0, 1.0])
    assert result['mCov'] == pytest.approx(0.8125)
    assert result['mWCov'] == pytest.approx((5 / 6 + 0.75) / 2)
    assert result['mPrec'] == pytest.approx(0.75)
    assert result['mRec'] == pytest.approx(1.0)
    np.testing.assert_array_equal(result['num_pred'], [2, 2])


def test_over_segmentation_hand_example():
    # gt: wall g0 (class 0, 6 pts), chair g1 (class 1, 3 pts), table g2 (class 1, 3 pts).
    # pred: the wall in three pieces p0 (3), p1 (2), p2 (1 pt, also class 0); p3 swallows the chair and 1 point of
    #       the table (home: the chair, 3 of its 4 points); p4 = the other 2 table points (home: the table).
    # fragments: g0 3 (split), g1 1, g2 1. class 0: 3.0 fragments, split 1/1; class 1: (1 + 1) / 2, split 0.
    gt_sem = np.array([0] * 6 + [1] * 6)
    gt_ins = np.array([0] * 6 + [1] * 3 + [2] * 3)
    pred_ins = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    evaluator = InstanceEvaluator(2)
    evaluator.add(gt_sem, pred_ins, gt_sem, gt_ins, room_id='r')
    result = evaluator.compute()
    np.testing.assert_allclose(result['fragments'], [3.0, 1.0])
    np.testing.assert_allclose(result['split'], [1.0, 0.0])
    assert result['mFrag'] == pytest.approx(2.0)
    assert result['mSplit'] == pytest.approx(0.5)
    # A second room: the chair missed entirely (nothing predicted) -> 0 fragments, not split.
    evaluator.add(np.array([1, 1]), np.array([-1, -1]), np.array([1, 1]), np.array([0, 0]), room_id='s')
    result = evaluator.compute()
    np.testing.assert_allclose(result['fragments'], [3.0, 2 / 3])
    np.testing.assert_allclose(result['split'], [1.0, 0.0])
    # Classes without gt instances are undefined, not 0.
    assert np.isnan(InstanceEvaluator(3).compute()['fragments']).all()


def test_fragments_per_gt_tie_and_untouched_predictions():
    # p0 touches g0 and g1 with 2 points each (tie -> g0); p1 lies on no gt instance.
    intersection = np.array([[2, 2], [0, 0]])
    np.testing.assert_array_equal(fragments_per_gt(intersection), [1, 0])
    np.testing.assert_array_equal(fragments_per_gt(np.zeros((0, 3), dtype=np.int64)), [0, 0, 0])


def test_instance_coverage_is_mean_of_room_means_as_asis():
    # class 0 over rooms: room a 0.875, room b 0 → 0.4375 (a mean over all three gt chairs would give 0.583)
    evaluator = InstanceEvaluator(2)
    _add(evaluator, ROOM_A, 'a')
    _add(evaluator, ROOM_B, 'b')
    result = evaluator.compute()
    assert result['cov'][0] == pytest.approx(0.4375)
    assert result['wcov'][0] == pytest.approx(5 / 12)
    assert result['recall'][0] == pytest.approx(2 / 3)      # 2 TP of 3 gt chairs
    assert result['precision'][0] == pytest.approx(1.0)


def test_instance_no_predictions_and_no_gt_of_a_class():
    evaluator = InstanceEvaluator(3)
    _add(evaluator, ROOM_B, 'b')                              # class 0: gt but no predictions
    evaluator.add(np.array([2, 2]), np.array([0, 0]), np.array([1, 1]), np.array([-1, -1]), room_id='c')
    result = evaluator.compute()                             # class 2: predicted, no gt; class 1: points, no ins
    assert result['precision'][0] == 0.0 and result['recall'][0] == 0.0 and result['cov'][0] == 0.0
    assert result['precision'][2] == 0.0 and np.isnan(result['recall'][2]) and np.isnan(result['cov'][2])
    assert np.isnan(result['precision'][1]) and np.isnan(result['recall'][1])
    assert result['mPrec'] == 0.0 and result['mRec'] == 0.0


def test_instance_ignore_label_points_are_dropped():
    reference = InstanceEvaluator(2)
    _add(reference, ROOM_A, 'a')
    with_ignored = InstanceEvaluator(2)
    # three extra gt-ignored points, predicted as part of p5 and with an out-of-range class: must change nothing
    with_ignored.add(np.append(ROOM_A['pred_sem'], [7, 7, 7]), np.append(ROOM_A['pred_ins'], [5, 5, 5]),
                     np.append(ROOM_A['gt_sem'], [-1, -1, -1]), np.append(ROOM_A['gt_ins'], [0, 0, 0]), room_id='a')
    for key in ('cov', 'wcov', 'precision', 'recall'):
        np.testing.assert_allclose(with_ignored.compute()[key], reference.compute()[key])


def test_instance_rejects_duplicate_room_and_bad_labels():
    evaluator = InstanceEvaluator(2)
    _add(evaluator, ROOM_A, 'a')
    with pytest.raises(MetricInputError, match="'a' was already added"):
        _add(evaluator, ROOM_A, 'a')
    with pytest.raises(MetricInputError, match='pred_sem has labels outside'):
        evaluator.add([0, 5], [0, 0], [0, 0], [0, 0], room_id='z')


def test_instance_records_and_rare_cases():
    evaluator = InstanceEvaluator(2)
    _add(evaluator, ROOM_A, 'a')
    _add(evaluator, ROOM_B, 'b')
    records = evaluator.instance_records()
    gt_by_key = dict(zip(records.gt.keys(), zip(records.gt.best_iou, records.gt.best_match)))
    assert gt_by_key == {('a', 0): (0.75, 5), ('a', 1): (1.0, 6), ('a', 2): (0.75, 7), ('b', 3): (0.0, -1)}
    pred_by_key = dict(zip(records.pred.keys(), zip(records.pred.best_iou, records.pred.best_match)))
    assert pred_by_key == {('a', 5): (0.75, 0), ('a', 6): (1.0, 1), ('a', 7): (0.75, 2), ('a', 8): (0.25, 2)}

    assert select_rare_cases(records.gt, 0.2) == [('b', 3)]                   # ceil(0.2 * 4) = 1
    assert select_rare_cases(records.gt, 0.5) == [('b', 3), ('a', 0)]         # tie at 0.75 → lower instance id
    assert select_rare_cases(records.gt, 0.25, per_class=True) == [('b', 3), ('a', 2)]


def test_precision_on_subset_for_another_model():
    baseline = InstanceEvaluator(2)
    _add(baseline, ROOM_A, 'a')
    rare = [('a', 2)]                                      # the table, chosen by hand
    own = precision_on_subset(baseline.instance_records(), rare, num_classes=2)
    # predictions attributed to gt ('a', 2): p7 (IoU 0.75, TP) and p8 (0.25, FP)
    np.testing.assert_allclose(own['precision'], [np.nan, 0.5])
    np.testing.assert_allclose(own['recall'], [np.nan, 1.0])
    assert own['mPrec'] == pytest.approx(0.5)

    # another model predicts the table as one instance: precision 1 on the same case
    other = InstanceEvaluator(2)
    better = dict(ROOM_A, pred_ins=np.array([5, 5, 5, -1, 6, 6, 7, 7, 7, 7]))
    _add(other, better, 'a')
    assert precision_on_subset(other.instance_records(), rare, num_classes=2)['mPrec'] == pytest.approx(1.0)

    with pytest.raises(ValueError, match='1 of 1 subset keys are not gt'):
        precision_on_subset(other.instance_records(), [('zz', 1)], num_classes=2)


def test_instance_records_roundtrip(tmp_path):
    evaluator = InstanceEvaluator(2)
    _add(evaluator, ROOM_A, 'a')
    records = evaluator.instance_records().gt
    path = tmp_path / 'sub' / 'baseline_gt.npz'
    records.save(str(path))
    loaded = InstanceRecords.load(str(path))
    assert loaded.keys() == records.keys()
    np.testing.assert_allclose(loaded.best_iou, records.best_iou)
    with pytest.raises(ValueError, match='cannot read instance records'):
        InstanceRecords.load(str(tmp_path / 'missing.npz'))


def test_instance_large_room_is_fast_and_consistent():
    rng = np.random.default_rng(0)
    num_points = 200_000
    gt_ins = rng.integers(0, 300, num_points)
    gt_sem = gt_ins % 13
    pred_ins = np.where(rng.random(num_points) < 0.9, gt_ins, rng.integers(0, 300, num_points))
    evaluator = InstanceEvaluator(13)
    evaluator.add(gt_sem, pred_ins, gt_sem, gt_ins)
    result = evaluator.compute()
    # 90 % of each gt instance (~667 pts) stays, ~67 random points join: IoU ≈ 600 / 734 ≈ 0.82
    assert 0.78 < result['mCov'] < 0.86
    assert result['mPrec'] == pytest.approx(1.0) and result['mRec'] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ ScanNet AP
# Scan with class 1 evaluated (class 0 = wall, void here), min_region_size 1:
#   gt instance g0 = points 0-3, g1 = points 4-7 (class 1); points 8-11 class 0 (void).
#   P1 conf 0.9 = points 0-3 (IoU 1 with g0), P2 conf 0.8 = point 0 (IoU 1/4: FP),
#   P3 conf 0.7 = points 4-7 (IoU 1 with g1), P4 conf 0.95 = points 8-11 (all void: ignored, not FP).
# Ranked: 0.9 TP, 0.8 FP, 0.7 TP. Official PR points (ascending unique scores 0.7, 0.8, 0.9):
#   precision [2/3, 1/2, 1, 1], recall [1, 1/2, 1/2, 0]; step widths 0.5 * (r[i-1] - r[i+1]) with r padded
#   [1, 1, .5, .5, 0, 0] → [.25, .25, .25, .25]; AP = .25 * (2/3 + 1/2 + 1 + 1) = 19/24.
def _scan_masks():
    masks = np.zeros((4, 12), dtype=bool)
    masks[0, 0:4] = True
    masks[1, 0] = True
    masks[2, 4:8] = True
    masks[3, 8:12] = True
    return masks


SCAN_GT_SEM = np.array([1] * 8 + [0] * 4)
SCAN_GT_INS = np.array([0] * 4 + [1] * 4 + [2] * 4)


def test_scannet_ap_hand_example():
    evaluator = ScanNetAPEvaluator(2, eval_classes=[1], min_region_size=1)
    evaluator.add(SCAN_GT_SEM, SCAN_GT_INS, _scan_masks(), [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.95])
    result = evaluator.compute()
    assert result['ap50'][1] == pytest.approx(19 / 24)
    assert result['ap25'][1] == pytest.approx(19 / 24)
    assert result['ap'][1] == pytest.approx(19 / 24)
    assert np.isnan(result['ap'][0])                        # not evaluated
    assert result['mAP'] == pytest.approx(19 / 24)
    np.testing.assert_allclose(result['thresholds'][:-1], np.arange(0.5, 0.95, 0.05))


def test_scannet_ap_void_prediction_counts_when_on_evaluated_class():
    # evaluating both classes makes P4 (class 1 mask on class-0 points) a real false positive with the top score
    evaluator = ScanNetAPEvaluator(2, min_region_size=1)
    evaluator.add(SCAN_GT_SEM, SCAN_GT_INS, _scan_masks(), [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.95])
    result = evaluator.compute()
    # ascending scores 0.7 TP, 0.8 FP, 0.9 TP, 0.95 FP: precision [2/4, 1/3, 1/2, 0, 1], recall [1, .5, .5, 0, 0]
    # padded r [1, 1, .5, .5, 0, 0, 0] → widths [.25, .25, .25, .25, 0]; AP = .25 * (1/2 + 1/3 + 1/2) = 1/3
    assert result['ap50'][1] == pytest.approx(1 / 3)
    assert result['ap50'][0] == 0.0                         # class 0 has a gt instance but no prediction


def test_scannet_ap_threshold_and_group_region():
    # g0 = points 0-3 (class 1); points 4-5 class 1 without instance (group); one mask on points 2-5, conf 1.
    # IoU with g0 = 2 / 6 = 1/3 → TP at 0.25 (AP 1). At 0.5 no match; 2/4 of the mask on the group region is not
    # > 0.5, so it is a false positive: precision 0 → AP 0.
    gt_sem = np.array([1, 1, 1, 1, 1, 1])
    gt_ins = np.array([0, 0, 0, 0, -1, -1])
    mask = np.array([[0, 0, 1, 1, 1, 1]], dtype=bool)
    evaluator = ScanNetAPEvaluator(2, eval_classes=[1], min_region_size=1)
    evaluator.add(gt_sem, gt_ins, mask, [1], [1.0])
    result = evaluator.compute()
    assert result['ap25'][1] == pytest.approx(1.0)
    assert result['ap50'][1] == 0.0 and result['ap'][1] == 0.0


def test_scannet_ap_duplicate_is_false_positive_and_small_regions_skipped():
    # two identical masks on g0 (conf 0.9 and 0.6): second is a FP with the lower score → ranked TP, FP
    # PR: precision [1/2, 1, 1], recall [1, 1, 0]; padded [1, 1, 1, 0, 0] → widths [0, .5, .5]; AP = 1.
    gt_sem = np.array([1] * 4)
    gt_ins = np.array([0] * 4)
    masks = np.ones((2, 4), dtype=bool)
    evaluator = ScanNetAPEvaluator(2, eval_classes=[1], min_region_size=1)
    evaluator.add(gt_sem, gt_ins, masks, [1, 1], [0.6, 0.9])
    assert evaluator.compute()['ap50'][1] == pytest.approx(1.0)
    # same scan with the default 100-point minimum: gt and masks too small → class undefined (NaN)
    strict = ScanNetAPEvaluator(2, eval_classes=[1])
    strict.add(gt_sem, gt_ins, masks, [1, 1], [0.6, 0.9])
    assert np.isnan(strict.compute()['ap50'][1])


def test_scannet_ap_no_predictions_and_from_labels():
    evaluator = ScanNetAPEvaluator(2, min_region_size=1)
    evaluator.add(SCAN_GT_SEM, SCAN_GT_INS, np.zeros((0, 12), bool), [], [])
    result = evaluator.compute()
    np.testing.assert_array_equal(result['ap'], [0.0, 0.0])

    masks, labels, scores = masks_from_instance_labels(np.array([4, 4, -1, 9]), np.array([1, 0, 0, 1]), 2,
                                                       point_scores=np.array([0.2, 0.4, 1.0, 0.5]))
    np.testing.assert_array_equal(masks, [[1, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(labels, [0, 1])           # tie 1/0 → smaller class
    np.testing.assert_allclose(scores, [0.3, 0.5])

    by_labels = ScanNetAPEvaluator(2, eval_classes=[1], min_region_size=1)
    by_labels.add_from_labels(SCAN_GT_SEM, SCAN_GT_INS, pred_sem=SCAN_GT_SEM, pred_ins=SCAN_GT_INS)
    assert by_labels.compute()['ap'][1] == pytest.approx(1.0)
    with pytest.raises(MetricInputError, match='pred_masks must be'):
        by_labels.add(SCAN_GT_SEM, SCAN_GT_INS, np.ones((1, 5), bool), [1], [1.0])
