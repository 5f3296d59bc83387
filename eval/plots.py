"""Report figures (matplotlib, Agg backend: no display needed), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from shards.base.atomic import atomic_path  # noqa: E402


def png_bytes(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes, closed: rendered before any file is touched, so a write that
    fails knows the room it needed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _save(fig: plt.Figure, path: Path) -> Path:
    data = png_bytes(fig)
    with atomic_path(path, what=f"plot {path.name}", need=len(data)) as tmp:
        tmp.write_bytes(data)
    return path


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows = true class) with the counts written in."""
    n = len(labels)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=color)
    return _save(fig, path)


def plot_pr_curves(
    probs: np.ndarray, target: np.ndarray, tags: list[str], path: Path, title: str, top: int
) -> Path:
    """Micro-averaged PR curve plus the ``top`` most frequent tags' curves."""
    fig, ax = plt.subplots(figsize=(6, 5))
    p, r, _ = precision_recall_curve(target.ravel(), probs.ravel())
    ax.plot(r, p, color="black", lw=2, label="micro average")
    positives = target.sum(axis=0)
    for j in [j for j in np.argsort(-positives, kind="stable")[:top] if positives[j] > 0]:
        p, r, _ = precision_recall_curve(target[:, j], probs[:, j])
        ax.plot(r, p, lw=1, alpha=0.8, label=tags[j])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
