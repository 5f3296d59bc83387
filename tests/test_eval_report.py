"""Report files: metrics.json, report.md tables (side by side for several models), CSV and PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import predictions as testing

from eval.report import md_table, write_report
from eval.runner import EvalResult, evaluate_model
from eval.thresholds import search_thresholds
from shards.base.tasks import Level, TaskSpec

PNG = b"\x89PNG\r\n\x1a\n"


def _single(seed: int) -> tuple[TaskSpec, EvalResult]:
    task = TaskSpec(kind="single", classes=["rock", "jazz", "folk"])
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 12)
    p = rng.random((12, 3)) + np.eye(3)[y] * (0.5 + seed)
    return task, evaluate_model(
        testing.identity, testing.batches(p / p.sum(1, keepdims=True), y, np.arange(12)), task
    )


def _row(md: str, first_cell: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_single_label_report_side_by_side(tmp_path: Path) -> None:
    task, a = _single(0)
    _, b = _single(1)
    files = write_report(
        tmp_path, {"cnn": a, "resnet50:best.pt": b, "resnet50_best pt": b}, task, split="test"
    )
    assert all(f.is_file() for f in files)
    md = (tmp_path / "report.md").read_text()
    header = _row(md, "model")
    for name, res in (("cnn", a), ("resnet50:best.pt", b)):
        row = dict(zip(header, _row(md, name)))
        assert row["track/accuracy"] == f"{res.metrics['track/accuracy']:.4f}"
        assert row["track/macro_f1"] == f"{res.metrics['track/macro_f1']:.4f}"
    assert "top5_accuracy" not in md  # 3 classes: no top-5 column
    assert "### per class" in md and _row(md, "jazz")[1] == str(int((a.track.target == 1).sum()))
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        data["split"] == "test"
        and data["models"]["cnn"]["metrics"]["track/accuracy"] == a.metrics["track/accuracy"]
    )
    with open(tmp_path / "cnn_confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", "rock", "jazz", "folk"]
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(cm, a.details["track"].confusion["confusion"][1])
    assert cm.sum() == 12
    for stem in ("cnn_confusion", "resnet50_best_pt_confusion", "resnet50_best_pt_2_confusion"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == PNG
        assert f"]({stem}.png)" in md
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_multi_label_report_has_thresholds_tags_and_pr_curves(tmp_path: Path) -> None:
    task = TaskSpec(kind="multi", classes=["guitar", "piano", "vocal"])
    rng = np.random.default_rng(2)
    y = (rng.random((20, 3)) < 0.5).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random((20, 3)), 0, 1)
    t = search_thresholds(p[:10], y[:10], split="validation", classes=task.classes)
    res = evaluate_model(
        testing.identity, testing.batches(p[10:], y[10:], np.arange(10)), task, thresholds=t, split="test"
    )
    write_report(tmp_path, {"ast": res}, task, split="test")
    md = (tmp_path / "report.md").read_text()
    assert "Thresholds tuned on `validation`" in md
    row = dict(zip(_row(md, "model"), _row(md, "ast")))
    assert row["track/micro_f1_thr_class"] == f"{res.metrics['track/micro_f1_thr_class']:.4f}"
    assert row["track/roc_auc"] == f"{res.metrics['track/roc_auc']:.4f}"
    tag = _row(md, "piano")
    assert tag[1] == str(int(y[10:, 1].sum())) and tag[2] == f"{t.per_class[1]:.4f}"
    assert (tmp_path / "ast_pr_curves.png").read_bytes()[:8] == PNG
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["models"]["ast"]["thresholds"]["per_class"] == pytest.approx(list(t.per_class))


def test_hierarchical_report_per_level(tmp_path: Path) -> None:
    task = TaskSpec(
        kind="hier",
        levels=[
            Level(name="top", classes=["c", "n"]),
            Level(name="genre", classes=["c1", "n1", "n2"], parent=[0, 1, 1]),
        ],
    )
    y = np.array([[0, 0], [1, 1], [1, 2], [1, 1]])
    p = np.array(
        [
            [0.9, 0.1, 0.8, 0.1, 0.1],
            [0.2, 0.8, 0.1, 0.7, 0.2],
            [0.3, 0.7, 0.1, 0.6, 0.3],
            [0.6, 0.4, 0.1, 0.5, 0.4],
        ]
    )
    res = evaluate_model(testing.identity, testing.batches(p, y, np.arange(4)), task)
    write_report(tmp_path, {"customcnn": res}, task, split="test")
    md = (tmp_path / "report.md").read_text()
    row = dict(zip(_row(md, "model"), _row(md, "customcnn")))
    assert row["track/level/top/accuracy"] == "0.7500" and row["track/level/genre/accuracy"] == "0.7500"
    assert row["track/level_mean_accuracy"] == "0.7500" and row["track/all_levels_accuracy"] == "0.5000"
    assert _row(md, "genre")[:3] == ["genre", "3", "0.7500"]
    assert (tmp_path / "customcnn_confusion_genre.png").is_file() and (
        tmp_path / "customcnn_confusion_top.csv"
    ).is_file()


def test_md_table_formats_nan_and_pipes() -> None:
    assert md_table(["a", "b"], [[float("nan"), "x|y"]]).splitlines()[2] == "| n/a | x\\|y |"
