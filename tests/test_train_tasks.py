"""Task heads: losses match the textbook formulas, hierarchical predictions obey parent links."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shards.base.tasks import Level, TaskSpec
from train.loss import TaskLoss

HIER = TaskSpec(
    kind="hier",
    levels=[
        Level(name="top", classes=["a", "b"]),
        Level(name="mid", classes=["a1", "a2", "b1"], parent=[0, 0, 1]),
    ],
)


def test_single_label_smoothing_matches_formula() -> None:
    spec = TaskSpec(kind="single", classes=["x", "y", "z"])
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    logp = logits.log_softmax(-1)[0]
    expected = -(0.9 * logp[0] + 0.1 * logp.mean())
    loss = TaskLoss(spec, label_smoothing=0.1).loss(logits, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_uses_bce_and_sigmoid() -> None:
    spec = TaskSpec(kind="multi", classes=["t1", "t2"])
    head = TaskLoss(spec)
    logits = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert head.loss(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert head.predict(head.probabilities(logits)).tolist() == [[1, 1]]


def test_hier_loss_is_sum_of_level_losses() -> None:
    head = TaskLoss(HIER)
    logits = torch.randn(4, 5)
    y = torch.tensor([[0, 1], [1, 2], [0, 0], [1, 2]])
    expected = F.cross_entropy(logits[:, :2], y[:, 0]) + F.cross_entropy(logits[:, 2:], y[:, 1])
    assert head.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    probs = head.probabilities(logits)
    assert torch.allclose(probs[:, :2].sum(1), torch.ones(4)) and torch.allclose(
        probs[:, 2:].sum(1), torch.ones(4)
    )


def test_hier_prediction_is_consistent_with_parents() -> None:
    head = TaskLoss(HIER)
    # top says "b" (0.55) but the mid level is confident in a1 (child of a): argmax per level
    # would give the inconsistent (b, a1); the best path is (a, a1).
    probs = torch.tensor([[0.45, 0.55, 0.9, 0.05, 0.05]])
    assert head.predict(probs).tolist() == [[0, 0]]
    rand = TaskLoss(HIER).probabilities(torch.randn(64, 5))
    pred = head.predict(rand)
    parent = torch.tensor([0, 0, 1])
    assert torch.equal(parent[pred[:, 1]], pred[:, 0])


def test_wrong_output_width_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected 5 outputs"):
        TaskLoss(HIER).split(torch.zeros(2, 4))
