"""PointNet++ ops against brute-force per-point references (the semantics of the reference CUDA ops)."""
import math

import pytest
import torch

from mpnet_model.config import small_config
from mpnet_model.model.pointnet2 import (
    FeaturePropagation,
    PointNet2Backbone,
    SetAbstraction,
    ball_query,
    farthest_point_sample,
    gather_points,
    three_nn_interpolate,
)


def squared_distance(a, b):
    return sum((float(a[c]) - float(b[c])) ** 2 for c in range(3))


def reference_fps(points, npoint):
    """Reference farthest_point_sample for one cloud: start at 0, arg-max of the running min distance."""
    chosen, min_dist = [0], [1e10] * len(points)
    for _ in range(npoint - 1):
        last = points[chosen[-1]]
        min_dist = [min(m, squared_distance(p, last)) for m, p in zip(min_dist, points)]
        chosen.append(max(range(len(points)), key=lambda i: (min_dist[i], -i)))  # first index on ties
    return chosen


def reference_ball_query(radius, nsample, points, queries):
    """Reference query_ball_point for one cloud."""
    result = []
    for query in queries:
        row = [0] * nsample
        count = 0
        for k, point in enumerate(points):
            if count == nsample:
                break
            if squared_distance(point, query) < radius * radius:
                if count == 0:
                    row = [k] * nsample
                row[count] = k
                count += 1
        result.append(row)
    return result


def reference_three_interpolate(unknown, known, features):
    out = []
    for point in unknown:
        dists = sorted((math.sqrt(squared_distance(point, q)), j) for j, q in enumerate(known))[:3]
        inverse = [1.0 / (d + 1e-8) for d, _ in dists]
        total = sum(inverse)
        out.append([sum(w / total * float(features[j][c]) for w, (_, j) in zip(inverse, dists))
                    for c in range(features.shape[1])])
    return out


def test_farthest_point_sample_matches_reference():
    generator = torch.Generator().manual_seed(1)
    xyz = torch.rand(3, 60, 3, generator=generator, dtype=torch.float64)
    got = farthest_point_sample(xyz, 20)
    assert got.shape == (3, 20) and got.dtype == torch.long
    for b in range(3):
        assert got[b].tolist() == reference_fps(xyz[b].tolist(), 20)


def test_farthest_point_sample_prefers_first_index_on_ties():
    # Four corners of a square: after index 0 the opposite corner, then the first of the two equidistant ones.
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]])
    assert farthest_point_sample(xyz, 3).tolist() == [[0, 3, 1]]


def test_farthest_point_sample_rejects_bad_npoint():
    with pytest.raises(ValueError, match='npoint=5'):
        farthest_point_sample(torch.rand(1, 4, 3), 5)


def test_ball_query_matches_reference():
    generator = torch.Generator().manual_seed(2)
    xyz = torch.rand(2, 80, 3, generator=generator, dtype=torch.float64)
    new_xyz = torch.rand(2, 15, 3, generator=generator, dtype=torch.float64)
    new_xyz[0, 0] = 10.0   # far from everything: no neighbour -> all zeros
    for radius, nsample in ((0.25, 8), (0.5, 16), (0.05, 4)):
        got = ball_query(radius, nsample, xyz, new_xyz)
        assert got.shape == (2, 15, nsample) and got.dtype == torch.long
        for b in range(2):
            assert got[b].tolist() == reference_ball_query(radius, nsample, xyz[b].tolist(), new_xyz[b].tolist())
    assert ball_query(0.25, 8, xyz, new_xyz)[0, 0].tolist() == [0] * 8


def test_ball_query_with_more_slots_than_points_pads_with_first_hit():
    xyz = torch.tensor([[[0.0, 0, 0], [5, 0, 0], [0.1, 0, 0]]])
    got = ball_query(0.5, 6, xyz, torch.tensor([[[0.05, 0, 0]]]))
    assert got.tolist() == [[[0, 2, 0, 0, 0, 0]]]


def test_three_nn_interpolate_matches_reference():
    generator = torch.Generator().manual_seed(3)
    unknown = torch.rand(2, 25, 3, generator=generator, dtype=torch.float64)
    known = torch.rand(2, 9, 3, generator=generator, dtype=torch.float64)
    features = torch.randn(2, 9, 4, generator=generator, dtype=torch.float64)
    got = three_nn_interpolate(unknown, known, features)
    assert got.shape == (2, 25, 4)
    for b in range(2):
        expected = torch.tensor(reference_three_interpolate(unknown[b], known[b], features[b]), dtype=torch.float64)
        torch.testing.assert_close(got[b], expected, rtol=1e-9, atol=1e-9)


def test_three_nn_interpolate_hand_computed():
    # Unknown point on a known point: weight ~1 on it. Midway between two points with a far third: ~0.5 / 0.5.
    known = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [100, 0, 0]]])
    features = torch.tensor([[[1.0], [3.0], [1000.0]]])
    got = three_nn_interpolate(torch.tensor([[[0.0, 0, 0], [1, 0, 0]]]), known, features)
    # Midpoint: weights 1/1, 1/1, 1/99 normalised.
    expected_mid = (1.0 + 3.0 + 1000.0 / 99) / (2 + 1 / 99)
    torch.testing.assert_close(got, torch.tensor([[[1.0], [expected_mid]]]), rtol=1e-5, atol=1e-5)


def test_gather_points():
    values = torch.arange(24.0).reshape(2, 4, 3)
    index = torch.tensor([[[3, 0]], [[1, 1]]])
    assert gather_points(values, index).tolist() == [[[[9, 10, 11], [0, 1, 2]]], [[[15, 16, 17], [15, 16, 17]]]]


def test_set_abstraction_and_feature_propagation_shapes_and_given_indices():
    torch.manual_seed(0)
    xyz, features = torch.rand(2, 64, 3), torch.rand(2, 64, 5)
    sa = SetAbstraction(npoint=16, radius=0.3, nsample=8, in_channels=5, mlp=(8, 12))
    new_xyz, new_features, index = sa(xyz, features)
    assert new_xyz.shape == (2, 16, 3) and new_features.shape == (2, 16, 12) and index.shape == (2, 16)
    torch.testing.assert_close(new_xyz, gather_points(xyz, farthest_point_sample(xyz, 16)))
    # Given indices are used as-is (the ONNX path).
    given = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(sa(xyz, features, given)[0], xyz[:, :16])
    fp = FeaturePropagation(12 + 5, (10,))
    assert fp(xyz, new_xyz, features, new_features).shape == (2, 64, 10)


def test_backbone_two_decoders_and_nested_indices():
    cfg = small_config(num_points=256, sa_npoints=(64, 16, 8, 4))
    torch.manual_seed(0)
    backbone = PointNet2Backbone(cfg).eval()
    points = torch.rand(2, 256, 9)
    indices = backbone.sample_indices(points[..., :3])
    assert [tuple(i.shape) for i in indices] == [(2, 64), (2, 16), (2, 8), (2, 4)]
    assert int(indices[1].max()) < 64   # nested: level-2 indices point into the 64 level-1 centres
    f_seg, f_ins = backbone(points, indices)
    assert f_seg.shape == f_ins.shape == (2, 256, cfg.feature_dim)
    assert not torch.allclose(f_seg, f_ins)   # two independent decoders
    torch.testing.assert_close(backbone(points)[0], f_seg)   # internal FPS gives the same indices
    with pytest.raises(ValueError, match=r'\(B,N,9\)'):
        backbone(points[..., :6])
