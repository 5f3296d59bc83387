"""Rank-0 metrics: one JSON object per line in OUT/metrics.jsonl, plus TensorBoard scalars."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from shards.base.atomic import write_faults
from shards.base.logs import get_logger
from train.progress import TrainProgress


class MetricsLogger:
    """Appends {"step", "epoch", "time", ...metrics} lines; a no-op on ranks other than 0."""

    def __init__(self, out: str | Path, *, enabled: bool = True, tensorboard: bool | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self._tb = None
        if enabled:
            with write_faults(self.path, what="the run folder"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard is None:
            tensorboard = tensorboard_installed()
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out) / "tb"))

    def log(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "time": round(time.time(), 3), **metrics}
        line = json.dumps(row) + "\n"
        with write_faults(self.path, need=len(line)), open(self.path, "a") as f:
            f.write(line)
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def tensorboard_installed() -> bool:
    """Whether torch's TensorBoard writer can be used (the ``tensorboard`` extra), checked
    without importing it: a broken install then fails loudly instead of logging nothing."""
    return "torch.utils.tensorboard" in sys.modules or importlib.util.find_spec("tensorboard") is not None


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """All lines of OUT/metrics.jsonl (for tests, the demo and reports); a line cut short by a
    full disk is left out."""
    path = Path(out) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def validation_line(
    progress: TrainProgress, batches: int, epochs: int, improved: bool, width: int = 200
) -> str:
    """One short log line per validation: where the run is and its track-level scores
    (``epoch 3/10, step 120: track/accuracy=0.625, ... (new best)``), at most ``width`` long;
    every metric is in metrics.jsonl."""
    done = progress.epoch + progress.batch_in_epoch / max(1, batches)
    m = progress.metrics
    keys = [k for k in m if k.startswith("track/") and not k.endswith("/count")] or list(m)
    head = f"epoch {done:.3g}/{epochs}, step {progress.step}: "
    tail = " (new best)" if improved else ""
    text = ", ".join(f"{k}={m[k]:.4g}" for k in keys)
    room = width - len(head) - len(tail)
    return head + (text if len(text) <= room else text[: max(0, room - 3)] + "...") + tail


def with_skipped(stats: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    """An epoch's stats with the shards ``loader.on_bad_shard = "skip"`` left out of the plan
    (their count logged as a metric, their names in a warning line), unchanged when none."""
    if not skipped:
        return stats
    get_logger("train").warning(
        "shards left out of the plan (loader.on_bad_shard=skip): %s", ", ".join(skipped)
    )
    return {**stats, "loader/skipped_shards": len(skipped)}
