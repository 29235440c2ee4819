"""Runtime backends: torch vs ONNX Runtime agreement on real sample data, FPS equivalence, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_fixtures import exported_small, needs_data, real_blocks

from mpnet_model.infer.backends.base import (
    BackendError,
    farthest_point_sample_np,
    make_backend,
    nested_sample_indices,
)
from mpnet_model.infer.export import export_checkpoint
from mpnet_model.model.pointnet2 import farthest_point_sample

pytestmark = needs_data


@pytest.fixture(scope='module')
def models():
    return exported_small()


@pytest.fixture(scope='module')
def blocks():
    return real_blocks(1024, count=2)     # (4,1024,9): 2 office blocks, 2 Ouster blocks


def test_fps_numpy_matches_torch_reference(blocks):
    xyz = blocks[..., :3]
    expected = farthest_point_sample(torch.from_numpy(np.ascontiguousarray(xyz)), 256).numpy()
    np.testing.assert_array_equal(farthest_point_sample_np(xyz, 256), expected)
    levels = nested_sample_indices(xyz, (256, 64))
    assert [level.shape for level in levels] == [(4, 256), (4, 64)]
    # Hand-checked: points at x = 0, 1, 3, 10. Start at index 0; farthest from it is x=10 (index 3); then the
    # squared distances to {0, 10} are min(1, 81) = 1 for x=1 and min(9, 49) = 9 for x=3, so index 2.
    line = np.array([[[0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]], dtype=np.float32)
    np.testing.assert_array_equal(farthest_point_sample_np(line, 3), [[0, 3, 2]])


def test_torch_and_onnxruntime_agree_on_real_blocks(models, blocks):
    checkpoint, onnx_path = models
    torch_backend = make_backend('torch', checkpoint, fps='torch')      # the model's own FPS: full reference
    ort_backend = make_backend('onnxruntime', onnx_path)
    assert ort_backend.class_names == torch_backend.class_names and ort_backend.num_points == 1024
    reference = torch_backend.run(blocks)
    for batch in (blocks, blocks[:1]):
        logits, embeddings = ort_backend.run(batch)
        assert logits.shape == (len(batch), 1024, 13) and embeddings.shape == (len(batch), 1024, 5)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, reference[0][:len(batch)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(embeddings, reference[1][:len(batch)], atol=1e-4, rtol=0)
    assert np.abs(reference[0]).max() > 1e-2       # a non-degenerate model, or agreement would mean nothing


def test_torch_numpy_fps_path_is_identical(models, blocks):
    checkpoint, _ = models
    a = make_backend('torch', checkpoint, fps='torch').run(blocks[:1])
    b = make_backend('torch', checkpoint, fps='numpy').run(blocks[:1])
    np.testing.assert_array_equal(a[0], b[0])


def test_onnxruntime_errors_name_the_problem(models, tmp_path):
    _, onnx_path = models
    with pytest.raises(BackendError, match='not found'):
        make_backend('onnxruntime', tmp_path / 'missing.onnx')
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(onnx_path.read_bytes()[:5000])
    with pytest.raises(BackendError, match='corrupt.onnx'):
        make_backend('onnxruntime', corrupt)
    backend = make_backend('onnxruntime', onnx_path)
    with pytest.raises(BackendError, match=r'\(B>=1, 1024, 9\)'):
        backend.run(np.zeros((2, 512, 9), np.float32))
    with pytest.raises(BackendError, match='backend='):
        make_backend('tflite', onnx_path)
    with pytest.raises(BackendError, match='precision'):
        make_backend('onnxruntime', onnx_path, precision='fp16')


def test_default_config_batch1_agrees(tmp_path):
    from mpnet_model.config import ModelConfig
    from mpnet_model.model.checkpoint import save_checkpoint
    from mpnet_model.model.mpnet import MPNet

    torch.manual_seed(0)
    cfg = ModelConfig()
    checkpoint = save_checkpoint(tmp_path / 'default.pt', MPNet(cfg).eval(), cfg)
    onnx_path = export_checkpoint(checkpoint, tmp_path / 'default.onnx', example_batch=1)
    block = real_blocks(cfg.num_points, count=1)[:1]
    reference = make_backend('torch', checkpoint).run(block)
    result = make_backend('onnxruntime', onnx_path).run(block)
    np.testing.assert_allclose(result[0], reference[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(result[1], reference[1], atol=1e-4, rtol=0)
