"""Training curves: drawn from metrics.jsonl rows, nothing when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg

from train.curves import plot_training_curves


def test_training_curves_png(tmp_path: Path) -> None:
    rows = [{"step": s, "epoch": s // 4, "train/loss": 2.0 / s} for s in range(1, 9)]
    rows += [{"step": 4, "epoch": 1, "val/track/accuracy": 0.5, "val/track/count": 10.0}]
    rows += [{"step": 8, "epoch": 2, "val/track/accuracy": 0.75, "val/track/count": 10.0}]
    path = plot_training_curves(rows, tmp_path / "curves.png", "run")
    assert path == tmp_path / "curves.png"
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 600  # two panels side by side
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_no_rows_no_plot(tmp_path: Path) -> None:
    assert (
        plot_training_curves([{"step": 1, "epoch": 0, "sync/max_diff": 0.0}], tmp_path / "c.png", "x") is None
    )
    assert not (tmp_path / "c.png").exists()
