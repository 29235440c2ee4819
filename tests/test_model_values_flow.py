"""Block geometry and tuned post-processing travel from the checkpoint to the node, one test per hop:

checkpoint `extra` -> ONNX metadata_props (mpnet-export) -> every backend's ModelMetadata -> SceneSegmenter.from_config
defaults -> the node's parameters (cluster_bandwidth 0 = the model's). Every value is a non-default one, so a hop
that drops a value (falls back to the default) or overrides it fails.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import FakeTensorRTBuilder
from runtime_fixtures import tiny_config

from mpnet_model import __version__
from mpnet_model.infer.backends.base import BackendError, ModelMetadata, make_backend
from mpnet_model.infer.backends.torch_backend import metadata_from_checkpoint
from mpnet_model.infer.export import main as export_main
from mpnet_model.infer.scene import SceneSegmenter
from mpnet_model.infer.trt_ops import check_trt_compatibility
from mpnet_model.model.checkpoint import load_checkpoint, save_checkpoint
from mpnet_model.model.mpnet import MPNet

MEANS = [float(v) for v in np.arange(13) * 10.0 + 5.0]         # class_mean_instance_points
AREAS = [float(v) for v in np.arange(13) * 0.1 + 0.3]          # class_mean_instance_area [m^2] (issue 23)
METRIC = {'class_mean_instance_area': AREAS, 'instance_area_voxel': 0.2,
          'min_instance_area_fraction': {'lidar': 0.15, 'rgbd': 0.4}, 'fragment_join': {'lidar': 0.25},
          'instance_min_points': {'lidar': 12}, 'cluster_bandwidth_by_kind': {'lidar': 0.35}}
TUNED = {'block_size': 1.5, 'stride': 0.75, 'cluster_bandwidth': 0.45, 'min_instance_fraction': 0.3,
         'class_mean_instance_points': MEANS, **METRIC}
EXPECTED = {'block_size': 1.5, 'stride': 0.75, 'num_points': 256, 'cluster_bandwidth': 0.45,
            'min_instance_fraction': 0.3, 'class_mean_instance_points': tuple(MEANS),
            **METRIC, 'class_mean_instance_area': tuple(AREAS)}


def _values(metadata: ModelMetadata) -> dict:
    return {key: getattr(metadata, key) for key in EXPECTED}


@pytest.fixture(scope='module')
def model_files(tmp_path_factory):
    """(checkpoint, ONNX export) of a tiny MPNet whose checkpoint records non-default geometry and tuning."""
    folder = tmp_path_factory.mktemp('tuned')
    torch.manual_seed(0)
    cfg = tiny_config()
    checkpoint = save_checkpoint(folder / 'tuned.pt', MPNet(cfg).eval(), cfg, extra=TUNED)
    assert export_main([str(checkpoint)]) == 0                       # default output: next to the checkpoint
    return checkpoint, folder / 'tuned.onnx'


def test_hop1_checkpoint_to_onnx_metadata(model_files, tmp_path):
    checkpoint, onnx_path = model_files
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert _values(ModelMetadata.from_props(props, 'x')) == EXPECTED
    assert float(props['stride']) == 0.75 and float(props['cluster_bandwidth']) == 0.45
    assert props['version'] == __version__ and props['fps_in_graph'] == 'false'
    # TopK K frozen to constants (TensorRT needs them at build time); FPS indices are graph inputs.
    report = check_trt_compatibility(onnx_path)
    assert report.ok and report.non_constant_inputs == [], report.summary()
    graph_inputs = [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]
    assert graph_inputs == ['points', 'fps_0', 'fps_1']
    # mpnet-export --block-size / --stride override the checkpoint's geometry (and nothing else).
    override = tmp_path / 'override.onnx'
    assert export_main([str(checkpoint), '-o', str(override), '--block-size', '2.0', '--stride', '0.25',
                        '--opset', '18', '--batch', '1']) == 0
    props = {p.key: p.value for p in onnx.load(str(override), load_external_data=False).metadata_props}
    assert _values(ModelMetadata.from_props(props, 'x')) == {**EXPECTED, 'block_size': 2.0, 'stride': 0.25}
    assert onnx.load(str(override), load_external_data=False).opset_import[0].version == 18
    # The metadata the export builds from the loaded checkpoint, and explicit --block-size / --stride winning.
    _, cfg, meta = load_checkpoint(checkpoint)
    assert _values(metadata_from_checkpoint(cfg, meta)) == EXPECTED
    assert metadata_from_checkpoint(cfg, meta, stride=0.25).stride == 0.25
    assert metadata_from_checkpoint(cfg, meta, block_size=2.0).block_size == 2.0
    # A checkpoint recording nothing: 1 m / 0.5 m, bandwidth 0.6, no per-class filter.
    plain = metadata_from_checkpoint(cfg, {'extra': {}})
    assert (plain.block_size, plain.stride, plain.cluster_bandwidth, plain.class_min_points) == (1.0, 0.5, 0.6, None)
    # Class means alone (as in the shipped checkpoint) switch no filter on; the version is the checkpoint's.
    means_only = metadata_from_checkpoint(cfg, {'extra': {'class_mean_instance_points': MEANS}, 'version': '0.0.7'})
    assert means_only.class_min_points is None and means_only.version == '0.0.7'


def test_hop1_old_exports_read_with_defaults():
    props = ModelMetadata(class_names=('a', 'b')).to_props()
    for key in ('cluster_bandwidth', 'min_instance_fraction', 'class_mean_instance_points', *METRIC):
        del props[key]                                          # as in ONNX files exported before these existed
    metadata = ModelMetadata.from_props(props, 'old.onnx')
    assert metadata.cluster_bandwidth == 0.6 and metadata.class_min_points is None and metadata.extra == {}
    assert metadata.class_mean_instance_area == () and metadata.area_fraction('lidar') is None
    assert metadata.fragment_join == {} == metadata.instance_min_points == metadata.cluster_bandwidth_by_kind
    assert metadata.bandwidth_for('lidar') == 0.6
    full = ModelMetadata(class_names=('a', 'b'), cluster_bandwidth=0.3, min_instance_fraction=0.5,
                         class_mean_instance_points=(10.0, 20.0), fps_in_graph=True, extra={'trained_on': 'rooms'})
    assert ModelMetadata.from_props(full.to_props(), 'x') == full                   # exact round trip
    assert full.to_props()['fps_in_graph'] == 'true' and 'extra' not in full.to_props()


def _backends(model_files, tmp_path, monkeypatch):
    checkpoint, onnx_path = model_files
    # FAKE TensorRT (tests/fake_tensorrt.py: TensorRT cannot exist here): the metadata path is the real backend's
    return {'torch': make_backend('torch', checkpoint),
            'onnxruntime': make_backend('onnxruntime', onnx_path, intra_op_threads=1),
            'tensorrt (fake engine)': make_backend('tensorrt', onnx_path, builder=FakeTensorRTBuilder(),
                                                   engine_path=tmp_path / 'tuned.engine')}


def test_hop2_onnx_metadata_to_every_backend(model_files, tmp_path, monkeypatch):
    for name, backend in _backends(model_files, tmp_path, monkeypatch).items():
        assert _values(backend.metadata) == EXPECTED, name
        np.testing.assert_allclose(backend.metadata.class_min_points, 0.3 * np.array(MEANS), err_msg=name)


def test_hop3_backend_to_scene_segmenter(model_files, tmp_path, monkeypatch):
    kinds = []
    for name, backend in _backends(model_files, tmp_path, monkeypatch).items():
        def factory(kind, path, _b=backend, **options):
            kinds.append((kind, path, options))
            return _b
        monkeypatch.setattr('mpnet_model.infer.scene.make_backend', factory)
        segmenter = SceneSegmenter.from_config(name, 'model')
        assert (segmenter.block_size, segmenter.stride, segmenter.num_points, segmenter.bandwidth) == \
            (1.5, 0.75, 256, 0.45), name
        np.testing.assert_allclose(segmenter.class_min_points, 0.3 * np.array(MEANS), err_msg=name)
        assert segmenter.size_filter.kind == 'points' and segmenter.fragment_join == 0.0   # no sensor kind given
        assert kinds[-1] == (name, 'model', {'device': 'cpu', 'precision': 'fp32'})   # what the factory passed on
        lidar = SceneSegmenter.from_config(name, 'model', sensor_kind='lidar')          # the metric filter
        assert (lidar.size_filter.kind, lidar.area_voxel, lidar.fragment_join, lidar.min_instance_points,
                lidar.bandwidth) == ('area', 0.2, 0.25, 12, 0.35), name       # the lidar bandwidth, too
        assert SceneSegmenter.from_config(name, 'model', sensor_kind='lidar', bandwidth=0.7).bandwidth == 0.7, name
        np.testing.assert_allclose(lidar.class_min_area, 0.15 * np.array(AREAS), err_msg=name)
        rgbd = SceneSegmenter.from_config(name, 'model', sensor_kind='rgbd')
        assert (rgbd.fragment_join, rgbd.min_instance_points, rgbd.bandwidth) == (0.0, 50, 0.45), name   # defaults
        np.testing.assert_allclose(rgbd.class_min_area, 0.4 * np.array(AREAS), err_msg=name)
        explicit = SceneSegmenter.from_config(name, 'model', block_size=2.0, stride=1.0, bandwidth=0.9,
                                              class_min_points=None)            # explicit arguments win
        assert (explicit.block_size, explicit.stride, explicit.bandwidth, explicit.class_min_points) == \
            (2.0, 1.0, 0.9, None), name


def test_hop3_factory_passes_device_precision_and_options(model_files):
    _, onnx_path = model_files
    segmenter = SceneSegmenter.from_config('onnxruntime', onnx_path, backend_options={'intra_op_threads': 1})
    assert segmenter.backend.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(BackendError, match='precision'):
        SceneSegmenter.from_config('onnxruntime', onnx_path, precision='bf16')
    with pytest.raises(BackendError, match="device='tpu'"):
        SceneSegmenter.from_config('onnxruntime', onnx_path, device='tpu')


def test_hop3_shipped_model_brings_its_tuned_values():
    segmenter = SceneSegmenter.from_config('onnxruntime', '')
    metadata = segmenter.backend.metadata
    assert (segmenter.block_size, segmenter.stride, segmenter.bandwidth) == (1.0, 0.5, metadata.cluster_bandwidth)
    assert metadata.min_instance_fraction > 0 and len(metadata.class_mean_instance_points) == 13
    np.testing.assert_allclose(segmenter.class_min_points, metadata.min_instance_fraction *
                               np.array(metadata.class_mean_instance_points))
    assert SceneSegmenter.from_config('onnxruntime', '', min_instance_fraction=0).class_min_points is None
    with pytest.raises(ValueError, match='min_instance_fraction'):
        SceneSegmenter.from_config('onnxruntime', '', min_instance_fraction=-0.5)


def test_hop4_node_parameters(model_files):
    from mpnet_ros.params import validate_params
    from mpnet_ros.pipeline import make_segmenter

    _, onnx_path = model_files
    from_model = make_segmenter(validate_params({'model_path': str(onnx_path)}))        # cluster_bandwidth 0
    assert (from_model.block_size, from_model.stride, from_model.num_points, from_model.bandwidth) == \
        (1.5, 0.75, 256, 0.35)                                      # sensor_kind lidar: the lidar bandwidth
    static = make_segmenter(validate_params({'model_path': str(onnx_path), 'sensor_kind': 'static'}))
    assert static.bandwidth == 0.45                                 # no static bandwidth: the model's
    np.testing.assert_allclose(static.class_min_points, 0.3 * np.array(MEANS))      # no area fraction for static
    assert make_segmenter(validate_params({'model_path': str(onnx_path), 'cluster_bandwidth': 0.8})).bandwidth == 0.8
    # The node's defaults (size_filter auto, sensor_kind lidar, fragment_join -1, min_instance_points 0): the model's.
    assert (from_model.size_filter.kind, from_model.fragment_join, from_model.min_instance_points) == ('area', 0.25, 12)
    np.testing.assert_allclose(from_model.class_min_area, 0.15 * np.array(AREAS))
    forced = make_segmenter(validate_params({'model_path': str(onnx_path), 'size_filter': 'points',
                                             'fragment_join': 0.0, 'min_instance_points': 50}))
    assert (forced.size_filter.kind, forced.fragment_join, forced.min_instance_points) == ('points', 0.0, 50)
    np.testing.assert_allclose(forced.class_min_points, 0.3 * np.array(MEANS))
    assert from_model.border_join == 0.2
    assert make_segmenter(validate_params({'model_path': str(onnx_path), 'border_join': 0.0})).border_join == 0.0
    off = make_segmenter(validate_params({'model_path': str(onnx_path), 'min_instance_fraction': 0.0}))
    assert off.class_min_points is None and off.class_min_area is None and off.size_filter.kind == 'off'
    np.testing.assert_allclose(make_segmenter(validate_params({'model_path': str(onnx_path), 'size_filter': 'points',
                                                               'min_instance_fraction': 1.5})).class_min_points,
                               1.5 * np.array(MEANS))
    np.testing.assert_allclose(make_segmenter(validate_params({'model_path': str(onnx_path),
                                                               'min_instance_fraction': 1.5})).class_min_area,
                               1.5 * np.array(AREAS))                             # the fraction of the active one


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
            assert (segmenter.block_size, segmenter.stride, segmenter.bandwidth) == (1.5, 0.75, 0.35)   # lidar's
        finally:
            node.close()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
