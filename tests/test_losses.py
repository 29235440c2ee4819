"""Hand-computed checks of every MPNet loss (paper eqs. 3-6) and of MPNetLoss's term switching."""
import math

import pytest
import torch
import torch.nn.functional as F

from mpnet_model.config import small_config
from mpnet_model.model.losses import (
    LossInputError,
    MPNetLoss,
    cross_entropy_loss,
    discriminative_loss,
    discriminative_loss_terms,
    focal_loss,
    rins_loss,
    rseg_hinge,
    rseg_loss,
    semantic_memory,
)


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ---------------------------------------------------------------- discriminative loss (eq. 5)
def test_dis_zero_when_embeddings_on_separated_centres():
    # Three instances, every embedding exactly on its centre, centres 4 > 2 * delta_d = 3 apart.
    centres = _t([[0, 0, 0, 0, 0], [4, 0, 0, 0, 0], [0, 4, 0, 0, 0]])
    labels = torch.tensor([[0, 0, 1, 1, 1, 2]])
    embeddings = centres[labels]                                       # (1, 6, 5)
    loss = discriminative_loss(embeddings, labels, 0.5, 1.5, reg_weight=0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_dis_known_pull_push_reg_values():
    # Block 0: A = {(0,0), (2,0)} centre (1,0), each point 1 away -> pull (1-0.5)^2 = 0.25;
    #          B = {(1,1), (1,1)} centre (1,1) -> pull 0; block pull = (0.25 + 0) / 2 = 0.125.
    #          ||mu_A - mu_B|| = 1 -> push (3-1)^2 = 4 for both ordered pairs / (K(K-1)=2) = 4.
    #          reg = (1 + sqrt 2) / 2. An ignored point far away must change nothing.
    # Block 1: one instance {(0,0), (0,3)}, centre (0,1.5), pull (1.5-0.5)^2 = 1, no pairs, reg = 1.5.
    # Block 2: only ignored points -> left out of the batch average.
    embeddings = _t([
        [[0, 0], [2, 0], [1, 1], [1, 1], [100, -50]],
        [[0, 0], [0, 3], [7, 7], [7, 7], [7, 7]],
        [[3, 3], [1, 2], [0, 9], [5, 5], [2, 2]],
    ])
    labels = torch.tensor([[4, 4, 9, 9, -1], [2, 2, -1, -1, -1], [-1, -1, -1, -1, -1]])
    parts = discriminative_loss_terms(embeddings, labels, delta_v=0.5, delta_d=1.5)
    assert parts['pull'].item() == pytest.approx((0.125 + 1.0) / 2, abs=1e-5)
    assert parts['push'].item() == pytest.approx((4.0 + 0.0) / 2, abs=1e-5)
    assert parts['reg'].item() == pytest.approx(((1 + math.sqrt(2)) / 2 + 1.5) / 2, abs=1e-5)
    total = discriminative_loss(embeddings, labels, 0.5, 1.5, reg_weight=0.001)
    expected = 0.5625 + 2.0 + 0.001 * ((1 + math.sqrt(2)) / 2 + 1.5) / 2
    assert total.item() == pytest.approx(expected, abs=1e-5)


def test_dis_l1_and_l2_hand_example():
    # One block, two instances in 2-D, delta_v = 0.5, delta_d = 1.5.
    # A = {(0,0), (2,2)}: centre (1,1), each point (1,1) from it: L2 sqrt 2 = 1.4142, L1 2.
    # B = {(4,1)}: centre (4,1), no spread. mu_A - mu_B = (-3, 0): L2 3, L1 3 -> push 0 for both (2 delta_d = 3).
    # pull: L2 ((sqrt2 - 0.5)^2 + 0) / 2 = 0.41789; L1 ((2 - 0.5)^2 + 0) / 2 = 1.125.
    # reg: L2 (sqrt 2 + sqrt 17) / 2; L1 (2 + 5) / 2 = 3.5.
    # Second block, centres (0,0) and (1,1) (one point each): gap L2 sqrt 2 -> (3 - sqrt2)^2, L1 2 -> (3-2)^2 = 1.
    embeddings = _t([[[0, 0], [2, 2], [4, 1]], [[0, 0], [1, 1], [1, 1]]])
    labels = torch.tensor([[0, 0, 1], [0, 1, -1]])
    l2 = discriminative_loss_terms(embeddings, labels, 0.5, 1.5, norm='l2')
    l1 = discriminative_loss_terms(embeddings, labels, 0.5, 1.5, norm='l1')
    root2 = math.sqrt(2)
    assert l2['pull'].item() == pytest.approx(((root2 - 0.5) ** 2 / 2 + 0) / 2, abs=1e-5)
    assert l1['pull'].item() == pytest.approx((1.5 ** 2 / 2 + 0) / 2, abs=1e-5)
    assert l2['push'].item() == pytest.approx((0 + (3 - root2) ** 2) / 2, abs=1e-5)
    assert l1['push'].item() == pytest.approx((0 + 1.0) / 2, abs=1e-5)
    assert l2['reg'].item() == pytest.approx(((root2 + math.sqrt(17)) / 2 + root2 / 2) / 2, abs=1e-5)
    assert l1['reg'].item() == pytest.approx((3.5 + 1.0) / 2, abs=1e-5)
    total = discriminative_loss(embeddings, labels, 0.5, 1.5, reg_weight=0.001, norm='l1')
    assert total.item() == pytest.approx(0.5625 + 0.5 + 0.001 * 2.25, abs=1e-5)
    with pytest.raises(LossInputError, match='dis_norm'):
        discriminative_loss_terms(embeddings, labels, norm='l3')


def test_dis_l1_gradients_finite_and_mpnet_loss_uses_config_norm():
    torch.manual_seed(0)
    embeddings = torch.zeros(2, 6, 5, requires_grad=True)               # coincident: |x| at 0 everywhere
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]])
    discriminative_loss(embeddings, labels, norm='l1').backward()
    assert torch.isfinite(embeddings.grad).all()
    cfg = small_config(use_ins_memory=False, use_seg_memory=False, use_regularization=False)
    outputs = {'sem_logits': torch.randn(2, 6, cfg.num_classes), 'ins_embed': torch.randn(2, 6, 5)}
    points = torch.randn(2, 6, 9)
    sem = torch.zeros(2, 6, dtype=torch.long)
    for norm in ('l1', 'l2'):
        _, terms = MPNetLoss(cfg.replace(dis_norm=norm))(outputs, points, sem, labels)
        expected = discriminative_loss(outputs['ins_embed'], labels, cfg.delta_v, cfg.delta_d, cfg.dis_reg_weight,
                                       norm)
        assert terms['dis'].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dis_batch_equals_mean_of_single_blocks():
    torch.manual_seed(0)
    embeddings = torch.randn(4, 64, 5)
    labels = torch.randint(-1, 6, (4, 64))
    batched = discriminative_loss(embeddings, labels)
    singles = torch.stack([discriminative_loss(embeddings[b:b + 1], labels[b:b + 1]) for b in range(4)])
    assert batched.item() == pytest.approx(singles.mean().item(), rel=1e-5)


def test_instance_terms_invariant_to_id_relabelling():
    torch.manual_seed(1)
    embeddings = torch.randn(2, 50, 5)
    centroids = torch.randn(2, 50, 3)
    xyz = torch.rand(2, 50, 3)
    labels = torch.randint(-1, 4, (2, 50))
    new_ids = torch.tensor([37, 2, 0, 11])                              # 0->37, 1->2, 2->0, 3->11
    relabelled = torch.where(labels >= 0, new_ids[labels.clamp_min(0)], labels)
    assert discriminative_loss(embeddings, relabelled).item() == pytest.approx(
        discriminative_loss(embeddings, labels).item(), rel=1e-6)
    assert rins_loss(centroids, xyz, relabelled).item() == pytest.approx(
        rins_loss(centroids, xyz, labels).item(), rel=1e-6)


def test_dis_gradients_finite_with_coincident_embeddings():
    embeddings = torch.zeros(1, 4, 5, requires_grad=True)              # all centres coincide: norm at 0
    labels = torch.tensor([[0, 0, 1, 1]])
    loss = discriminative_loss(embeddings, labels)
    loss.backward()
    assert loss.item() == pytest.approx(9.0, abs=1e-4)                # (2*1.5 - 0)^2 push, pull 0
    assert torch.isfinite(embeddings.grad).all()


# ---------------------------------------------------------------- R_seg (eq. 4)
def test_rseg_two_classes_both_forms():
    # C = [(0,0), (3,0)]; f = (1,0) label 0: d = (1, 2) -> max(0, 1 - 2 + 5) = 4 in both forms.
    # f = (2,0) label 1: d = (2, 1) -> max(0, 1 - 2 + 5) = 4. Ignored point contributes nothing.
    class_memory = _t([[0, 0], [3, 0]])
    features = _t([[[1, 0], [2, 0], [50, 50]]])
    labels = torch.tensor([[0, 1, -1]])
    for form in ('literal', 'per_negative'):
        assert rseg_loss(features, class_memory, labels, 5.0, form).item() == pytest.approx(4.0, abs=1e-5)
    # Margin 0.5: hinge max(0, 1 - 2 + 0.5) = 0 -> inactive.
    assert rseg_loss(features, class_memory, labels, 0.5, 'literal').item() == pytest.approx(0.0, abs=1e-6)


def test_rseg_three_classes_forms_differ():
    # C = [(0,0), (3,0), (0,4)].
    # f=(0,0) y=0: d=(0,3,4)      literal max(0, 0-7+5)=0;        per-negative mean(2, 1) = 1.5
    # f=(3,0) y=1: d=(3,0,5)      literal max(0, 0-8+5)=0;        per-negative mean(2, 0) = 1
    # f=(0,1) y=2: d=(1,√10,3)    literal max(0, 3-1-√10+5);      per-negative mean(7, 8-√10)
    class_memory = _t([[0, 0], [3, 0], [0, 4]])
    features = _t([[[0, 0], [3, 0], [0, 1], [9, 9]]])
    labels = torch.tensor([[0, 1, 2, -1]])
    root10 = math.sqrt(10)
    literal = rseg_loss(features, class_memory, labels, 5.0, 'literal')
    assert literal.item() == pytest.approx((0 + 0 + (7 - root10)) / 3, abs=1e-4)
    per_negative = rseg_loss(features, class_memory, labels, 5.0, 'per_negative')
    assert per_negative.item() == pytest.approx((1.5 + 1.0 + (7 + 8 - root10) / 2) / 3, abs=1e-4)
    assert rseg_hinge(features, class_memory, labels, 5.0, 'per_negative').shape == (3, 2)
    assert rseg_hinge(features, class_memory, labels, 5.0, 'literal').shape == (3,)


def test_rseg_rejects_unknown_form():
    with pytest.raises(LossInputError, match='form'):
        rseg_loss(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(1, 2, dtype=torch.long), 5.0, 'sum')


# ---------------------------------------------------------------- R_ins (eq. 3)
def test_rins_hand_example():
    # Instance 7: xyz (0,0,0), (2,0,0) -> GT (1,0,0); predictions (1,0,0), (1,1,0) -> errors 0, 1 -> mean 0.5.
    # Instance 3: xyz (0,0,1) -> GT (0,0,1); prediction (0,0,3) -> error 4. R_ins = (0.5 + 4) / 2 = 2.25.
    xyz = _t([[[0, 0, 0], [2, 0, 0], [0, 0, 1], [5, 5, 5]]])
    predicted = _t([[[1, 0, 0], [1, 1, 0], [0, 0, 3], [-40, 0, 0]]]).requires_grad_(True)
    labels = torch.tensor([[7, 7, 3, -1]])
    loss = rins_loss(predicted, xyz, labels)
    assert loss.item() == pytest.approx(2.25, abs=1e-6)
    loss.backward()
    assert predicted.grad[0, 3].abs().sum().item() == 0.0              # ignored point gets no gradient


# ---------------------------------------------------------------- CE / focal
def test_focal_gamma_zero_equals_cross_entropy_and_hand_value():
    torch.manual_seed(2)
    logits = torch.randn(2, 30, 4)
    labels = torch.randint(-1, 4, (2, 30))
    assert focal_loss(logits, labels, gamma=0.0).item() == pytest.approx(
        cross_entropy_loss(logits, labels).item(), rel=1e-6)
    # Two equal logits: p_t = 0.5 -> FL = -(0.5)^2 log 0.5.
    assert focal_loss(torch.zeros(1, 1, 2), torch.tensor([[0]]), gamma=2.0).item() == pytest.approx(
        0.25 * math.log(2), rel=1e-6)


def test_ignored_labels_are_ignored():
    torch.manual_seed(3)
    logits = torch.randn(1, 10, 3)
    labels = torch.tensor([[0, 1, 2, -1, -1, 0, 1, -1, 2, 2]])
    keep = labels[0] >= 0
    reference = F.cross_entropy(logits[0, keep], labels[0, keep])
    assert cross_entropy_loss(logits, labels).item() == pytest.approx(reference.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, ~keep] = 1000.0
    assert cross_entropy_loss(changed, labels).item() == pytest.approx(reference.item(), rel=1e-6)
    # Nothing labelled at all: 0, and backward still works.
    empty = torch.full((1, 10), -1)
    logits.requires_grad_(True)
    for loss in (cross_entropy_loss(logits, empty), focal_loss(logits, empty),
                 discriminative_loss(logits, empty), rins_loss(logits, logits.detach(), empty)):
        assert loss.item() == 0.0
        loss.backward()


def test_semantic_memory_eq1():
    memory = torch.arange(12, dtype=torch.float32).reshape(6, 2)        # 3 classes x 2 slots
    assert torch.equal(semantic_memory(memory, 3), _t([[1, 2], [5, 6], [9, 10]]))


# ---------------------------------------------------------------- total (eq. 6)
def _fake_outputs(cfg, batch=2, points=40, seed=4):
    """Model-shaped output tensors (leaves with grad) for testing MPNetLoss without building the network."""
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_(True)

    return {'sem_logits': leaf(batch, points, cfg.num_classes), 'ins_embed': leaf(batch, points, cfg.embed_dim),
            'centroids': leaf(batch, points, 3), 'f_seg_aug': leaf(batch, points, cfg.feature_dim)}


def _labels(cfg, batch=2, points=40):
    generator = torch.Generator().manual_seed(5)
    sem = torch.randint(-1, cfg.num_classes, (batch, points), generator=generator)
    ins = torch.randint(-1, 5, (batch, points), generator=generator)
    return torch.rand(batch, points, 9, generator=generator), sem, ins


def test_total_is_sum_of_terms_with_lambda_and_grads_finite():
    cfg = small_config(lambda_ins=0.5)
    outputs = _fake_outputs(cfg)
    points, sem, ins = _labels(cfg)
    memory = torch.randn(cfg.num_classes, cfg.feature_dim, requires_grad=True)
    total, terms = MPNetLoss(cfg)(outputs, points, sem, ins, memory)
    assert set(terms) == {'ce', 'dis', 'rseg', 'rins', 'total'}
    expected = terms['ce'] + terms['dis'] + terms['rseg'] + 0.5 * terms['rins']
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(not value.requires_grad for value in terms.values())
    total.backward()
    for tensor in [*outputs.values(), memory]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize('overrides, expected_keys', [
    (dict(use_focal_loss=True), {'focal', 'dis', 'rseg', 'rins', 'total'}),
    (dict(use_regularization=False), {'ce', 'dis', 'total'}),
    (dict(use_seg_memory=False), {'ce', 'dis', 'rins', 'total'}),
    (dict(use_ins_memory=False), {'ce', 'dis', 'rseg', 'total'}),
])
def test_terms_follow_ablation_switches(overrides, expected_keys):
    cfg = small_config(**overrides)
    points, sem, ins = _labels(cfg)
    memory = torch.randn(cfg.num_classes, cfg.feature_dim)
    _, terms = MPNetLoss(cfg)(_fake_outputs(cfg), points, sem, ins, memory)
    assert set(terms) == expected_keys


def test_bad_inputs_raise_clear_errors():
    cfg = small_config()
    outputs = _fake_outputs(cfg)
    points, sem, ins = _labels(cfg)
    loss = MPNetLoss(cfg)
    with pytest.raises(LossInputError, match='semantic_memory is None'):
        loss(outputs, points, sem, ins, None)
    with pytest.raises(LossInputError, match='out of range'):
        loss(outputs, points, torch.full_like(sem, cfg.num_classes), ins, torch.zeros(cfg.num_classes, 64))
    with pytest.raises(LossInputError, match='ins_labels: expected shape'):
        loss(outputs, points, sem, ins[:, :5], torch.zeros(cfg.num_classes, 64))
    with pytest.raises(LossInputError, match="lack 'centroids'"):
        loss({k: v for k, v in outputs.items() if k != 'centroids'}, points, sem, ins,
             torch.zeros(cfg.num_classes, 64))
