"""Metrics against sklearn and hand-worked values on fixed inputs, for all three task kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from eval.metrics import apply_thresholds, compute_metrics
from shards.base.tasks import Level, TaskSpec


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_single_label_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    n, c = 40, 6
    y = rng.integers(0, c - 1, n)  # class 5 never occurs in the labels
    probs = _softmax(rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y] * (rng.random(n) < 0.6)[:, None])
    task = TaskSpec(kind="single", classes=[f"c{i}" for i in range(c)])
    m = compute_metrics(task, torch.tensor(probs), torch.tensor(y))
    pred = probs.argmax(1)
    s = m.scalars
    assert s["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    for k in (3, 5):
        want = sk.top_k_accuracy_score(y, probs, k=k, labels=range(c))
        assert s[f"top{k}_accuracy"] == pytest.approx(want, abs=1e-6)
    assert s["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"), abs=1e-6)
    assert s["macro_precision"] == pytest.approx(
        sk.precision_score(y, pred, average="macro", zero_division=0), abs=1e-6
    )
    assert s["macro_recall"] == pytest.approx(
        sk.recall_score(y, pred, average="macro", zero_division=0), abs=1e-6
    )
    p, r, f, support = sk.precision_recall_fscore_support(y, pred, labels=range(c), zero_division=0)
    rows = m.tables["per_class"]
    assert [row["class"] for row in rows] == task.classes
    np.testing.assert_allclose([row["precision"] for row in rows], p, atol=1e-6)
    np.testing.assert_allclose([row["recall"] for row in rows], r, atol=1e-6)
    np.testing.assert_allclose([row["f1"] for row in rows], f, atol=1e-6)
    assert [row["support"] for row in rows] == support.tolist()
    labels, cm = m.confusion["confusion"]
    assert labels == task.classes
    np.testing.assert_array_equal(cm, sk.confusion_matrix(y, pred, labels=range(c)))


def test_single_label_hand_worked_and_top_k_skipped_for_few_classes() -> None:
    task = TaskSpec(kind="single", classes=["a", "b", "c"])
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = torch.tensor([0, 2, 2, 1])  # predictions 0, 1, 2, 0: two right
    s = compute_metrics(task, probs, y).scalars
    assert s["accuracy"] == pytest.approx(0.5)
    # F1: a = 2*1/(2*1+1+0) = 2/3, b = 0, c = 2*1/(2+0+1) = 2/3 -> macro 4/9
    assert s["macro_f1"] == pytest.approx(4 / 9, abs=1e-6)
    assert "top3_accuracy" not in s and "top5_accuracy" not in s  # k >= classes says nothing


def test_multi_label_matches_sklearn_with_degenerate_tags() -> None:
    rng = np.random.default_rng(1)
    n, k = 30, 5
    y = (rng.random((n, k)) < 0.4).astype(np.int64)
    y[:, 3] = 0  # a tag with no positives: ROC-AUC and AP undefined
    y[:, 4] = 1  # a tag with no negatives: ROC-AUC undefined, AP defined
    probs = np.clip(0.35 * y + 0.65 * rng.random((n, k)), 0, 1)
    task = TaskSpec(kind="multi", classes=[f"t{i}" for i in range(k)])
    m = compute_metrics(task, torch.tensor(probs), torch.tensor(y))
    s = m.scalars
    pred = (probs >= 0.5).astype(int)
    assert s["micro_f1"] == pytest.approx(sk.f1_score(y, pred, average="micro"), abs=1e-6)
    assert s["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    assert s["micro_precision"] == pytest.approx(sk.precision_score(y, pred, average="micro"), abs=1e-6)
    roc = [sk.roc_auc_score(y[:, j], probs[:, j]) for j in (0, 1, 2)]
    ap = [sk.average_precision_score(y[:, j], probs[:, j]) for j in (0, 1, 2, 4)]
    assert s["roc_auc"] == pytest.approx(np.mean(roc), abs=1e-6)
    assert s["pr_auc"] == pytest.approx(np.mean(ap), abs=1e-6)
    assert s["auc_excluded_tags"] == 2.0
    rows = {r["tag"]: r for r in m.tables["per_tag"]}
    assert rows["t0"]["roc_auc"] == pytest.approx(roc[0], abs=1e-6)
    assert math.isnan(rows["t3"]["roc_auc"]) and math.isnan(rows["t3"]["pr_auc"])
    assert math.isnan(rows["t4"]["roc_auc"]) and rows["t4"]["pr_auc"] == pytest.approx(ap[3], abs=1e-6)
    assert rows["t1"]["positives"] == int(y[:, 1].sum())
    assert rows["t2"]["f1"] == pytest.approx(sk.f1_score(y[:, 2], pred[:, 2]), abs=1e-6)


def test_threshold_rule_is_greater_or_equal() -> None:
    p = torch.tensor([[0.5, 0.49, 0.7]])
    assert apply_thresholds(p, 0.5).tolist() == [[1, 0, 1]]
    assert apply_thresholds(p, [0.6, 0.4, 0.7]).tolist() == [[0, 1, 1]]


def _hier_task() -> TaskSpec:
    return TaskSpec(
        kind="hier",
        levels=[
            Level(name="top", classes=["classic", "other"]),
            Level(name="genre", classes=["baroque", "romantic", "pop"], parent=[0, 0, 1]),
        ],
    )


def test_hierarchical_hand_worked() -> None:
    task = _hier_task()
    probs = torch.tensor(
        [
            [0.9, 0.1, 0.6, 0.3, 0.1],  # top 0 ok, genre 0 ok        -> all correct
            [0.8, 0.2, 0.1, 0.2, 0.7],  # top 0 ok, genre 2 (y 1) bad  -> inconsistent (pop under classic)
            [0.3, 0.7, 0.1, 0.1, 0.8],  # top 1 ok, genre 2 ok        -> all correct
            [0.6, 0.4, 0.2, 0.1, 0.7],  # top 0 (y 1) bad, genre 2 ok -> inconsistent
        ]
    )
    y = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
    m = compute_metrics(task, probs, y)
    s = m.scalars
    assert s["level/top/accuracy"] == pytest.approx(0.75)
    assert s["level/genre/accuracy"] == pytest.approx(0.75)
    assert s["level_mean_accuracy"] == pytest.approx(0.75)  # the ccmusic "overall"
    assert s["all_levels_accuracy"] == pytest.approx(0.5)
    assert s["hierarchy_consistent"] == pytest.approx(0.5)
    # best root-to-leaf path (prob products): rows -> baroque .54, romantic .16, pop .56, pop .28
    assert s["level/top/path_accuracy"] == pytest.approx(1.0)
    assert s["level/genre/path_accuracy"] == pytest.approx(1.0)
    assert s["path_level_mean_accuracy"] == pytest.approx(1.0)
    assert s["path_all_levels_accuracy"] == pytest.approx(1.0)
    assert [r["level"] for r in m.tables["per_level"]] == ["top", "genre"]
    _, cm = m.confusion["confusion_genre"]
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 0, 2]])


def test_shape_errors_are_clear() -> None:
    task = _hier_task()
    with pytest.raises(ValueError, match="needs 5"):
        compute_metrics(task, torch.rand(3, 4), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics(task, torch.rand(0, 5), torch.zeros(0, 2, dtype=torch.long))
