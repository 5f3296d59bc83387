"""Training curves of a run: ``OUT/curves.png`` from ``metrics.jsonl`` (matplotlib, Agg backend).

Drawn by the Trainer at close on rank 0, so it lives with training, not with the eval report.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shards.base.atomic import atomic_path  # noqa: E402
from shards.base.errors import say_warning  # noqa: E402
from train.logger import read_metrics  # noqa: E402


def plot_training_curves(rows: list[dict], path: Path, title: str, what: str | None = None) -> Path | None:
    """Training loss (left) and validation metrics (right) against the optimiser step, from
    the rows of a run's ``metrics.jsonl``; None when there is nothing to plot yet."""
    loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    val_keys = sorted(
        {k for r in rows for k, v in r.items() if k.startswith("val/track/") and isinstance(v, (int, float))}
    )
    val_keys = [k for k in val_keys if not k.endswith("/count")][:6]
    if not loss and not val_keys:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if loss:
        left.plot(*zip(*loss), lw=1)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    for k in val_keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        right.plot(*zip(*pts), marker="o", ms=3, label=k.removeprefix("val/"))
    right.set_xlabel("step")
    right.set_ylabel("validation (track level)")
    if val_keys:
        right.legend(fontsize=7)
    fig.suptitle(title)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    with atomic_path(path, what=what, need=len(buf.getvalue())) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def plot_run_curves(out: Path, title: str) -> Path | None:
    """``OUT/curves.png`` from the run's metrics so far (also after a stop or a crash); a plot
    that fails is a one-line warning, never a lost run."""
    try:
        return plot_training_curves(read_metrics(out), out / "curves.png", title, what="training curves")
    except (OSError, ValueError, RuntimeError) as e:
        say_warning(f"{out / 'curves.png'}: could not plot the training curves: {e}")
        return None
