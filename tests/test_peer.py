"""The clustering peer of the instance benchmark on a hand-made scene with known clusters, and the class-agnostic
instance metrics on hand-counted cases."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_model.data.classes import S3DIS_CLASSES
from mpnet_model.eval.metrics import AgnosticInstanceEvaluator
from mpnet_model.eval.peer import PeerConfig, cluster_peer, ground_plane


def _box(rng, low, high, count):
    return rng.uniform(low, high, (count, 3))


@pytest.fixture(scope='module')
def scene():
    """A slightly tilted floor, a ceiling, boxes A and B alone, C and D 0.2 m apart (one cluster at 0.3 m), and a
    3-point speck: (xyz, expected cluster label per point: 'A', 'B', 'CD' or '' for none)."""
    rng = np.random.default_rng(0)
    floor = _box(rng, [0, 0, 0], [6, 6, 0], 6000)
    floor[:, 2] = 0.02 * floor[:, 0] - 0.01 * floor[:, 1] + rng.normal(0, 0.01, len(floor))
    ceiling = _box(rng, [0, 0, 2.9], [6, 6, 2.9], 3000)
    parts = [(floor, ''), (ceiling, ''),
             (_box(rng, [1.0, 1.0, 0.3], [1.5, 1.5, 0.9], 800), 'A'),
             (_box(rng, [3.0, 1.0, 0.3], [3.6, 1.4, 1.2], 800), 'B'),
             (_box(rng, [1.0, 3.5, 0.3], [1.5, 4.0, 0.8], 800), 'C'),
             (_box(rng, [1.7, 3.5, 0.3], [2.2, 4.0, 0.8], 800), 'D'),
             (np.array([[5.0, 5.0, 1.0], [5.01, 5.0, 1.0], [5.0, 5.01, 1.0]]), '')]
    xyz = np.concatenate([p for p, _ in parts])
    expected = np.concatenate([np.full(len(p), {'C': 'CD', 'D': 'CD'}.get(name, name)) for p, name in parts])
    return xyz, expected


def test_ground_plane_is_the_floor(scene):
    xyz, expected = scene
    height, (a, b, c) = ground_plane(xyz)
    assert (a, b, c) == pytest.approx((0.02, -0.01, 0.0), abs=0.005)
    assert np.abs(height[: 6000]).max() < 0.05 and (height[6000:9000] > 2.7).all()


def test_peer_finds_the_known_clusters(scene):
    xyz, expected = scene
    clusters = cluster_peer(xyz)
    for name in ('A', 'B', 'CD'):
        ids = np.unique(clusters[expected == name])
        assert len(ids) == 1 and ids[0] >= 0, name                       # each object one cluster ...
    found = {name: clusters[expected == name][0] for name in ('A', 'B', 'CD')}
    assert len(set(found.values())) == 3                                  # ... and three different ones
    assert (clusters[expected == ''] == -1).all()                         # ground, ceiling, speck: none
    assert sorted(np.unique(clusters)) == [-1, 0, 1, 2]
    assert found['CD'] == 0                                               # largest first
    # A tighter tolerance than the 0.2 m gap keeps C and D apart; no height crop keeps the ceiling as a cluster.
    apart = cluster_peer(xyz, PeerConfig(tolerance=0.15))
    assert apart[expected == 'CD'].min() != apart[expected == 'CD'].max()
    with_ceiling = cluster_peer(xyz, PeerConfig(max_height=None))
    assert len(np.unique(with_ceiling[6000:9000])) == 1 and with_ceiling[6000] >= 0
    with pytest.raises(ValueError, match='invalid peer'):
        PeerConfig(voxel=0.0)


def test_peer_on_an_empty_or_flat_cloud():
    assert cluster_peer(np.zeros((0, 3))).shape == (0,)
    flat = np.random.default_rng(1).uniform([0, 0, 0], [2, 2, 0], (500, 3))
    assert (cluster_peer(flat) == -1).all()


def test_agnostic_metrics_hand_counted():
    wall, chair, table = (S3DIS_CLASSES.index(n) for n in ('wall', 'chair', 'table'))
    #            wall (10 points)   chair (4)      table (6)
    gt_ins = np.array([0] * 10 + [1] * 4 + [2] * 6)
    gt_sem = np.array([wall] * 10 + [chair] * 4 + [table] * 6)
    # prediction 7: the wall exactly (IoU 1); 8: the chair plus 4 table points (IoU 4/8 = 0.5: a match);
    # 9: the other 2 table points (IoU 2/6); 5 points of nothing are left out
    pred = np.array([7] * 10 + [8] * 4 + [8] * 4 + [9] * 2)
    evaluator = AgnosticInstanceEvaluator(S3DIS_CLASSES)
    matches = evaluator.add(pred, gt_sem, gt_ins)
    assert sorted(zip(matches.pred.tolist(), matches.gt.tolist())) == [(7, 0), (8, 1)]
    np.testing.assert_allclose(sorted(matches.iou), [0.5, 1.0])
    result = evaluator.compute()
    assert result['precision'] == pytest.approx(2 / 3) and result['recall'] == pytest.approx(2 / 3)
    assert result['object_recall'] == pytest.approx(1 / 2)                # chair yes, table no; the wall is structure
    assert (result['predictions'], result['gt_instances'], result['gt_objects']) == (3, 3, 2)
    # A second cloud with nothing predicted: recall falls, precision stays.
    evaluator.add(np.full(20, -1), gt_sem, gt_ins)
    result = evaluator.compute()
    assert result['precision'] == pytest.approx(2 / 3) and result['recall'] == pytest.approx(2 / 6)
