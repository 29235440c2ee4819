"""Prototype memory: eq. 1 (semantic memory) and eq. 2 (cosine-softmax reader), hand-computed."""
import math

import pytest
import torch

from mpnet_model.model.memory import PrototypeMemory, read_memory, semantic_memory


def test_semantic_memory_eq1_hand_computed():
    # C=2 classes, Mc=3 slots each, D=2: rows 0-2 belong to class 0, rows 3-5 to class 1.
    memory = torch.tensor([[1.0, 0], [2, 0], [3, 3], [0, 1], [0, 2], [6, 0]])
    expected = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    torch.testing.assert_close(semantic_memory(memory, 2), expected)
    torch.testing.assert_close(semantic_memory(memory, 3), torch.tensor([[1.5, 0], [1.5, 2], [3, 1]]))
    with pytest.raises(ValueError, match='not a multiple'):
        semantic_memory(memory, 4)


def test_read_memory_eq2_hand_computed():
    # Query along x; keys at 0, 90 and 180 degrees, of different lengths: cosines 1, 0, -1.
    keys = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    query = torch.tensor([[[5.0, 0.0]]])
    augmented, weights = read_memory(query, keys, scale=1.0)
    z = math.e + 1 + math.exp(-1)
    expected_weights = torch.tensor([[[math.e / z, 1 / z, math.exp(-1) / z]]])
    torch.testing.assert_close(weights, expected_weights)
    w = expected_weights[0, 0]
    expected = w[0] * keys[0] + w[1] * keys[1] + w[2] * keys[2]   # = (2 e^1 - e^-1, 3) / z
    torch.testing.assert_close(augmented, expected.view(1, 1, 2))
    # A larger scale sharpens the softmax: scale 2 -> weights proportional to e^2, 1, e^-2.
    _, sharp = read_memory(query, keys, scale=2.0)
    z2 = math.exp(2) + 1 + math.exp(-2)
    torch.testing.assert_close(sharp[0, 0], torch.tensor([math.exp(2) / z2, 1 / z2, math.exp(-2) / z2]))


def test_read_memory_45_degrees_and_zero_query():
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    _, weights = read_memory(torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]), keys)
    c = math.cos(math.pi / 4)
    torch.testing.assert_close(weights[0, 0], torch.tensor([1 / (1 + math.exp(c)), math.exp(c) / (1 + math.exp(c))]))
    torch.testing.assert_close(weights[0, 1], torch.tensor([0.5, 0.5]))   # zero query -> uniform, no NaN


def test_prototype_memory_module():
    torch.manual_seed(0)
    module = PrototypeMemory(num_classes=4, mem_per_class=5, dim=8, scale=3.0)
    assert module.memory.shape == (20, 8) and module.memory.requires_grad and module.num_slots == 20
    semantic = module.semantic_memory()
    assert semantic.shape == (4, 8)
    torch.testing.assert_close(semantic[1], module.memory[5:10].mean(0))
    query = torch.randn(2, 7, 8)
    augmented, weights = module.read(query, module.memory)
    assert augmented.shape == (2, 7, 8) and weights.shape == (2, 7, 20)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7))
    torch.testing.assert_close(weights, read_memory(query, module.memory, 3.0)[1])


def test_semantic_memory_follows_memory_and_passes_gradient():
    module = PrototypeMemory(num_classes=3, mem_per_class=2, dim=4)
    before = module.semantic_memory().detach().clone()
    with torch.no_grad():
        module.memory[0] += 1.0
    after = module.semantic_memory()
    torch.testing.assert_close(after[0] - before[0], torch.full((4,), 0.5))
    torch.testing.assert_close(after[1:], before[1:])
    after[2].sum().backward()
    expected_grad = torch.zeros(6, 4)
    expected_grad[4:6] = 0.5
    torch.testing.assert_close(module.memory.grad, expected_grad)


def test_prototype_memory_rejects_bad_sizes():
    with pytest.raises(ValueError, match='mem_per_class=0'):
        PrototypeMemory(3, 0, 4)
