"""MPNet forward contract (docs/interfaces.md), memory wiring, gradients, determinism and ablation presets."""
import time

import pytest
import torch

from mpnet_model.config import ABLATIONS, ModelConfig, ablation_config, small_config
from mpnet_model.model.mpnet import MPNet

# Fewer points than small_config's 1024 keep the CPU tests fast; the architecture is unchanged.
TINY = dict(num_points=256, sa_npoints=(64, 32, 16, 4))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return MPNet(cfg)


def random_points(batch, num_points, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_points, 9, generator=generator)


@pytest.mark.parametrize('batch', [1, 8])
def test_output_shapes_small_config(batch):
    cfg = small_config()
    model = build(cfg).eval()
    points = random_points(batch, cfg.num_points)
    with torch.no_grad():
        out = model(points)
    n, d = cfg.num_points, cfg.feature_dim
    expected = {'sem_logits': (batch, n, cfg.num_classes), 'ins_embed': (batch, n, cfg.embed_dim),
                'centroids': (batch, n, 3), 'f_seg': (batch, n, d), 'f_ins': (batch, n, d),
                'f_seg_aug': (batch, n, d), 'f_ins_aug': (batch, n, d),
                'ins_weights': (batch, n, cfg.memory_slots), 'seg_weights': (batch, n, cfg.num_classes)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out['ins_weights'].sum(-1), torch.ones(batch, n))
    # With the memory on, F^_seg is the gamma-weighted sum of the rows of C (eq. 2 on C).
    torch.testing.assert_close(out['f_seg_aug'], out['seg_weights'] @ model.semantic_memory())
    torch.testing.assert_close(out['f_ins_aug'], out['ins_weights'] @ model.memory.memory)


def test_full_default_config_forward_batch1():
    cfg = ModelConfig()
    model = build(cfg).eval()
    start = time.perf_counter()
    with torch.no_grad():
        out = model(random_points(1, 4096))
    elapsed = time.perf_counter() - start
    assert out['sem_logits'].shape == (1, 4096, 13) and out['ins_embed'].shape == (1, 4096, 5)
    assert out['ins_weights'].shape == (1, 4096, 150 * 13)
    assert elapsed < 60, f'default-config forward took {elapsed:.1f} s'


def test_given_sample_indices_equal_internal_fps():
    cfg = small_config(**TINY)
    model = build(cfg).eval()
    points = random_points(2, cfg.num_points)
    indices = model.sample_indices(points[..., :3])
    assert [tuple(i.shape) for i in indices] == [(2, n) for n in cfg.sa_npoints]
    with torch.no_grad():
        torch.testing.assert_close(model(points, indices)['sem_logits'], model(points)['sem_logits'])


def memory_grad(cfg, output_key):
    model = build(cfg).train()
    out = model(random_points(2, cfg.num_points))
    out[output_key].square().mean().backward()
    return model.memory.memory.grad


def test_gradient_reaches_memory_from_instance_branch():
    cfg = small_config(use_ins_memory=True, use_seg_memory=False, **TINY)
    grad = memory_grad(cfg, 'ins_embed')
    assert grad is not None and grad.abs().sum() > 0
    assert (grad.abs().sum(1) > 0).all()   # every slot gets attention weight, hence gradient


def test_gradient_reaches_memory_from_semantic_branch():
    cfg = small_config(use_ins_memory=False, use_seg_memory=True, **TINY)
    grad = memory_grad(cfg, 'sem_logits')
    assert grad is not None and grad.abs().sum() > 0
    # Through eq. 1 only: every slot of one class receives the same gradient (1/Mc of its C row's).
    per_class = grad.view(cfg.num_classes, cfg.mem_per_class, cfg.feature_dim)
    torch.testing.assert_close(per_class, per_class[:, :1].expand_as(per_class))


def test_semantic_memory_changes_with_memory():
    cfg = small_config(**TINY)
    model = build(cfg)
    before = model.semantic_memory().detach().clone()
    with torch.no_grad():
        model.memory.memory[cfg.mem_per_class:2 * cfg.mem_per_class] += 2.0   # all slots of class 1
    after = model.semantic_memory()
    torch.testing.assert_close(after[1], before[1] + 2.0)
    torch.testing.assert_close(after[[0, *range(2, cfg.num_classes)]], before[[0, *range(2, cfg.num_classes)]])


def test_deterministic_under_fixed_seed():
    cfg = small_config(**TINY)
    points = random_points(2, cfg.num_points)
    outputs = []
    for _ in range(2):
        model = build(cfg, seed=7).train()
        torch.manual_seed(11)   # dropout masks
        outputs.append(model(points))
    for key in ('sem_logits', 'ins_embed', 'centroids', 'ins_weights'):
        assert torch.equal(outputs[0][key], outputs[1][key]), key
    different = build(cfg, seed=8).train()
    torch.manual_seed(11)
    assert not torch.allclose(different(points)['sem_logits'], outputs[0]['sem_logits'])


@pytest.mark.parametrize('name', sorted(ABLATIONS))
def test_ablation_presets_build_and_run(name):
    cfg = ablation_config(name, small_config(**TINY))
    model = build(cfg).eval()
    with torch.no_grad():
        out = model(random_points(1, cfg.num_points))
    assert out['sem_logits'].shape == (1, cfg.num_points, cfg.num_classes)
    assert (out['ins_weights'] is not None) == cfg.use_ins_memory
    assert (out['seg_weights'] is not None) == cfg.use_seg_memory
    if not cfg.use_ins_memory:
        assert out['f_ins_aug'] is out['f_ins']
    if not cfg.use_seg_memory:
        assert out['f_seg_aug'] is out['f_seg']
    has_memory = cfg.use_ins_memory or cfg.use_seg_memory
    assert (model.semantic_memory() is not None) == has_memory
    assert any(name.startswith('memory.') for name, _ in model.named_parameters()) == has_memory


def test_rejects_wrong_channel_count():
    model = build(small_config(**TINY))
    with pytest.raises(ValueError, match='points must be'):
        model(torch.rand(1, 256, 6))


def test_level0_features_switch_sets_sa1_and_last_fp_widths():
    # ASIS ('non_xyz'): SA1 groups 3 local coordinates + the 6 channels after xyz; 'all' adds the 3 block xyz.
    # The last FP layer concatenates the same level-0 features as its skip input.
    for mode, features in (('non_xyz', 6), ('all', 9)):
        model = build(small_config(level0_features=mode, **TINY))
        assert model.backbone.encoder.levels[0].mlp[0].in_channels == 3 + features
        last_fp = model.backbone.decoders[0].levels[-1].mlp[0]
        assert last_fp.in_channels == small_config().fp_mlps[-2][-1] + features
    with pytest.raises(ValueError, match='level0_features'):
        small_config(level0_features='xyz')


def test_embedding_dropout_only_in_training():
    cfg = small_config(embed_dropout=0.5, **TINY)
    model = build(cfg)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.embedding)
    assert not any(isinstance(m, torch.nn.Dropout) for m in build(cfg.replace(embed_dropout=0.0)).embedding)
    points = random_points(2, TINY['num_points'])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(points)['ins_embed'], model(points)['ins_embed'])
    with pytest.raises(ValueError, match='embed_dropout'):
        small_config(embed_dropout=1.0)
