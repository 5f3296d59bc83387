"""Threshold search: finds the known optimum, and is never fed the reported split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import predictions as testing
from sklearn.metrics import f1_score

from eval import cli, runner
from eval import thresholds as th
from eval.config import EvalConfig
from shards.base.tasks import TaskSpec


def test_hand_worked_optimum() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 0, 1, 0, 0])
    # F1 keeping the top 1..6: 2/4, 4/5, 4/6, 6/7, 6/8, 6/9 -> best: top 4, cut between 0.6 and 0.5
    thr, f1 = th.best_f1_threshold(scores, labels)
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.55)


def test_ties_and_no_positives() -> None:
    thr, f1 = th.best_f1_threshold(np.array([0.7, 0.7, 0.2]), np.array([1, 0, 0]))
    assert f1 == pytest.approx(2 / 3) and 0.2 < thr <= 0.7  # a tie group is cut as a whole
    thr, f1 = th.best_f1_threshold(np.array([0.3, 0.1]), np.array([0, 0]))
    assert np.isnan(thr) and f1 == 0.0


def test_search_beats_every_grid_threshold() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((60, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(int)
    p = np.clip(0.3 * y * [1, 2, 0.5, 0] + rng.random((60, 4)) * [0.5, 1, 1, 1], 0, 1)
    t = th.search_thresholds(p, y, split="validation", classes=list("abcd"))
    grid = np.unique(np.r_[p.ravel(), 0.0, 1.0])
    best_micro = max(f1_score(y.ravel(), p.ravel() >= g, zero_division=0) for g in grid)
    assert t.tuned_micro_f1_global == pytest.approx(best_micro)
    assert f1_score(y.ravel(), p.ravel() >= t.global_threshold) == pytest.approx(best_micro)
    for j in range(3):
        best = max(f1_score(y[:, j], p[:, j] >= g, zero_division=0) for g in grid)
        assert f1_score(y[:, j], p[:, j] >= t.per_class[j]) == pytest.approx(best)
    assert t.fallback == ("d",) and t.per_class[3] == t.global_threshold  # no positives -> global
    assert th.Thresholds.from_dict(t.to_dict()) == t


def _split_data(seed: int, n_tracks: int, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_track = (rng.random((n_tracks, k)) < 0.4).astype(np.int64)
    track = np.repeat(np.arange(n_tracks), 2)
    y = y_track[track]
    probs = np.clip(0.3 * y + 0.7 * rng.random((2 * n_tracks, k)), 0, 1).astype(np.float32)
    return probs, y, track


def test_cli_flow_tunes_on_validation_only(monkeypatch: pytest.MonkeyPatch) -> None:
    task = TaskSpec(kind="multi", classes=["x", "y", "z"])
    data = {"validation": _split_data(0, 12), "test": _split_data(1, 9)}
    seen: list[np.ndarray] = []
    real = th.search_thresholds

    def spy(probs: np.ndarray, target: np.ndarray, **kw: object) -> th.Thresholds:
        seen.append(np.asarray(probs).copy())
        assert kw["split"] == "validation"
        return real(probs, target, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(th, "search_thresholds", spy)
    opened: list[str] = []

    def make_loader(split: str) -> list[dict[str, torch.Tensor]]:
        opened.append(split)
        return testing.batches(*data[split])

    res = cli.evaluate_checkpoint(testing.identity, make_loader, task, EvalConfig(split="test"))
    assert opened == ["validation", "test"] and len(seen) == 1
    val_probs, _, val_track = data["validation"]
    val_track_probs = np.stack([val_probs[val_track == t].mean(0) for t in range(12)])
    np.testing.assert_allclose(seen[0], val_track_probs, atol=1e-6)  # validation tracks, not test ones
    assert seen[0].shape[0] == 12 and res.track.probs.shape[0] == 9
    # the thresholds found on validation are applied unchanged to test
    want = real(val_track_probs, data["validation"][1][::2], split="validation", classes=task.classes)
    assert res.thresholds == want
    pred = res.track.probs >= np.asarray(want.per_class)
    assert res.metrics["track/micro_f1_thr_class"] == pytest.approx(
        f1_score(res.track.target, pred, average="micro"), abs=1e-6
    )


def test_thresholds_cannot_be_applied_to_their_own_split() -> None:
    task = TaskSpec(kind="multi", classes=["x", "y", "z"])
    probs, y, track = _split_data(0, 6)
    t = th.search_thresholds(probs, y, split="validation", classes=task.classes)
    rows = testing.batches(probs, y, track)
    with pytest.raises(ValueError, match="cannot be used to report on 'validation'"):
        runner.evaluate_model(testing.identity, rows, task, thresholds=t, split="validation")
    with pytest.raises(ValueError, match="needs split="):
        runner.evaluate_model(testing.identity, rows, task, thresholds=t)
    same = EvalConfig(split="validation", threshold_split="validation")
    with pytest.raises(
        ValueError, match="eval.threshold_split: thresholds may not be tuned on the reported split"
    ):
        cli.evaluate_checkpoint(testing.identity, lambda s: rows, task, same)
    single = TaskSpec(kind="single", classes=["x", "y", "z"])
    same.check_threshold_split(single.kind)  # no thresholds for single-label: nothing to refuse
    other = TaskSpec(kind="multi", classes=["x", "y", "w"])
    with pytest.raises(ValueError, match="tuned for tags"):
        runner.evaluate_model(testing.identity, rows, other, thresholds=t, split="test")
