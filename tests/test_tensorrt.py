"""TensorRT path without a GPU: the exported graph against TensorRT 10's operator list, the engine cache
(naming, reuse, rebuild on a corrupt file) with a stand-in builder, and clear errors when TensorRT is missing."""
from __future__ import annotations

import importlib.util
import logging
import shutil

import onnx
import pytest
from onnx import TensorProto, helper
from runtime_fixtures import exported_small

from mpnet_model.infer.backends.base import BackendError, make_backend
from mpnet_model.infer.backends.tensorrt_backend import (
    LOG,
    TensorRTUnavailable,
    build_engine,
    engine_cache_path,
    load_or_build_engine,
)
from mpnet_model.infer.trt_ops import TRT10_SUPPORTED_OPS, TRT10_UNSUPPORTED_OPS, check_trt_compatibility


class FakeTensorRTBuilder:
    """A FAKE stand-in for TensorRTBuilder (TensorRT and a GPU cannot exist on this CPU machine): 'engines' are the
    ONNX bytes behind a header, so the cache logic around them is exercised for real."""

    MAGIC = b'FAKE-TRT-ENGINE\n'

    def __init__(self, version='10.3.0', device_name='NVIDIA Jetson Orin'):
        self.version, self.device_name = version, device_name
        self.builds = []

    def build(self, onnx_path, precision):
        self.builds.append((onnx_path.name, precision))
        return self.MAGIC + precision.encode() + b'\n' + onnx_path.read_bytes()

    def deserialize(self, engine_bytes):
        if not engine_bytes.startswith(self.MAGIC):
            raise RuntimeError('corrupt engine')
        return {'precision': engine_bytes.split(b'\n')[1].decode(), 'size': len(engine_bytes)}


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def onnx_path(tmp_path):
    """A private copy of the shared export (the cache writes engines next to it)."""
    copy = tmp_path / 'small.onnx'
    shutil.copyfile(exported_small()[1], copy)
    return copy


def test_exported_graph_uses_only_tensorrt10_ops(onnx_path):
    report = check_trt_compatibility(onnx_path)
    used = sorted(report.op_counts)
    assert {'Conv', 'TopK', 'Gather', 'MatMul', 'Softmax'} <= set(used)
    assert [op for op in used if op not in TRT10_SUPPORTED_OPS] == []
    assert report.non_constant_inputs == [] and 9 <= report.opset <= 20
    assert report.ok, report.summary()
    assert not TRT10_SUPPORTED_OPS & TRT10_UNSUPPORTED_OPS


def test_checker_flags_unsupported_op_and_runtime_topk_k():
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])
    k = helper.make_tensor_value_info('k', TensorProto.INT64, [1])
    nodes = [helper.make_node('Unique', ['x'], ['u']), helper.make_node('TopK', ['x', 'k'], ['v', 'i'], name='top')]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ('u', 'v')]
    model = helper.make_model(helper.make_graph(nodes, 'g', [x, k], outputs),
                              opset_imports=[helper.make_opsetid('', 21)])
    report = check_trt_compatibility(model)
    assert not report.ok
    assert report.unsupported == ['ai.onnx::Unique']
    assert report.non_constant_inputs == ['TopK top input 1']
    assert 'NOT supported' in report.summary()


def test_checker_applies_the_table_restrictions():
    """Hardmax is supported; TopK needs sorted=1 and K < 3840; Reduce* axes inputs (opset 18) must be constants."""
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 5000])
    axes = helper.make_tensor_value_info('axes', TensorProto.INT64, [1])
    big_k = helper.make_tensor('big_k', TensorProto.INT64, [1], [4000])
    small_k = helper.make_tensor('small_k', TensorProto.INT64, [1], [32])
    const_axes = helper.make_tensor('const_axes', TensorProto.INT64, [1], [1])
    nodes = [helper.make_node('Hardmax', ['x'], ['h'], name='hard'),
             helper.make_node('TopK', ['x', 'big_k'], ['v1', 'i1'], name='big'),
             helper.make_node('TopK', ['x', 'small_k'], ['v2', 'i2'], name='unsorted', sorted=0),
             helper.make_node('TopK', ['x', 'small_k'], ['v3', 'i3'], name='fine'),
             helper.make_node('ReduceMean', ['x', 'axes'], ['m1'], name='runtime_axes'),
             helper.make_node('ReduceMax', ['x', 'const_axes'], ['m2'], name='const_axes_max')]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ('h', 'v1', 'v2', 'v3', 'm1', 'm2')]
    graph = helper.make_graph(nodes, 'g', [x, axes], outputs, initializer=[big_k, small_k, const_axes])
    report = check_trt_compatibility(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]))
    assert report.unsupported == [] and 'Hardmax' in TRT10_SUPPORTED_OPS
    assert report.non_constant_inputs == ['ReduceMean runtime_axes input 1']
    assert sorted(report.restrictions) == ['TopK big: K=4000 (TensorRT needs K < 3840)',
                                           'TopK unsorted: sorted=0 (TensorRT needs sorted=1)']
    assert not report.ok and 'restrictions violated' in report.summary()


def test_engine_cache_naming_reuse_and_rebuild(onnx_path):
    builder = FakeTensorRTBuilder()
    path, engine = load_or_build_engine(onnx_path, 'fp16', builder)
    assert path.parent == onnx_path.parent and path.suffix == '.engine'
    assert path.name.startswith('small.') and '.fp16.trt10.3.0.NVIDIA-Jetson-Orin.engine' in path.name
    assert engine['precision'] == 'fp16' and builder.builds == [('small.onnx', 'fp16')]
    # Cached: no rebuild.
    assert load_or_build_engine(onnx_path, 'fp16', builder)[0] == path and len(builder.builds) == 1
    # Another precision / TensorRT version / GPU is another file.
    names = {engine_cache_path(onnx_path, 'fp32', '10.3.0', 'NVIDIA Jetson Orin'),
             engine_cache_path(onnx_path, 'fp16', '10.4.0', 'NVIDIA Jetson Orin'),
             engine_cache_path(onnx_path, 'fp16', '10.3.0', 'NVIDIA GeForce RTX 4090'), path}
    assert len(names) == 4
    # Corrupt engine file -> rebuilt and replaced.
    path.write_bytes(b'\x00garbage')
    records = _LogRecords()
    LOG.addHandler(records)
    try:
        rebuilt_path, engine = load_or_build_engine(onnx_path, 'fp16', builder)
    finally:
        LOG.removeHandler(records)
    assert rebuilt_path == path and len(builder.builds) == 2
    assert any('rebuilding' in message for message in records.messages)
    assert path.read_bytes().startswith(FakeTensorRTBuilder.MAGIC)
    assert not list(onnx_path.parent.glob('.*.tmp'))


def test_changed_model_bytes_change_the_cache_key(tmp_path, onnx_path):
    copy = tmp_path / 'small.onnx'
    model = onnx.load(str(onnx_path))
    copy.write_bytes(model.SerializeToString())
    before = engine_cache_path(copy, 'fp16', '10.3.0', 'gpu')
    model.metadata_props.add(key='note', value='retrained')
    copy.write_bytes(model.SerializeToString())
    assert engine_cache_path(copy, 'fp16', '10.3.0', 'gpu') != before


def test_build_only_mode(onnx_path):
    builder = FakeTensorRTBuilder()
    path = build_engine(onnx_path, 'fp32', build_only=True, builder=builder)
    assert path.is_file() and builder.builds == [('small.onnx', 'fp32')]
    with pytest.raises(BackendError, match='not found'):
        build_engine(onnx_path.with_name('none.onnx'), builder=builder)


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None, reason='TensorRT is installed here')
def test_clear_error_without_tensorrt(onnx_path):
    with pytest.raises(TensorRTUnavailable, match='tensorrt'):
        make_backend('tensorrt', onnx_path, device='cuda', precision='fp16')
    with pytest.raises(TensorRTUnavailable, match='tensorrt'):
        build_engine(onnx_path)
    with pytest.raises(TensorRTUnavailable, match="device='cpu'"):
        make_backend('tensorrt', onnx_path, device='cpu')
