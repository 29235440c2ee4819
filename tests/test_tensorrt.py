"""TensorRT path without a GPU (TensorRT cannot be installed here): the exported graph against the TensorRT 10
operator table, version and device handling, the fp32 layer marks of a weakly typed fp16 build, the engine cache
(key, reuse, rebuild, read-only folders, explicit engine files), and the whole runtime path
(`TensorRTBackend.__init__` / `_infer`) over the FAKE TensorRT of tests/fake_tensorrt.py, against ONNX Runtime.
The last test runs the real TensorRT where TensorRT and CUDA exist."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import FakeDataType, FakeTensorRTBuilder
from onnx import TensorProto, helper
from runtime_fixtures import exported_small, needs_data, real_blocks

from mpnet_model.infer.backends import tensorrt_backend as trt_backend
from mpnet_model.infer.backends.base import BackendError, make_backend
from mpnet_model.infer.backends.tensorrt_backend import (
    LOG,
    EngineKey,
    TensorRTBackend,
    TensorRTUnavailable,
    build_engine,
    check_tensorrt_version,
    fp16_build_mode,
    layer_onnx_nodes,
    load_or_build_engine,
    mark_fp32_layers,
    parse_cuda_device,
    read_fp32_nodes,
)
from mpnet_model.infer.precision import convert_fp16
from mpnet_model.infer.trt_ops import TRT10_SUPPORTED_OPS, TRT10_UNSUPPORTED_OPS, check_trt_compatibility

HAVE_TENSORRT = importlib.util.find_spec('tensorrt') is not None


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    handler = _LogRecords()
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG)
    yield handler.messages
    LOG.removeHandler(handler)


@pytest.fixture
def onnx_path(tmp_path):
    """A private copy of the shared export (the cache writes engines next to it)."""
    copy = tmp_path / 'model' / 'small.onnx'
    copy.parent.mkdir()
    shutil.copyfile(exported_small()[1], copy)
    return copy


def key_for(onnx_path, **changes):
    builder = FakeTensorRTBuilder()
    return EngineKey(**{**EngineKey.create(onnx_path, 'fp16', builder).fields(), 'profile_batch': (1, 8, 16),
                        **changes})


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


def test_versions_and_devices():
    assert check_tensorrt_version('10.3.0') == (10, 3) and check_tensorrt_version('11.4.0.106') == (11, 4)
    for old in ('8.6.1', '9.3.0.post12'):
        with pytest.raises(TensorRTUnavailable, match='too old') as info:
            check_tensorrt_version(old)
        assert 'JetPack 6' in str(info.value) and 'tensorrt-cu12' in str(info.value)
    with pytest.raises(TensorRTUnavailable, match='newer than the tested API range'):
        check_tensorrt_version('12.0.0')
    with pytest.raises(TensorRTUnavailable, match='unreadable'):
        check_tensorrt_version('dev')
    assert fp16_build_mode((10, 3)) == fp16_build_mode((10, 11)) == 'precision-constraints'
    assert fp16_build_mode((10, 12)) == fp16_build_mode((11, 0)) == 'strongly-typed'
    assert parse_cuda_device('cuda') is None and parse_cuda_device('cuda:1') == 1
    with pytest.raises(TensorRTUnavailable, match="device='cpu'"):
        parse_cuda_device('cpu')
    with pytest.raises(BackendError, match="'gpu1'"):
        parse_cuda_device('gpu1')


def test_layer_names_map_to_onnx_nodes():
    nodes = {'/enc/MatMul', '/enc/TopK_1', '/enc/TopK'}
    # TensorRT 10 metadata (with a doc-string part), a fused entry, then the layer-name fallback.
    assert layer_onnx_nodes('x', '[ONNX Layer: /enc/MatMul | doc: a]', nodes) == {'/enc/MatMul'}
    assert layer_onnx_nodes('x', '[ONNX Layer: /a]\x1f[ONNX Layer: /b]', nodes) == {'/a', '/b'}
    assert layer_onnx_nodes('/enc/MatMul', '', nodes) == {'/enc/MatMul'}
    assert layer_onnx_nodes('/enc/MatMul_2', '', nodes) == {'/enc/MatMul'}          # made unique by the parser
    assert layer_onnx_nodes('/enc/TopK_1', '', nodes) == {'/enc/TopK_1'}           # a node's own name wins
    assert layer_onnx_nodes('(Unnamed Layer* 7) [Shuffle]', '', nodes) == set()


def test_fp32_marks_of_a_weakly_typed_fp16_build():
    """Stand-in network objects with the TensorRT 10 layer API: geometry layers and the helpers fed only by them
    are pinned to fp32; index layers get no precision; a layer of another node stays free."""
    trt = SimpleNamespace(float32='F32', float16='F16', int64='I64')

    def tensor(name, dtype='F32'):
        return SimpleNamespace(name=name, dtype=dtype)

    class Layer:
        def __init__(self, name, inputs, outputs, metadata=''):
            self.name, self.metadata, self.inputs, self.outputs = name, metadata, inputs, outputs
            self.num_inputs, self.num_outputs = len(inputs), len(outputs)
            self.precision, self.output_types = None, {}

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    layers = [Layer('/geo/MatMul', [tensor('xyz'), tensor('xyzT')], [tensor('d')], '[ONNX Layer: /geo/MatMul]'),
              Layer('(Unnamed Layer* 3) [Shuffle]', [tensor('d')], [tensor('d2')]),
              Layer('/geo/TopK', [tensor('d2'), None], [tensor('v'), tensor('i', 'I64')]),
              Layer('/geo/Shape', [tensor('d2')], [tensor('s', 'I64')], '[ONNX Layer: /geo/Shape]'),
              Layer('/geo/Gather', [tensor('i', 'I64'), tensor('s', 'I64')], [tensor('g', 'I64')]),
              Layer('/mlp/Conv', [tensor('v')], [tensor('f')], '[ONNX Layer: /mlp/Conv]'),
              Layer('(Unnamed Layer* 9) [Shuffle]', [tensor('f')], [tensor('f2')])]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    fp32 = {'/geo/MatMul', '/geo/TopK', '/geo/Shape', '/geo/Gather', '/geo/Missing'}
    pinned, found = mark_fp32_layers(network, fp32, trt, all_nodes=fp32 | {'/mlp/Conv'})
    assert pinned == 4 and found == {'/geo/MatMul', '/geo/TopK', '/geo/Shape', '/geo/Gather'}
    assert [layer.precision for layer in layers] == ['F32', 'F32', 'F32', 'F32', None, None, None]
    assert [layer.output_types for layer in layers[:4]] == [{0: 'F32'}, {0: 'F32'}, {0: 'F32'}, {}]


def test_engine_cache_naming_reuse_and_rebuild(onnx_path, records):
    builder = FakeTensorRTBuilder()
    path, engine = load_or_build_engine(onnx_path, 'fp32', builder)
    assert path.parent == onnx_path.parent and path.suffix == '.engine'
    assert path.name.startswith('small.fp32.trt10.3.0.NVIDIA-Jetson-Orin.sm87.')
    assert engine.precision == 'fp32' and builder.builds == [('small.onnx', 'fp32')]
    recorded = json.loads(path.with_name(path.name + '.json').read_text())['key']
    assert recorded['tensorrt'] == '10.3.0' and recorded['profile_batch'] == [1, 8, 16]
    # Cached: no rebuild.
    assert load_or_build_engine(onnx_path, 'fp32', builder)[0] == path and len(builder.builds) == 1
    # Corrupt engine file -> rebuilt and replaced.
    path.write_bytes(b'\x00garbage')
    rebuilt_path, engine = load_or_build_engine(onnx_path, 'fp32', builder)
    assert rebuilt_path == path and len(builder.builds) == 2
    assert any('rebuilding' in message for message in records)
    assert path.read_bytes().startswith(FakeTensorRTBuilder.MAGIC)
    assert not list(onnx_path.parent.glob('.*.tmp'))


def test_cache_key_covers_everything_an_engine_depends_on(tmp_path, onnx_path):
    base = key_for(onnx_path)
    variants = [key_for(onnx_path, precision='fp32'), key_for(onnx_path, tensorrt='10.4.0'),
                key_for(onnx_path, device_name='NVIDIA GeForce RTX 4090'),
                key_for(onnx_path, compute_capability='sm89'),
                key_for(onnx_path, profile_batch=(1, 8, 32)), key_for(onnx_path, workspace_bytes=2 << 30),
                key_for(onnx_path, package='0.0.0-other'), key_for(onnx_path, recipe=base.recipe + 1)]
    names = {key.file_name('small') for key in [base, *variants]}
    assert len(names) == len(variants) + 1
    model = onnx.load(str(onnx_path))
    model.metadata_props.add(key='note', value='retrained')
    retrained = tmp_path / 'retrained.onnx'
    retrained.write_bytes(model.SerializeToString())
    assert EngineKey.create(retrained, 'fp16', FakeTensorRTBuilder()).onnx_sha256 != base.onnx_sha256


def test_read_only_model_folder_uses_the_user_cache(onnx_path, tmp_path, monkeypatch, records):
    cache_home = tmp_path / 'xdg'
    monkeypatch.setenv('XDG_CACHE_HOME', str(cache_home))
    onnx_path.parent.chmod(0o555)
    if os.geteuid() == 0:       # root ignores the mode bits: make the check see what a user account would
        real = trt_backend._writable_folder
        monkeypatch.setattr(trt_backend, '_writable_folder', lambda folder: folder != onnx_path.parent and real(folder))
    try:
        builder = FakeTensorRTBuilder()
        path, _ = load_or_build_engine(onnx_path, 'fp32', builder)
        assert path.parent == cache_home / 'mpnet_ros' and path.is_file()
        assert any('not writable' in m and str(cache_home / 'mpnet_ros') in m for m in records)
        assert load_or_build_engine(onnx_path, 'fp32', builder)[0] == path and len(builder.builds) == 1
        explicit = tmp_path / 'engines'
        assert load_or_build_engine(onnx_path, 'fp32', builder, cache_dir=explicit)[0].parent == explicit
    finally:
        onnx_path.parent.chmod(0o755)
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/path')          # ignored, as the XDG spec says
    assert trt_backend.user_cache_dir() == trt_backend.Path.home() / '.cache' / 'mpnet_ros'


def test_explicit_engine_path_is_validated_and_never_clobbered(onnx_path, tmp_path):
    builder = FakeTensorRTBuilder()
    engine_file = tmp_path / 'robot' / 'mpnet.engine'
    backend = TensorRTBackend(onnx_path, precision='fp32', engine_path=engine_file, builder=builder)
    assert backend.engine_path == engine_file and builder.builds == [('small.onnx', 'fp32')]
    TensorRTBackend(onnx_path, precision='fp32', engine_path=engine_file, builder=builder)
    assert len(builder.builds) == 1                                   # reused
    newer = FakeTensorRTBuilder(version='10.4.0')
    TensorRTBackend(onnx_path, precision='fp32', engine_path=engine_file, builder=newer)
    assert len(newer.builds) == 1                                     # our sidecar says stale: rebuilt in place
    # An engine from elsewhere (no sidecar) that fits the model is used as it is ...
    foreign = tmp_path / 'trtexec.engine'
    foreign.write_bytes(engine_file.read_bytes())
    TensorRTBackend(onnx_path, precision='fp32', engine_path=foreign, builder=newer)
    assert len(newer.builds) == 1
    # ... one that does not (another model's I/O, or garbage) is refused, not overwritten.
    other = FakeTensorRTBuilder(io_override={'sem_logits': ((-1, 1024, 99), FakeDataType.FLOAT)})
    with pytest.raises(BackendError, match=r'trtexec.engine.*sem_logits shape \(-1, 1024, 99\)'):
        TensorRTBackend(onnx_path, precision='fp32', engine_path=foreign, builder=other)
    foreign.write_bytes(b'junk')
    with pytest.raises(BackendError, match='engine given by engine_path cannot be used'):
        TensorRTBackend(onnx_path, precision='fp32', engine_path=foreign, builder=newer)
    assert foreign.read_bytes() == b'junk' and len(newer.builds) == 1


@needs_data
def test_fake_engine_runtime_path_matches_onnxruntime(onnx_path):
    """__init__ and _infer end to end: FPS on the buffers' device, shapes from the engine, batches split at the
    profile maximum; outputs equal ONNX Runtime's on the same graph."""
    blocks = real_blocks(1024, count=2)[:, :, :]                                 # (4,1024,9) real blocks
    builder = FakeTensorRTBuilder()
    backend = make_backend('tensorrt', onnx_path, precision='fp32', builder=builder, profile_batch=(1, 2, 3))
    assert backend.device == 'cpu' and backend.io.max_batch == 3
    sem, emb = backend.run(blocks)
    assert backend.context.executions == 2                                       # 3 + 1
    ref_sem, ref_emb = make_backend('onnxruntime', onnx_path).run(blocks)
    np.testing.assert_allclose(sem, ref_sem, atol=1e-5, rtol=0)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)
    assert sem.dtype == np.float32 and sem.shape == (4, 1024, backend.metadata.num_classes)


@needs_data
def test_buffers_take_the_engine_dtypes(onnx_path):
    """An engine with fp16 outputs and int32 index inputs gets buffers of those types (the fake reads and writes
    the raw memory with the dtypes it reports)."""
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    classes, npoint0 = len(json.loads(props['class_names'])), json.loads(props['sa_npoints'])[0]
    override = {'sem_logits': ((-1, 1024, classes), FakeDataType.HALF), 'fps_0': ((-1, npoint0), FakeDataType.INT32)}
    backend = make_backend('tensorrt', onnx_path, precision='fp32', builder=FakeTensorRTBuilder(io_override=override))
    assert backend.io.dtypes['sem_logits'] == 'HALF' and backend.io.dtypes['fps_0'] == 'INT32'
    blocks = real_blocks(1024, count=1)
    sem, emb = backend.run(blocks)
    ref_sem, ref_emb = make_backend('onnxruntime', onnx_path).run(blocks)
    np.testing.assert_allclose(sem, ref_sem, atol=2e-2 * max(1.0, float(np.abs(ref_sem).max())), rtol=0)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5, rtol=0)


def test_every_tensorrt_boolean_is_checked(onnx_path):
    backend = make_backend('tensorrt', onnx_path, precision='fp32', builder=FakeTensorRTBuilder())
    blocks = np.zeros((1, 1024, 9), np.float32)
    blocks[0, :, :3] = np.random.default_rng(0).random((1024, 3))
    backend.run(blocks)
    for method, result, match in (('set_input_shape', False, 'rejected shape'),
                                  ('set_tensor_address', False, 'buffer address'),
                                  ('execute_async_v3', False, 'execution failed'),
                                  ('get_tensor_shape', (1, 1024, 2), 'reports output sem_logits shape')):
        original = getattr(backend.context, method)
        setattr(backend.context, method, lambda *args, _result=result: _result)
        with pytest.raises(BackendError, match=match):
            backend.run(blocks)
        setattr(backend.context, method, original)
    backend.run(blocks)
    session = backend.context.engine.session     # an engine that computes NaN: refused, not passed on
    backend.context.engine.session = SimpleNamespace(
        get_inputs=session.get_inputs, get_outputs=session.get_outputs,
        run=lambda names, feeds: [np.full_like(v, np.nan) for v in session.run(names, feeds)])
    with pytest.raises(BackendError, match='fp32 engine gave non-finite sem_logits'):
        backend.run(blocks)


def test_fp32_node_list_from_metadata_or_graph(onnx_path, tmp_path):
    model = onnx.load(str(onnx_path))
    stored = read_fp32_nodes(model, 'small.onnx')
    assert stored and set(stored) <= {node.name for node in model.graph.node}
    assert any(node.op_type == 'TopK' for node in model.graph.node if node.name in stored)
    del model.metadata_props[:]                     # an export that predates the list: computed from the graph
    assert read_fp32_nodes(model, 'old.onnx') == stored
    model.metadata_props.add(key='fp32_nodes', value='not json')
    with pytest.raises(BackendError, match='old.onnx.*fp32_nodes.*precision fp32'):
        read_fp32_nodes(model, 'old.onnx')
    with pytest.raises(BackendError, match="tensorrt backend: precision='bf16' is not supported"):
        make_backend('tensorrt', onnx_path, precision='bf16', builder=FakeTensorRTBuilder())


@needs_data
def test_fp16_engine_of_the_fp16_graph_stays_finite_and_agrees(onnx_path):
    """The stand-in for a strongly typed TensorRT fp16 engine: the fake engine runs the fp16-converted graph
    (geometry fp32, the rest fp16) through the whole runtime path; finite, >= 99 % argmax agreement with fp32."""
    blocks = real_blocks(1024, count=3)
    builder = FakeTensorRTBuilder(version='10.12.0', convert_fp16=convert_fp16)
    backend = make_backend('tensorrt', onnx_path, precision='fp16', builder=builder)
    assert builder.builds == [('small.onnx', 'fp16')] and '.fp16.trt10.12.0.' in backend.engine_path.name
    sem, emb = backend.run(blocks)
    ref_sem, ref_emb = make_backend('onnxruntime', onnx_path).run(blocks)
    assert np.isfinite(sem).all() and np.isfinite(emb).all()
    assert (sem.argmax(-1) == ref_sem.argmax(-1)).mean() >= 0.99
    assert np.abs(sem - ref_sem).max() > 0          # it did run in half precision
    assert backend.io.dtypes['points'] == 'FLOAT'   # the fp16 graph keeps float32 I/O


def test_build_only_mode_and_export_cli_print_the_engine_path(onnx_path, tmp_path, monkeypatch, capsys):
    builder = FakeTensorRTBuilder()
    path = build_engine(onnx_path, 'fp32', builder=builder)
    assert path.is_file() and builder.builds == [('small.onnx', 'fp32')]
    with pytest.raises(BackendError, match='not found'):
        build_engine(onnx_path.with_name('none.onnx'), builder=builder)
    from mpnet_model.infer.export import main

    monkeypatch.setattr(trt_backend, 'TensorRTBuilder', lambda device: FakeTensorRTBuilder())   # no TensorRT here
    cache = tmp_path / 'engines'
    assert main([str(exported_small()[0]), '-o', str(tmp_path / 'm.onnx'), '--build-engine', '--precision', 'fp32',
                 '--engine-cache-dir', str(cache)]) == 0
    printed = capsys.readouterr().out
    engines = list(cache.glob('m.fp32.*.engine'))
    assert len(engines) == 1 and f'engine: {engines[0]}' in printed


@pytest.mark.skipif(HAVE_TENSORRT, reason='TensorRT is installed here')
def test_clear_error_without_tensorrt(onnx_path):
    with pytest.raises(TensorRTUnavailable, match='tensorrt-cu12'):
        make_backend('tensorrt', onnx_path, device='cuda', precision='fp16')
    with pytest.raises(TensorRTUnavailable, match='JetPack'):
        build_engine(onnx_path)
    with pytest.raises(TensorRTUnavailable, match="device='cpu'"):
        make_backend('tensorrt', onnx_path, device='cpu')


@pytest.mark.skipif(HAVE_TENSORRT, reason='TensorRT is installed here')
def test_gpu_check_script_fails_clearly_without_tensorrt(capsys):
    import runpy

    script = runpy.run_path(str(trt_backend.Path(__file__).parents[1] / 'benchmarks' / 'gpu_tensorrt_check.py'))
    assert script['main']([]) == 2
    assert 'TensorRT is not installed' in capsys.readouterr().err


@needs_data
@pytest.mark.skipif(not HAVE_TENSORRT or not torch.cuda.is_available(), reason='needs TensorRT and a CUDA GPU')
def test_real_tensorrt_matches_onnxruntime(onnx_path):
    blocks = real_blocks(1024, count=2)
    ref_sem, ref_emb = make_backend('onnxruntime', onnx_path).run(blocks)
    sem, emb = make_backend('tensorrt', onnx_path, device='cuda', precision='fp32').run(blocks)
    np.testing.assert_allclose(sem, ref_sem, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-3, rtol=1e-3)
