"""Block geometry and tuned post-processing travel from the checkpoint to the node, one test per hop:

checkpoint `extra` -> ONNX metadata_props (mpnet-export) -> every backend's ModelMetadata -> SceneSegmenter.from_config
defaults -> the node's parameters (cluster_bandwidth 0 = the model's). Every value is a non-default one, so a hop
that drops a value (falls back to the default) or overrides it fails.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from runtime_fixtures import tiny_config

from mpnet_model.infer.backends.base import ModelMetadata, make_backend
from mpnet_model.infer.backends.torch_backend import metadata_from_checkpoint
from mpnet_model.infer.export import main as export_main
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.model.checkpoint import load_checkpoint, save_checkpoint
from mpnet_model.model.mpnet import MPNet

MEANS = [float(v) for v in np.arange(13) * 10.0 + 5.0]         # class_mean_instance_points
TUNED = {'block_size': 1.5, 'stride': 0.75, 'cluster_bandwidth': 0.45, 'min_instance_fraction': 0.3,
         'class_mean_instance_points': MEANS}
EXPECTED = {'block_size': 1.5, 'stride': 0.75, 'num_points': 256, 'cluster_bandwidth': 0.45,
            'min_instance_fraction': 0.3, 'class_mean_instance_points': tuple(MEANS)}


def _values(metadata: ModelMetadata) -> dict:
    return {key: getattr(metadata, key) for key in EXPECTED}


@pytest.fixture(scope='module')
def model_files(tmp_path_factory):
    """(checkpoint, ONNX export) of a tiny MPNet whose checkpoint records non-default geometry and tuning."""
    folder = tmp_path_factory.mktemp('tuned')
    torch.manual_seed(0)
    cfg = tiny_config()
    checkpoint = save_checkpoint(folder / 'tuned.pt', MPNet(cfg).eval(), cfg, extra=TUNED)
    assert export_main([str(checkpoint), '-o', str(folder / 'tuned.onnx')]) == 0
    return checkpoint, folder / 'tuned.onnx'


def test_hop1_checkpoint_to_onnx_metadata(model_files, tmp_path):
    checkpoint, onnx_path = model_files
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert _values(ModelMetadata.from_props(props, 'x')) == EXPECTED
    assert float(props['stride']) == 0.75 and float(props['cluster_bandwidth']) == 0.45
    # The metadata the export builds from the loaded checkpoint, and explicit --block-size / --stride winning.
    _, cfg, meta = load_checkpoint(checkpoint)
    assert _values(metadata_from_checkpoint(cfg, meta)) == EXPECTED
    assert metadata_from_checkpoint(cfg, meta, stride=0.25).stride == 0.25
    assert metadata_from_checkpoint(cfg, meta, block_size=2.0).block_size == 2.0
    # A checkpoint recording nothing: 1 m / 0.5 m, bandwidth 0.6, no per-class filter.
    plain = metadata_from_checkpoint(cfg, {'extra': {}})
    assert (plain.block_size, plain.stride, plain.cluster_bandwidth, plain.class_min_points) == (1.0, 0.5, 0.6, None)


def test_hop1_old_exports_read_with_defaults():
    props = ModelMetadata(class_names=('a', 'b')).to_props()
    for key in ('cluster_bandwidth', 'min_instance_fraction', 'class_mean_instance_points'):
        del props[key]                                          # as in ONNX files exported before these existed
    metadata = ModelMetadata.from_props(props, 'old.onnx')
    assert metadata.cluster_bandwidth == 0.6 and metadata.class_min_points is None and metadata.extra == {}


class _FakeEngineBuilder:
    """FAKE TensorRT engine builder (TensorRT and CUDA cannot exist here): the TensorRT backend's metadata path is
    real (it reads the ONNX file); the 'engine' is a stand-in with an execution context that is never run."""

    version, device_name = '10.0.0', 'fake'

    def build(self, onnx_path, precision):
        return b'FAKE-ENGINE'

    def deserialize(self, engine_bytes):
        return SimpleNamespace(create_execution_context=lambda: None)


def _backends(model_files, tmp_path, monkeypatch):
    checkpoint, onnx_path = model_files
    monkeypatch.setattr(torch.cuda, 'Stream', lambda device=None: None)     # FAKE: no CUDA stream on this machine
    return {'torch': make_backend('torch', checkpoint),
            'onnxruntime': make_backend('onnxruntime', onnx_path, intra_op_threads=1),
            'tensorrt (fake engine)': make_backend('tensorrt', onnx_path, device='cuda', builder=_FakeEngineBuilder(),
                                                   engine_path=tmp_path / 'tuned.engine')}


def test_hop2_onnx_metadata_to_every_backend(model_files, tmp_path, monkeypatch):
    for name, backend in _backends(model_files, tmp_path, monkeypatch).items():
        assert _values(backend.metadata) == EXPECTED, name
        np.testing.assert_allclose(backend.metadata.class_min_points, 0.3 * np.array(MEANS), err_msg=name)


def test_hop3_backend_to_scene_segmenter(model_files, tmp_path, monkeypatch):
    for name, backend in _backends(model_files, tmp_path, monkeypatch).items():
        monkeypatch.setattr('mpnet_model.infer.scene.make_backend', lambda *args, _b=backend, **kwargs: _b)
        segmenter = SceneSegmenter.from_config(name, 'model')
        assert (segmenter.block_size, segmenter.stride, segmenter.num_points, segmenter.bandwidth) == \
            (1.5, 0.75, 256, 0.45), name
        np.testing.assert_allclose(segmenter.class_min_points, 0.3 * np.array(MEANS), err_msg=name)
        explicit = SceneSegmenter.from_config(name, 'model', block_size=2.0, stride=1.0, bandwidth=0.9,
                                              class_min_points=None)            # explicit arguments win
        assert (explicit.block_size, explicit.stride, explicit.bandwidth, explicit.class_min_points) == \
            (2.0, 1.0, 0.9, None), name


def test_hop3_shipped_model_keeps_its_defaults():
    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    assert (segmenter.block_size, segmenter.stride, segmenter.bandwidth, segmenter.class_min_points) == \
        (1.0, 0.5, 0.6, None)


def test_hop4_node_parameters(model_files):
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import make_segmenter

    _, onnx_path = model_files
    from_model = make_segmenter(validate_params({'model_path': str(onnx_path)}))        # cluster_bandwidth 0
    assert (from_model.block_size, from_model.stride, from_model.num_points, from_model.bandwidth) == \
        (1.5, 0.75, 256, 0.45)
    np.testing.assert_allclose(from_model.class_min_points, 0.3 * np.array(MEANS))
    assert make_segmenter(validate_params({'model_path': str(onnx_path), 'cluster_bandwidth': 0.8})).bandwidth == 0.8


def test_hop4_the_node_itself(model_files):
    rclpy = pytest.importorskip('rclpy')
    from rclpy.parameter import Parameter

    from mpnet_ros.segment_node import SegmentNode

    checkpoint, _ = model_files
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ['ROS_DOMAIN_ID']))
    try:
        node = SegmentNode(context=context, parameter_overrides=[Parameter('model_path', value=str(checkpoint)),
                                                                 Parameter('backend', value='torch')])
        try:
            segmenter = node.pipeline.segmenter
            assert node.params.cluster_bandwidth == 0.0
            assert (segmenter.block_size, segmenter.stride, segmenter.bandwidth) == (1.5, 0.75, 0.45)
        finally:
            node.close()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
