"""Per-track predictions as a user reads them: top-k classes, tags over their thresholds,
hierarchical paths; written as ``predictions.csv`` and ``predictions.json``.

Tag thresholds are the ones ``python -m eval`` searched on the validation split (read from
its ``metrics.json`` as ``eval.thresholds.Thresholds``), else 0.5. Unreadable inputs are rows with ``status = error`` and
their reason, never left out.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.thresholds import ThresholdKind, Thresholds
from shards.base.atomic import atomic_write_text
from shards.base.task_outputs import TaskOutputs
from shards.base.tasks import TaskSpec


def load_thresholds(
    metrics: Path, task: TaskSpec, model_name: str, kind: ThresholdKind = "class"
) -> Thresholds:
    """The thresholds ``python -m eval`` searched for this model (or the file's only model), as
    applied with ``kind``."""
    try:
        data = json.loads(Path(metrics).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{metrics}: not a readable metrics.json: {e}") from None
    if data.get("task") != task.vocab():
        raise ValueError(f"{metrics}: written for another label vocabulary than the checkpoint's")
    models = {n: m for n, m in data.get("models", {}).items() if m.get("thresholds")}
    if not models:
        raise ValueError(f"{metrics}: holds no searched thresholds (multi-label eval with a threshold split)")
    entry = models.get(model_name) or (next(iter(models.values())) if len(models) == 1 else None)
    if entry is None:
        raise ValueError(f"{metrics}: several models {sorted(models)}, none named {model_name!r}")
    try:
        return Thresholds.from_dict(entry["thresholds"]).applied(kind)
    except TypeError as e:
        raise ValueError(f"{metrics}: malformed thresholds: {e}") from None


def _top(names: list[str], p: np.ndarray, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-p, kind="stable")[:k]
    return [{"label": names[i], "prob": float(p[i])} for i in order]


def describe(
    task: TaskSpec, probs: np.ndarray, *, top_k: int = 5, thresholds: Thresholds | None = None
) -> list[dict[str, Any]]:
    """``probs (N, sum(head_sizes))`` -> one dict per track: ``prediction`` (a class, the tags
    joined by ';', or the root-to-leaf path joined by '/'), ``top_k`` and the task's details."""
    if task.kind == "single":
        return [
            {"prediction": task.classes[int(p.argmax())], "top_k": _top(task.classes, p, top_k)}
            for p in probs
        ]
    if task.kind == "multi":
        thr = (thresholds or Thresholds.fixed(task.classes)).per_class
        out: list[dict[str, Any]] = []
        for p in probs:
            on = [i for i in np.argsort(-p, kind="stable") if p[i] >= thr[i]]
            tags = [{"label": task.classes[i], "prob": float(p[i]), "threshold": float(thr[i])} for i in on]
            out.append(
                {
                    "prediction": ";".join(t["label"] for t in tags),
                    "tags": tags,
                    "top_k": _top(task.classes, p, top_k),
                }
            )
        return out
    head = TaskOutputs(task)  # the path users get: consistent with the parent links
    paths = head.predict(torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))).numpy()
    bounds = np.cumsum([0, *task.head_sizes])
    out = []
    for p, path in zip(probs, paths):
        levels = [p[bounds[d] : bounds[d + 1]] for d in range(len(task.levels))]
        steps: list[dict[str, Any]] = [
            {"level": lv.name, "label": lv.classes[int(i)], "prob": float(levels[d][int(i)])}
            for d, (lv, i) in enumerate(zip(task.levels, path))
        ]
        out.append(
            {
                "prediction": "/".join(s["label"] for s in steps),
                "path": steps,
                "top_k": {lv.name: _top(lv.classes, levels[d], top_k) for d, lv in enumerate(task.levels)},
            }
        )
    return out


def prob_columns(task: TaskSpec) -> list[str]:
    """One CSV column per output: ``p:CLASS`` (hier: ``p:LEVEL:CLASS``)."""
    if task.kind != "hier":
        return [f"p:{c}" for c in task.classes]
    return [f"p:{lv.name}:{c}" for lv in task.levels for c in lv.classes]


@dataclass
class PredictionReport:
    """Predictions for the readable inputs (input order) plus every input that was not read."""

    task: TaskSpec
    tracks: list[dict[str, Any]]
    """``{"path", "prediction", "top_k", ...}`` per predicted file."""
    probs: np.ndarray
    """(len(tracks), sum(head_sizes)) track-level probabilities, rows as ``tracks``."""
    rejected: list[dict[str, str]] = field(default_factory=list)
    """``{"path", "reason"}`` per input that could not be predicted."""
    info: dict[str, Any] = field(default_factory=dict)
    """Checkpoint, thresholds' source, aggregation."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.info,
            "task": self.task.vocab(),
            "tracks": [{**t, "probs": [float(v) for v in p]} for t, p in zip(self.tracks, self.probs)],
            "rejected": self.rejected,
        }

    def to_csv(self) -> str:
        cols = prob_columns(self.task)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "status", "prediction", "top_k", "reason", *cols])
        for t, p in zip(self.tracks, self.probs):
            w.writerow(
                [t["path"], "ok", t["prediction"], _top_text(t["top_k"]), "", *(f"{v:.6g}" for v in p)]
            )
        for r in self.rejected:
            w.writerow([r["path"], "error", "", "", r["reason"], *([""] * len(cols))])
        return buf.getvalue()

    def write(self, out: str | Path) -> list[Path]:
        """``out/predictions.csv`` and ``out/predictions.json`` (atomic writes)."""
        out = Path(out)  # (atomic writes make the folder)
        atomic_write_text(out / "predictions.csv", self.to_csv())
        atomic_write_text(out / "predictions.json", json.dumps(self.to_json(), indent=2) + "\n")
        return [out / "predictions.csv", out / "predictions.json"]


def _top_text(top: list[dict[str, Any]] | dict[str, list[dict[str, Any]]]) -> str:
    if isinstance(top, dict):
        return " | ".join(f"{lv}: {_top_text(t)}" for lv, t in top.items())
    return "; ".join(f"{t['label']}:{t['prob']:.4f}" for t in top)
