"""Decision-threshold search for multi-label tagging, on the validation split only.

F1 only changes where the threshold crosses a predicted probability, so the search is
exact: sort the scores once, count true positives at every distinct score, and take
the best cut (placed half-way to the next lower score, so it generalises). The result
is plain data carrying the split it was tuned on; the runner refuses to apply it to
that same split, and the CLI only ever passes validation predictions here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shards.base.config import to_dict
from shards.base.tasks import TaskSpec

ThresholdKind = Literal["class", "global"]
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """One global threshold (max micro-F1) and one per tag (max that tag's F1)."""

    split: str
    """The split they were tuned on: never the split they are reported on."""
    classes: tuple[str, ...]
    """Tag vocabulary, in head order."""
    global_threshold: float
    per_class: tuple[float, ...]
    tuned_micro_f1_global: float = math.nan
    """Micro-F1 the global threshold reached on the tuning split."""
    tuned_micro_f1_class: float = math.nan
    """Micro-F1 the per-tag thresholds reached on the tuning split."""
    fallback: tuple[str, ...] = ()
    """Tags without positives on the tuning split: they use the global threshold."""

    def check(self, task: TaskSpec, split: str | None = None) -> None:
        """Refuse a different vocabulary, or applying them to the split they came from."""
        if tuple(task.classes) != self.classes:
            raise ValueError(
                f"thresholds were tuned for tags {list(self.classes)[:5]}..., not task {task.name}'s tags"
            )
        if split is not None and split == self.split:
            raise ValueError(f"thresholds tuned on split {split!r} cannot be used to report on {split!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)  # tuples become lists (JSON)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        """As ``to_dict`` wrote them (``metrics.json``); unknown keys are a TypeError."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)

    @classmethod
    def fixed(cls, classes: list[str], value: float = DEFAULT_THRESHOLD) -> Thresholds:
        """The same threshold for every tag, tuned on nothing (predicting without a metrics.json)."""
        return cls(
            split="", classes=tuple(classes), global_threshold=value, per_class=(value,) * len(classes)
        )

    def applied(self, kind: ThresholdKind) -> Thresholds:
        """What a prediction applies: the per-tag thresholds (``class``) or the global one for
        every tag (``global``)."""
        if kind == "class":
            return self
        return dataclasses.replace(self, per_class=(self.global_threshold,) * len(self.classes))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold`` against 0/1 ``labels``.

    Among equally good cuts the highest threshold wins (fewest positives). With no
    positive label F1 is 0 everywhere and the threshold is ``nan``.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"threshold search: {s.size} scores and {y.size} labels")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan"), 0.0
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    predicted = np.arange(1, s.size + 1)
    end = np.r_[s[1:] != s[:-1], True]  # last index of each run of tied scores
    tp, predicted, cut = tp[end], predicted[end], s[end]
    f1 = 2.0 * tp / (predicted + n_pos)  # 2TP / (2TP + FP + FN)
    i = int(np.argmax(f1))
    thr = cut[i]
    if i + 1 < cut.size:
        mid = (cut[i] + cut[i + 1]) / 2.0
        thr = mid if cut[i + 1] < mid <= cut[i] else cut[i]
    return float(thr), float(f1[i])


def micro_f1(probs: np.ndarray, target: np.ndarray, thresholds: float | np.ndarray) -> float:
    """Micro-F1 of ``probs >= thresholds`` (scalar or one per column)."""
    pred = np.asarray(probs) >= np.asarray(thresholds)
    y = np.asarray(target).astype(bool)
    tp = int((pred & y).sum())
    denom = int(pred.sum()) + int(y.sum())
    return 2.0 * tp / denom if denom else 0.0


def search_thresholds(probs: np.ndarray, target: np.ndarray, *, split: str, classes: list[str]) -> Thresholds:
    """Search thresholds on one split's (track-level) probabilities (N, K) and 0/1 targets."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(target)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(classes):
        raise ValueError(f"threshold search: probabilities {p.shape}, targets {y.shape}, {len(classes)} tags")
    g, _ = best_f1_threshold(p, y)
    if np.isnan(g):
        raise ValueError(f"threshold search: split {split!r} has no positive tag at all")
    per, fallback = [], []
    for j, name in enumerate(classes):
        t, _ = best_f1_threshold(p[:, j], y[:, j])
        if np.isnan(t):
            fallback.append(name)
            t = g
        per.append(t)
    return Thresholds(
        split=split,
        classes=tuple(classes),
        global_threshold=g,
        per_class=tuple(per),
        tuned_micro_f1_global=micro_f1(p, y, g),
        tuned_micro_f1_class=micro_f1(p, y, np.asarray(per)),
        fallback=tuple(fallback),
    )
