"""mpnet-export: metadata, checker, opset, dynamic batch, atomic write, and the model left untouched."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from runtime_fixtures import exported_small, tiny_config

from mpnet_model import __version__
from mpnet_model.infer.backends.base import ModelMetadata, make_backend
from mpnet_model.infer.backends.onnx_backend import graph_feeds
from mpnet_model.infer.export import ExportError, export_onnx, main
from mpnet_model.model.checkpoint import save_checkpoint
from mpnet_model.model.mpnet import MPNet


@pytest.fixture(scope='module')
def exported():
    return exported_small()     # written by the mpnet-export CLI (main)


def test_metadata_checker_and_opset(exported):
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(e.version for e in model.opset_import if e.domain in ('', 'ai.onnx')) >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props['class_names'])[:3] == ['ceiling', 'floor', 'wall']
    assert (props['in_channels'], props['num_points'], props['embed_dim']) == ('9', '1024', '5')
    assert float(props['block_size']) == 1.0 and float(props['stride']) == 0.5
    assert props['fps_in_graph'] == 'false' and props['version'] == __version__
    assert json.loads(props['sa_npoints']) == [256, 64, 16, 4]
    assert [o.name for o in model.graph.output] == ['sem_logits', 'ins_embed']
    assert [i.name for i in model.graph.input] == ['points', 'fps_0', 'fps_1', 'fps_2', 'fps_3']
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == 'points'
    assert props['dynamic_points'] == 'true'
    assert not list(path.parent.glob('.*.tmp'))      # atomic write left no temp file


def test_dynamic_batch_1_and_3(exported):
    _, path = exported
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    rng = np.random.default_rng(0)
    blocks = rng.random((3, 1024, 9), dtype=np.float32)
    three = session.run(None, graph_feeds(blocks, metadata))
    one = session.run(None, graph_feeds(blocks[1:2], metadata))
    assert three[0].shape == (3, 1024, 13) and three[1].shape == (3, 1024, 5)
    np.testing.assert_allclose(one[0][0], three[0][1], atol=1e-5)   # batch items are independent
    np.testing.assert_allclose(one[1][0], three[1][1], atol=1e-5)


def test_dynamic_point_axis_matches_torch_on_sparse_blocks(exported):
    """Blocks of 256 and 512 points (the point buckets of sparse blocks) give the torch model's outputs."""
    checkpoint, path = exported
    onnx_backend, torch_backend = make_backend('onnxruntime', path), make_backend('torch', checkpoint)
    assert onnx_backend.point_buckets() == torch_backend.point_buckets() == (256, 512, 1024)
    rng = np.random.default_rng(3)
    for points in (256, 512):
        blocks = torch.from_numpy(rng.random((2, points, 9), dtype=np.float32))
        mine, reference = onnx_backend.run_frame(blocks), torch_backend.run_frame(blocks)
        assert mine[0].shape == (2, points, 13)
        torch.testing.assert_close(mine[0], reference[0], atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(mine[1], reference[1], atol=2e-3, rtol=1e-3)


def test_export_leaves_model_and_bn_statistics_unchanged(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(3)
    model = MPNet(cfg)
    with torch.no_grad():
        model(torch.rand(4, cfg.num_points, 9))      # train-mode pass: BN running stats differ from defaults
    checkpoint = save_checkpoint(tmp_path / 'm.pt', model, cfg)
    # The model is still in train mode: the export must trace an eval-mode copy and leave it untouched.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metadata = ModelMetadata(class_names=cfg.class_names, num_points=cfg.num_points, sa_npoints=cfg.sa_npoints)
    path = export_onnx(model, metadata, tmp_path / 'm.onnx')
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    blocks = np.random.default_rng(1).random((2, cfg.num_points, 9), dtype=np.float32)
    reference = make_backend('torch', checkpoint).run(blocks)[0]
    np.testing.assert_allclose(make_backend('onnxruntime', path).run(blocks)[0], reference, atol=1e-4)


def test_errors(tmp_path, capsys):
    with pytest.raises(ExportError, match='opset=13'):
        export_onnx(torch.nn.Identity(), ModelMetadata(class_names=('a', 'b')), tmp_path / 'x.onnx', opset=13)
    assert main([str(tmp_path / 'missing.pt')]) == 1
    assert 'missing.pt' in capsys.readouterr().err
    assert not (tmp_path / 'missing.onnx').exists()
