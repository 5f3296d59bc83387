"""evaluate_model: model adapters, chunk/track levels, and identical numbers for 1 and 2 ranks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import predictions as testing

from eval.runner import evaluate_model
from shards.base.tasks import Level, TaskSpec

SINGLE = TaskSpec(kind="single", classes=["a", "b", "c", "d"])
MULTI = TaskSpec(kind="multi", classes=["t0", "t1", "t2"])
HIER = TaskSpec(
    kind="hier",
    levels=[
        Level(name="top", classes=["p", "q"]),
        Level(name="leaf", classes=["p1", "p2", "q1"], parent=[0, 0, 1]),
    ],
)


def _data(task: TaskSpec, n_tracks: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-3 chunks per track, probabilities loosely tied to the labels."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_tracks)
    track = np.repeat(np.arange(n_tracks) * 3 + 1, per)  # non-contiguous ids
    n = track.size
    if task.kind == "single":
        yt = rng.integers(0, 4, n_tracks)
        y = np.repeat(yt, per)
        p = rng.random((n, 4)) + 0.8 * np.eye(4)[y]
        return (p / p.sum(1, keepdims=True)).astype(np.float32), y, track
    if task.kind == "multi":
        y = np.repeat((rng.random((n_tracks, 3)) < 0.5).astype(np.int64), per, axis=0)
        return np.clip(0.4 * y + 0.6 * rng.random((n, 3)), 0, 1).astype(np.float32), y, track
    leaf = rng.integers(0, 3, n_tracks)
    y = np.repeat(np.stack([np.array([0, 0, 1])[leaf], leaf], 1), per, axis=0)
    p = np.concatenate([rng.random((n, 2)), rng.random((n, 3))], 1).astype(np.float32)
    return p, y, track


def test_chunk_and_track_levels_match_independent_values() -> None:
    from sklearn.metrics import accuracy_score  # imported here: keeps the spawned ranks' start-up light

    p, y, track = _data(SINGLE)
    res = evaluate_model(testing.identity, testing.batches(p, y, track), SINGLE)
    assert res.metrics["chunk/accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-6)
    ids = np.unique(track)
    mean = np.stack([p[track == t].mean(0) for t in ids])
    yt = np.array([y[track == t][0] for t in ids])
    assert res.metrics["track/accuracy"] == pytest.approx(accuracy_score(yt, mean.argmax(1)), abs=1e-6)
    assert res.metrics["track/count"] == len(ids) and res.metrics["chunk/count"] == len(track)
    np.testing.assert_array_equal(res.track.track, ids)
    np.testing.assert_allclose(res.track.probs, mean, atol=1e-6)
    assert res.primary == res.metrics["track/accuracy"]
    mx = evaluate_model(testing.identity, testing.batches(p, y, track), SINGLE, aggregate="max")
    maxp = np.stack([p[track == t].max(0) for t in ids])
    assert mx.metrics["track/accuracy"] == pytest.approx(accuracy_score(yt, maxp.argmax(1)), abs=1e-6)


def test_multi_label_float_targets_and_auc() -> None:
    from sklearn.metrics import roc_auc_score

    p, y, track = _data(MULTI)
    rows = testing.batches(p, y.astype(np.float32), track)  # the loader yields float multi-hot
    res = evaluate_model(testing.identity, rows, MULTI)
    want = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(3)])
    assert res.metrics["chunk/roc_auc"] == pytest.approx(want, abs=1e-6)
    assert res.track.target.dtype == np.int64


class _Lin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(4) * 5)
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, T) -> logits
        return self.lin(x.flatten(1))


def test_module_adapter_uses_taskhead_and_restores_training_mode() -> None:
    p, y, track = _data(SINGLE)
    rows = [dict(b, x=b["x"].view(-1, 1, 2, 2)) for b in testing.batches(p, y, track)]
    model = _Lin().train()
    res = evaluate_model(model, rows, SINGLE)
    assert model.training  # put back as it was
    ref = evaluate_model(testing.identity, testing.batches(p, y, track), SINGLE)
    assert res.metrics["chunk/accuracy"] == ref.metrics["chunk/accuracy"]  # softmax(5x) keeps the argmax
    np.testing.assert_allclose(res.chunk.probs.sum(1), 1.0, atol=1e-5)
    seen = []
    evaluate_model(model, rows, SINGLE, probabilities=lambda z: seen.append(z.shape) or z.softmax(-1))
    assert seen and seen[0] == (4, 4)


def test_empty_loader_and_bad_model_are_errors() -> None:
    with pytest.raises(ValueError, match="split test: the loader yielded no chunks"):
        evaluate_model(testing.identity, [], SINGLE, split="test")
    with pytest.raises(TypeError, match="cannot evaluate"):
        evaluate_model(42, [], SINGLE)
    p, y, track = _data(SINGLE)
    with pytest.raises(ValueError, match="expected"):
        evaluate_model(lambda x: x[:, :3], testing.batches(p, y, track), SINGLE)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for task in (SINGLE, MULTI, HIER):
            rows = testing.batches(*_data(task))
            res = evaluate_model(testing.identity, testing.rank_share(rows, rank, world), task)
            results[task.kind] = (res.metrics, res.track.probs, res.track.track)
        # every track on rank 0: rank 1 contributes nothing but still joins the gather
        p, y, track = _data(SINGLE)
        rows = testing.batches(p, y, track * 2)
        results["lopsided"] = (
            evaluate_model(testing.identity, testing.rank_share(rows, rank, world), SINGLE).metrics,
        )
        # chunks dealt out by batch: some tracks land on both ranks (a long track's segments
        # may): gathered before aggregating, the metrics are those of one rank holding all
        spread = evaluate_model(testing.identity, rows[rank::world], SINGLE)
        results["spread"] = (spread.metrics, spread.track.probs)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-6), k


def test_one_and_two_ranks_give_identical_metrics(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for task in (SINGLE, MULTI, HIER):
        one = evaluate_model(testing.identity, testing.batches(*_data(task)), task)
        for r in ranks:
            metrics, probs, ids = r[task.kind]
            _same(metrics, one.metrics)
            np.testing.assert_allclose(probs, one.track.probs, atol=1e-6)
            np.testing.assert_array_equal(ids, one.track.track)
    p, y, track = _data(SINGLE)
    one = evaluate_model(testing.identity, testing.batches(p, y, track * 2), SINGLE)
    for r in ranks:
        _same(r["lopsided"][0], one.metrics)
        _same(r["spread"][0], one.metrics)
        np.testing.assert_allclose(r["spread"][1], one.track.probs, atol=1e-6)
