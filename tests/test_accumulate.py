"""accumulate: window eviction by frames and age, transforms, range/crop filters, voxel down-sampling."""
from __future__ import annotations

import numpy as np
import pytest

from mpnet_ros.accumulate import (
    CloudWindow,
    Frame,
    apply_transform,
    crop_box_mask,
    range_mask,
    transform_matrix,
    voxel_downsample,
)


def _frame(stamp_s: float, n: int, value: float, rgb: bool = True) -> Frame:
    xyz = np.full((n, 3), value, dtype=np.float32)
    return Frame(stamp_ns=int(stamp_s * 1e9), frame_id='map', xyz=xyz,
                 rgb=np.zeros((n, 3), np.float32) if rgb else None,
                 intensity=None if rgb else np.ones(n, np.float32))


def test_window_keeps_newest_frames_and_counts_sequence():
    window = CloudWindow(max_frames=2)
    assert window.snapshot() is None
    for i in range(3):
        window.add(_frame(i, n=i + 1, value=i))
    snap = window.snapshot()
    assert snap.num_frames == 2 and snap.sequence == 3 and snap.stamp_ns == 2_000_000_000
    np.testing.assert_array_equal(snap.xyz[:, 0], [1, 1, 2, 2, 2])
    assert snap.rgb.shape == (5, 3)


def test_window_age_limit_and_clock_jump():
    window = CloudWindow(max_frames=10, max_age_s=1.5)
    for t in (0.0, 1.0, 2.0, 3.0):
        window.add(_frame(t, 1, t))
    np.testing.assert_array_equal(window.snapshot().xyz[:, 0], [2.0, 3.0])  # 0 and 1 s are older than 1.5 s
    window.add(_frame(0.5, 1, 9.0))  # a bag restarted: older stamp clears the window
    np.testing.assert_array_equal(window.snapshot().xyz[:, 0], [9.0])


def test_window_mixed_attributes_drop_colour():
    window = CloudWindow(max_frames=2)
    window.add(_frame(0, 2, 0, rgb=True))
    window.add(_frame(1, 2, 1, rgb=False))
    snap = window.snapshot()
    assert snap.rgb is None and snap.intensity is None


def test_transform_matrix_hand_computed():
    # 90 degrees about z, then translate by (1, 2, 3): (1, 0, 0) -> (0, 1, 0) + t.
    half = np.sqrt(0.5)
    matrix = transform_matrix((1, 2, 3), (0, 0, half, half))
    out = apply_transform(np.array([[1, 0, 0], [0, 0, 1]], np.float32), matrix)
    np.testing.assert_allclose(out, [[1, 3, 3], [1, 2, 4]], atol=1e-6)


def test_range_and_crop_masks():
    xyz = np.array([[0.5, 0, 0], [3, 4, 0], [20, 0, 0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(range_mask(xyz, 1.0, 10.0), [False, True, False, False])
    np.testing.assert_array_equal(range_mask(xyz, 0.0, 0.0), [True] * 4)
    np.testing.assert_array_equal(crop_box_mask(xyz, (0, 0, 0, 5, 5, 1)), [True, True, False, True])


def test_voxel_downsample_hand_computed():
    xyz = np.array([[0.01, 0.01, 0.01], [0.05, 0.09, 0.0], [0.15, 0, 0], [-0.05, 0, 0], [0.16, 0.02, 0.03]],
                   np.float32)
    keep, inverse = voxel_downsample(xyz, 0.1)
    # Voxels: {0, 1} share (0,0,0); {2, 4} share (1,0,0); 3 is (-1,0,0).
    assert len(keep) == 3
    np.testing.assert_array_equal(xyz[keep][inverse][[0, 1]], xyz[[0, 0]])
    assert inverse[2] == inverse[4] != inverse[0] and inverse[3] not in (inverse[0], inverse[2])
    assert set(keep) == {0, 2, 3}  # the first point of each voxel represents it


@pytest.mark.parametrize('n', [1, 1000])
def test_voxel_every_point_maps_to_its_own_voxel(n):
    xyz = np.random.default_rng(0).uniform(-50, 50, (n, 3)).astype(np.float32)
    keep, inverse = voxel_downsample(xyz, 0.5)
    np.testing.assert_array_equal(np.floor(xyz[keep][inverse] / 0.5), np.floor(xyz / 0.5))
