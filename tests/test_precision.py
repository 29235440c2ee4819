"""Half precision (issue 13): the fp16 NaN mechanism, float32 geometry under autocast, the fp32 node list of the
exported graph, the fp16 ONNX graph in ONNX Runtime (the CPU stand-in for TensorRT FP16), the precision option of
the backends, and AMP training on the CPU. CPU `torch.autocast(float16)` reproduces the GPU's fp16 arithmetic.

Agreement bounds (docs/precision.md): semantic argmax equal to fp32 on >= 99 % of the points (bf16: 97 %);
embeddings within EMBED_BOUND x max|embedding| of fp32 (measured: 0.3 % for fp16 autocast and the fp16 ONNX graph,
4.6 % for bf16).
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from golden_cases import ROOM_MODEL
from runtime_fixtures import needs_data, real_blocks
from torch.utils.data import TensorDataset

from mpnet_model.config import ConfigError, ModelConfig, small_config
from mpnet_model.default_model import DEFAULT_CHECKPOINT
from mpnet_model.infer import precision
from mpnet_model.infer.backends.base import BackendError, ModelMetadata, make_backend
from mpnet_model.infer.backends.onnx_backend import graph_feeds
from mpnet_model.infer.export import export_checkpoint
from mpnet_model.infer.precision import PrecisionError, convert_fp16, fp32_node_names, fp32_nodes_of
from mpnet_model.model.checkpoint import load_checkpoint
from mpnet_model.model.losses import MPNetLoss
from mpnet_model.model.memory import read_memory
from mpnet_model.model.mpnet import MPNet, random_model
from mpnet_model.model.pointnet2 import (
    _squared_distances,
    _squared_distances_fp32,
    ball_query,
    gather_points,
    three_nn_interpolate,
)
from mpnet_model.train.config import config_from_dict
from mpnet_model.train.trainer import Trainer

EMBED_BOUND = 0.01      # fp16: max |emb16 - emb32| <= 1 % of max |emb32|
BF16_EMBED_BOUND = 0.1  # bf16 (8 mantissa bits): 10 %
MIN_AGREEMENT = 0.99
BF16_MIN_AGREEMENT = 0.97   # bf16: the model of issue 14 agrees on 97.9 % of one real block's points (fp16: > 99.9 %)


def _compare(logits, embeddings, ref_logits, ref_embeddings) -> tuple[bool, float, float]:
    """(all finite, argmax agreement, max embedding difference relative to max |reference embedding|)."""
    logits, embeddings = np.asarray(logits, np.float32), np.asarray(embeddings, np.float32)
    finite = bool(np.isfinite(logits).all() and np.isfinite(embeddings).all())
    agreement = float((logits.argmax(-1) == np.asarray(ref_logits).argmax(-1)).mean())
    scale = float(np.abs(ref_embeddings).max())
    return finite, agreement, float(np.nanmax(np.abs(embeddings - ref_embeddings))) / scale


# ---------------------------------------------------------------------------------------------- the mechanism
def test_fp16_distance_expansion_is_the_nan_source_and_fp32_geometry_removes_it():
    # A coarse point is an FPS subset of the fine points: coincident pairs. In fp16 the expansion
    # |q|^2 + |p|^2 - 2 q.p of a coincident pair rounds to <= 0, 1e-8 is 0, 1 / 0 = inf, inf / inf = NaN.
    fine = torch.tensor([[[1.3, 2.7, 0.9], [0.2, 0.1, 0.3], [1.0, 2.0, 0.5], [3.0, 1.0, 1.5]]])
    coarse = fine[:, [0, 2, 3]]
    half = _squared_distances_fp32(fine.half(), coarse.half())
    assert float(half[0, 0, 0]) <= 0.0 and float(torch.tensor(1e-8, dtype=torch.float16)) == 0.0
    inverse = 1.0 / (torch.sqrt(half.clamp_min(0)) + torch.tensor(1e-8, dtype=torch.float16))
    assert torch.isinf(inverse).any()
    # Now: float32 distances under autocast, finite weights, the coincident point takes (almost) all the weight.
    features = torch.arange(6.0).reshape(1, 3, 2)
    with torch.autocast('cpu', dtype=torch.float16):
        assert _squared_distances(fine, coarse).dtype == torch.float32
        interpolated = three_nn_interpolate(fine, coarse, features.half())
    assert torch.isfinite(interpolated).all()
    torch.testing.assert_close(interpolated[0, 0].float(), features[0, 0], atol=1e-3, rtol=0)


@needs_data
def test_ball_query_under_autocast_equals_fp32_on_real_blocks():
    xyz = torch.from_numpy(real_blocks(1024, count=1)[..., :3].copy())
    centres = gather_points(xyz, torch.from_numpy(np.arange(0, 1024, 4)).expand(2, -1))
    reference = ball_query(0.1, 32, xyz, centres)
    with torch.autocast('cpu', dtype=torch.float16):
        assert torch.equal(ball_query(0.1, 32, xyz, centres), reference)      # was: 47 % of the slots differ


def test_memory_reader_is_finite_for_zero_and_huge_queries_under_fp16_autocast():
    keys = torch.randn(40, 64)
    query = torch.zeros(1, 3, 64)
    query[0, 1] = 1000.0                 # |x|^2 = 6.4e7 > 65504: the fp16 norm would overflow
    query[0, 2, :4] = 1e-3               # tiny but non-zero
    with torch.autocast('cpu', dtype=torch.float16):
        augmented, weights = read_memory(query, keys)
    assert torch.isfinite(augmented).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(weights[0, 0].float(), torch.full((40,), 1 / 40), atol=1e-3, rtol=0)  # zero: uniform
    reference = read_memory(query, keys)[1]
    torch.testing.assert_close(weights.float(), reference, atol=2e-3, rtol=0)


def test_losses_run_in_fp32_under_autocast():
    torch.manual_seed(0)
    cfg = small_config(num_points=64, sa_npoints=(32, 16, 8, 4))
    outputs = {'sem_logits': torch.randn(2, 64, 13, requires_grad=True),
               'ins_embed': torch.randn(2, 64, 5, requires_grad=True),
               'centroids': torch.randn(2, 64, 3), 'f_seg_aug': torch.randn(2, 64, 64)}
    points = torch.rand(2, 64, 9)
    sem, ins = torch.randint(0, 13, (2, 64)), torch.randint(0, 4, (2, 64))
    memory = torch.randn(13, 64)
    reference, _ = MPNetLoss(cfg)(outputs, points, sem, ins, memory)
    half_outputs = {k: v.half() for k, v in outputs.items()}
    with torch.autocast('cpu', dtype=torch.float16):
        total, terms = MPNetLoss(cfg)(half_outputs, points.half(), sem, ins, memory.half())
    assert total.dtype == torch.float32 and set(terms) >= {'ce', 'dis', 'rseg', 'rins'}
    torch.testing.assert_close(total, reference, rtol=5e-3, atol=0)
    total.backward()
    assert torch.isfinite(outputs['ins_embed'].grad).all()


# ---------------------------------------------------------------------------------------------- forward, autocast
def _paper_model() -> MPNet:
    """Randomly initialised paper-config MPNet with non-trivial BN statistics; the heads' output layers are scaled
    so that logits and embeddings span ~±10, as a trained model's do (a random model's are ~0.1)."""
    return random_model(ModelConfig(), head_scale=60.0)


def _autocast_forward(model: MPNet, blocks: np.ndarray, dtype) -> tuple:
    points = torch.from_numpy(blocks)
    indices = model.sample_indices(points[..., :3])
    with torch.no_grad():
        reference = model(points, indices)
        with torch.autocast('cpu', dtype=dtype):
            outputs = model(points, indices)
    for name, value in outputs.items():
        assert value is None or torch.isfinite(value).all(), f'{name} is not finite under {dtype} autocast'
    return _compare(outputs['sem_logits'].float(), outputs['ins_embed'].float(),
                    reference['sem_logits'].numpy(), reference['ins_embed'].numpy())


@needs_data
@pytest.mark.parametrize('dtype, bound, minimum', [(torch.float16, EMBED_BOUND, MIN_AGREEMENT),
                                                   (torch.bfloat16, BF16_EMBED_BOUND, BF16_MIN_AGREEMENT)])
def test_trained_small_model_under_cpu_autocast_agrees_with_fp32(dtype, bound, minimum):
    model = load_checkpoint(DEFAULT_CHECKPOINT)[0].eval()      # the shipped (trained) small-config model
    finite, agreement, embed_error = _autocast_forward(model, real_blocks(model.cfg.num_points, count=2), dtype)
    # bf16 keeps 8 mantissa bits: its own agreement bound, as in the backend test below (stage 4: 99.0 %)
    assert finite and agreement >= minimum and embed_error <= bound, (agreement, embed_error)


@needs_data
@pytest.mark.slow
def test_paper_config_under_fp16_autocast_agrees_with_fp32():
    # CPU fp16 is emulated (no fp16 units here): ~1 min for these two 4096-point blocks on 2 shared cores.
    finite, agreement, embed_error = _autocast_forward(_paper_model(), real_blocks(4096, count=1), torch.float16)
    assert finite and agreement >= MIN_AGREEMENT and embed_error <= EMBED_BOUND, (agreement, embed_error)


# ---------------------------------------------------------------------------------------------- ONNX fp16 graph
@functools.lru_cache(maxsize=1)
def _shipped_export() -> Path:
    folder = Path(tempfile.mkdtemp(prefix='mpnet-precision-'))
    return export_checkpoint(DEFAULT_CHECKPOINT, folder / 'shipped.onnx')


@pytest.fixture(scope='module')
def shipped_onnx() -> Path:
    return _shipped_export()


def _ort_outputs(path: Path, blocks: np.ndarray):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    props = dict(session.get_modelmeta().custom_metadata_map)
    return session.run(None, graph_feeds(blocks, ModelMetadata.from_props(props, str(path))))


def test_export_marks_the_geometry_and_memory_normalisation_fp32(shipped_onnx):
    model = onnx.load(str(shipped_onnx))
    props = {p.key: p.value for p in model.metadata_props}
    names = json.loads(props['fp32_nodes'])
    assert names == fp32_node_names(model) == fp32_nodes_of(model)
    by_name = {node.name: node for node in model.graph.node}
    listed = [by_name[name] for name in names]
    ops = [node.op_type for node in listed]

    def count(op):
        return sum(node.op_type == op for node in model.graph.node)

    # Every neighbour search (4 SA ball queries + 2 decoders x 4 FP levels) with its distance matmul is fp32 ...
    assert ops.count('TopK') == count('TopK') == 12 and ops.count('MatMul') == 12
    assert ops.count('Reciprocal') == 8 and ops.count('ReduceL2') == count('ReduceL2')   # 3-NN weights, normalize
    # ... opened by the model's explicit casts; no convolution, no memory matmul, no softmax, no head is listed.
    assert sum(node.op_type == 'Cast' and node.attribute[0].i == onnx.TensorProto.FLOAT for node in listed) >= 12
    assert 'Conv' not in ops and 'Softmax' not in ops and count('MatMul') == 12 + 4    # + 2 memory reads x 2
    assert not any(name.startswith(('/classifier', '/embedding', '/centroid')) for name in names)


@needs_data
def test_fp16_onnx_graph_in_onnxruntime_agrees_and_needs_the_marking(shipped_onnx, tmp_path):
    blocks = real_blocks(1024, count=2)
    ref_logits, ref_embeddings = _ort_outputs(shipped_onnx, blocks)
    marked = convert_fp16(shipped_onnx, tmp_path / 'marked.onnx')
    graph = onnx.load(str(marked)).graph
    assert sum(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer) > 20   # really converted
    producer = {out: node for node in graph.node for out in node.output}
    round_trips = [node.name for node in graph.node if node.op_type == 'Cast' and node.attribute[0].i == 1
                   and producer.get(node.input[0]) is not None and producer[node.input[0]].op_type == 'Cast'
                   and producer[node.input[0]].attribute[0].i == onnx.TensorProto.FLOAT16]
    assert not round_trips, round_trips          # the coordinates never pass through fp16 on the way
    finite, agreement, embed_error = _compare(*_ort_outputs(marked, blocks), ref_logits, ref_embeddings)
    assert finite and agreement >= MIN_AGREEMENT and embed_error <= EMBED_BOUND, (agreement, embed_error)
    # The same conversion without the fp32 list (the graph as a plain fp16 build sees it) is worse ...
    unmarked = convert_fp16(shipped_onnx, tmp_path / 'unmarked.onnx', fp32_nodes=[])
    _, _, unmarked_error = _compare(*_ort_outputs(unmarked, blocks), ref_logits, ref_embeddings)
    assert unmarked_error > embed_error, (unmarked_error, embed_error)
    # ... and breaks the bound on the issue-16 model, whose inputs carry room coordinates (`room` encoding): measured
    # 13 % of the embedding range (0.50 on embeddings of |max| 3.9), 40x the marked graph's error. (The shipped
    # `floor_local` model's unmarked graph errs by ~4.7 %: its inputs are block-local.)
    room_logits, room_embeddings = _ort_outputs(ROOM_MODEL, blocks)
    unmarked = convert_fp16(ROOM_MODEL, tmp_path / 'room_unmarked.onnx', fp32_nodes=[])
    _, _, unmarked_error = _compare(*_ort_outputs(unmarked, blocks), room_logits, room_embeddings)
    assert unmarked_error > 5 * EMBED_BOUND, unmarked_error


def test_convert_fp16_errors_name_the_problem(shipped_onnx, tmp_path):
    with pytest.raises(PrecisionError, match='not found'):
        convert_fp16(tmp_path / 'missing.onnx', tmp_path / 'out.onnx')
    (tmp_path / 'bad.onnx').write_bytes(b'not a protobuf at all' * 10)
    with pytest.raises(PrecisionError, match='bad.onnx'):
        convert_fp16(tmp_path / 'bad.onnx', tmp_path / 'out.onnx')
    with pytest.raises(PrecisionError, match='not in the graph'):
        convert_fp16(shipped_onnx, tmp_path / 'out.onnx', fp32_nodes=['/no/such/node'])
    half = convert_fp16(shipped_onnx, tmp_path / 'half.onnx')
    with pytest.raises(PrecisionError, match='already a half-precision graph'):
        convert_fp16(half, tmp_path / 'twice.onnx')
    assert not (tmp_path / 'out.onnx').exists()


# ---------------------------------------------------------------------------------------------- backends
@needs_data
def test_backends_run_half_precision_on_cpu(shipped_onnx, tmp_path, monkeypatch):
    blocks = real_blocks(1024, count=1)
    reference = make_backend('torch', DEFAULT_CHECKPOINT).run(blocks)
    for precision_name, bound, minimum in (('fp16', EMBED_BOUND, MIN_AGREEMENT),
                                           ('bf16', BF16_EMBED_BOUND, BF16_MIN_AGREEMENT)):
        finite, agreement, error = _compare(*make_backend('torch', DEFAULT_CHECKPOINT, precision=precision_name)
                                            .run(blocks), *reference)
        assert finite and agreement >= minimum and error <= bound, (precision_name, agreement, error)

    model = tmp_path / 'model.onnx'
    model.write_bytes(shipped_onnx.read_bytes())
    backend = make_backend('onnxruntime', model, precision='fp16')
    cached = precision.fp16_model_path(model)
    assert cached.parent == tmp_path and cached.is_file() and backend.metadata.extra.get('precision') == 'fp16'
    finite, agreement, error = _compare(*backend.run(blocks), *make_backend('onnxruntime', model).run(blocks))
    assert finite and agreement >= MIN_AGREEMENT and error <= EMBED_BOUND, (agreement, error)
    stamp = cached.stat().st_mtime_ns
    make_backend('onnxruntime', model, precision='fp16')                 # reused, not converted again
    assert cached.stat().st_mtime_ns == stamp
    # A read-only model folder (an installed package): the conversion goes to the user cache folder.
    monkeypatch.setenv('MPNET_CACHE_DIR', str(tmp_path / 'user-cache'))
    monkeypatch.setattr(precision.os, 'access', lambda path, mode: False)
    assert precision.fp16_model_path(model).parent == tmp_path / 'user-cache'


def test_precision_errors_name_the_choice(shipped_onnx):
    with pytest.raises(BackendError, match="precision='int8'"):
        make_backend('torch', DEFAULT_CHECKPOINT, precision='int8')
    with pytest.raises(BackendError, match='bf16'):
        make_backend('onnxruntime', shipped_onnx, precision='bf16')
    with pytest.raises(BackendError, match='bf16'):
        make_backend('tensorrt', shipped_onnx, precision='bf16')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none on this machine)')
def test_torch_backend_fp16_on_cuda_agrees_with_fp32():
    blocks = real_blocks(1024, count=2)
    reference = make_backend('torch', DEFAULT_CHECKPOINT, device='cuda').run(blocks)
    finite, agreement, error = _compare(*make_backend('torch', DEFAULT_CHECKPOINT, device='cuda',
                                                      precision='fp16').run(blocks), *reference)
    assert finite and agreement >= MIN_AGREEMENT and error <= EMBED_BOUND, (agreement, error)


# ---------------------------------------------------------------------------------------------- AMP training on CPU
TINY_MODEL = dict(num_points=256, feature_dim=32, sa_npoints=[128, 32, 8, 4],
                  sa_mlps=[[16, 16, 32], [32, 32, 64], [64, 64, 64], [64, 64, 128]],
                  fp_mlps=[[64, 64], [64, 64], [64, 32], [32, 32, 32]], mem_per_class=4)


def _train_losses(tmp_path: Path, steps: int, **run) -> tuple[list[float], Trainer]:
    """`steps` train steps of the full model on one fixed batch of 4 synthetic blocks (same init every call)."""
    from test_overfit import make_synthetic_block

    cfg = config_from_dict({'ablation': 'full', 'model': TINY_MODEL, 'optim': {'batch_size': 4, 'lr': 0.005},
                            'run': {'device': 'cpu', 'num_workers': 0, 'resume': False, 'log_every': 1000,
                                    'out_dir': str(tmp_path / f'run-{len(list(tmp_path.iterdir()))}'), **run}})
    points, sem, ins = (torch.from_numpy(np.stack(part))
                        for part in zip(*[make_synthetic_block(256, seed) for seed in range(4)]))
    trainer = Trainer(cfg, TensorDataset(points, sem, ins))
    losses = [trainer.train_step(points, sem, ins)['total'] for _ in range(steps)]
    trainer.close()
    return losses, trainer


def test_fp16_amp_training_on_cpu_is_finite_and_learns_as_fp32(tmp_path):
    fp32, _ = _train_losses(tmp_path, 20)
    fp16, trainer = _train_losses(tmp_path, 20, amp_cpu=True, amp_dtype='fp16')
    assert trainer.use_amp and trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    assert all(np.isfinite(fp16)), fp16                       # was: FloatingPointError at step 0
    assert abs(fp16[0] - fp32[0]) <= 0.01 * fp32[0]            # same init, same batch: the same first loss
    assert fp32[-1] < 0.7 * fp32[0] and fp16[-1] < 0.7 * fp16[0], (fp32, fp16)
    assert abs(fp16[-1] / fp16[0] - fp32[-1] / fp32[0]) < 0.1, (fp32, fp16)   # reduced as much as fp32


def test_bf16_amp_training_step_and_amp_dtype_errors(tmp_path):
    losses, trainer = _train_losses(tmp_path, 2, amp_cpu=True, amp_dtype='bf16')
    assert all(np.isfinite(losses)) and trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    with pytest.raises(ConfigError, match='run.amp_dtype'):
        config_from_dict({'run': {'amp_dtype': 'fp8'}})
