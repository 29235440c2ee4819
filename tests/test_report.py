"""Dominance tiers counted by hand, and the written Markdown / CSV reports."""
import csv
from collections import Counter

import numpy as np
import pytest

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.eval.metrics import SemanticEvaluator
from mpnet_model.eval.report import assign_tiers, split_results, tier_means, tier_shares, write_report

# 13 classes; sorted by share: 100 (c1), 60 (c11), 50 (c3), 30 (c8) | 20 (c6), 10 (c12), 9 (c9), 7 (c5), 5 (c0)
# | 4 (c10), 3 (c2), 2 (c7), 1 (c4). Total 301 points.
SHARES = np.array([5, 100, 3, 50, 1, 7, 20, 2, 30, 9, 4, 60, 10])
DOMINANT, MID, NON_DOMINANT = {1, 11, 3, 8}, {6, 12, 9, 5, 0}, {10, 2, 7, 4}


def test_tiers_for_13_classes_by_hand():
    tiers = assign_tiers(SHARES)
    assert {c for c, t in enumerate(tiers) if t == 'dominant'} == DOMINANT
    assert {c for c, t in enumerate(tiers) if t == 'mid'} == MID
    assert {c for c, t in enumerate(tiers) if t == 'non_dominant'} == NON_DOMINANT
    shares = tier_shares(SHARES)
    assert shares['dominant'] == pytest.approx(240 / 301)
    assert shares['mid'] == pytest.approx(51 / 301)
    assert shares['non_dominant'] == pytest.approx(10 / 301)


def test_tier_means_by_hand_and_skip_nan():
    values = np.arange(13, dtype=float)                      # value = class index
    means = tier_means(values, SHARES)
    assert means == pytest.approx({'dominant': (1 + 11 + 3 + 8) / 4, 'mid': (6 + 12 + 9 + 5 + 0) / 5,
                                   'non_dominant': (10 + 2 + 7 + 4) / 4})
    values[1] = np.nan                                       # undefined metric for class 1: left out
    assert tier_means(values, SHARES)['dominant'] == pytest.approx((11 + 3 + 8) / 3)
    # fractions instead of counts give the same tiers
    assert assign_tiers(SHARES / SHARES.sum()) == assign_tiers(SHARES)


@pytest.mark.parametrize('num_classes, expected', [(20, (6, 8, 6)), (12, (4, 4, 4)), (3, (1, 1, 1)), (2, (0, 2, 0))])
def test_tier_sizes_for_other_class_counts(num_classes, expected):
    counts = Counter(assign_tiers(np.arange(num_classes, 0, -1)))
    assert (counts['dominant'], counts['mid'], counts['non_dominant']) == expected


def test_equal_shares_keep_class_order():
    assert assign_tiers([1, 1, 1, 1, 1, 1]) == ['dominant', 'dominant', 'mid', 'mid', 'non_dominant',
                                                'non_dominant']


def test_tier_inputs_are_checked():
    with pytest.raises(ValueError, match='class_shares must be finite'):
        assign_tiers([1, -2, 3])
    with pytest.raises(ValueError, match='per_class_values has shape'):
        tier_means([1.0, 2.0], [1, 2, 3])


def _results():
    evaluator = SemanticEvaluator(13)
    gt = np.repeat(np.arange(13), 4)
    pred = gt.copy()
    pred[::4] = 0                                            # one of four points of every class → class 0
    evaluator.add(pred, gt)
    instance = {'mPrec': 0.5, 'precision': np.linspace(0, 1, 13), 'num_gt': np.arange(13)}
    return {'semantic': evaluator.compute(), 'instance': instance}


def test_split_results_keeps_scalars_and_per_class_arrays_only():
    scalars, per_class = split_results(_results(), 13)
    assert {'semantic.oAcc', 'semantic.mIoU', 'instance.mPrec'} <= set(scalars)
    assert 'semantic.confusion' not in per_class and 'semantic.iou' in per_class
    assert per_class['instance.precision'].shape == (13,)


def test_write_report_files(tmp_path):
    paths = write_report(_results(), S3DIS_CLASSES, SHARES, tmp_path / 'out', 'Area 5: MPNet')
    assert set(paths) == {'markdown', 'per_class_csv', 'summary_csv', 'tiers_csv'}
    assert paths['markdown'].name == 'area_5_mpnet.md'
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(p.name for p in paths.values())

    with open(paths['per_class_csv'], newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [row['class'] for row in rows] == list(S3DIS_CLASSES)
    assert rows[1]['tier'] == 'dominant' and rows[4]['tier'] == 'non_dominant' and rows[0]['tier'] == 'mid'
    assert float(rows[12]['instance.precision']) == pytest.approx(1.0)
    # class 2 (wall): 3 of 4 points right, nothing else predicted as wall → IoU 3/4
    assert float(rows[2]['semantic.iou']) == pytest.approx(0.75)

    with open(paths['tiers_csv'], newline='') as handle:
        tiers = {row['metric']: row for row in csv.DictReader(handle)}
    expected = tier_means(np.linspace(0, 1, 13), SHARES)
    assert float(tiers['instance.precision']['non_dominant']) == pytest.approx(expected['non_dominant'])
    assert float(tiers['share']['dominant']) == pytest.approx(240 / 301)
    assert 'instance.num_gt' not in tiers                  # counts get no tier means
    assert rows[12]['instance.num_gt'] == '12'

    markdown = paths['markdown'].read_text()
    assert markdown.startswith('# Area 5: MPNet')
    assert '## Dominance tiers' in markdown and 'bookcase' in markdown and '79.73 %' in markdown
    assert '| clutter | 3.32 % | mid | 0.7500 | 0.7500 | 4 | 3 | 1.0000 | 12 |' in markdown


def test_write_report_without_shares_and_bad_input(tmp_path):
    paths = write_report({'mIoU': 0.5, 'iou': [0.4, 0.6]}, ['a', 'b'], None, tmp_path, 'plain')
    assert 'tiers_csv' not in paths and 'Dominance' not in paths['markdown'].read_text()
    with pytest.raises(ValueError, match='class_shares has 3 entries for 2 classes'):
        write_report({'iou': [0.4, 0.6]}, ['a', 'b'], [1, 2, 3], tmp_path, 'bad')
    with pytest.raises(ValueError, match='hold no scalar'):
        write_report({'confusion': np.eye(2)}, ['a', 'b'], None, tmp_path, 'empty')
