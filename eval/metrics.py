"""Metrics per task kind, from torchmetrics' functional API on gathered predictions.

``compute_metrics`` sees every row of the split (the runner gathers predictions from
all ranks first), so the numbers do not depend on the world size. Keys are flat and
unprefixed (``accuracy``, ``micro_f1``, ``level/genre/accuracy``); the runner adds
``chunk/`` or ``track/``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

from shards.base.registry import Registry
from shards.base.task_outputs import TaskOutputs
from shards.base.tasks import TaskSpec


@dataclass
class MetricSet:
    """Scalars plus the tables and confusion matrices the report prints."""

    scalars: dict[str, float]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Table name -> rows (``per_class``, ``per_tag``, ``per_level``)."""
    confusion: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    """Name -> (class names, (C, C) counts; rows = true class, columns = predicted)."""


def split_heads(probs: torch.Tensor, task: TaskSpec) -> list[torch.Tensor]:
    """(N, sum(head_sizes)) -> one (N, head_size) block per head."""
    if probs.shape[-1] != sum(task.head_sizes):
        raise ValueError(
            f"probabilities have {probs.shape[-1]} columns, task {task.name} needs {sum(task.head_sizes)}"
        )
    return list(torch.split(probs, task.head_sizes, dim=-1))


def apply_thresholds(probs: torch.Tensor, thresholds: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Multi-label decisions: positive iff probability >= threshold (scalar or one per tag)."""
    thr = torch.as_tensor(thresholds, dtype=probs.dtype)
    return (probs >= thr).long()


MetricFn = Callable[[TaskSpec, torch.Tensor, torch.Tensor], dict[str, float]]
"""fn(task, probs (N, sum(head_sizes)), target) -> unprefixed scalars, on gathered rows."""

METRICS: dict[str, Registry[MetricFn]] = {
    k: Registry(f"{k}-task metric") for k in ("single", "multi", "hier")
}
"""Metrics beyond the built-in ones, per task kind (``METRICS[kind].unregister(name)`` undoes)."""


def register_metric(kind: str, name: str, fn: MetricFn) -> None:
    """Add a metric of ``kind`` tasks to every evaluation (validation, reports), at chunk and
    track level: one call in the metric's own module."""
    METRICS[kind].register(name, fn)


def compute_metrics(
    task: TaskSpec,
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    thresholds: Any = None,
    top_k: Sequence[int] = (3, 5),
) -> MetricSet:
    """All metrics of ``task.kind`` for (N, sum(head_sizes)) ``probs`` and their labels.

    ``thresholds`` (multi-label only) is an ``eval.thresholds.Thresholds`` searched on
    another split; its tuned F1s are reported beside the fixed-0.5 ones.
    """
    probs, target = probs.float().cpu(), target.long().cpu()
    if probs.shape[0] == 0:
        raise ValueError("no predictions to score")
    if task.kind == "single":
        target = target.reshape(-1)
        out = _single(task, probs, target, top_k)
    elif task.kind == "multi":
        out = _multi(task, probs, target, thresholds)
    else:
        out = _hier(task, probs, target)
    extra = METRICS[task.kind]
    if extra.names():
        added = {k: v for name in extra for k, v in extra.get(name)(task, probs, target).items()}
        out.scalars = dict(sorted({**out.scalars, **added}.items()))
    return out


def _f(t: torch.Tensor) -> float:
    return float(t)


def _single(task: TaskSpec, probs: torch.Tensor, target: torch.Tensor, top_k: Sequence[int]) -> MetricSet:
    c = len(task.classes)
    out = _classwise(probs, target, c)
    for k in top_k:
        if 1 < k < c:
            out[f"top{k}_accuracy"] = _f(multiclass_accuracy(probs, target, c, top_k=k, average="micro"))
    rows = _class_rows(task.classes, probs, target)
    cm = multiclass_confusion_matrix(probs, target, c).numpy()
    return MetricSet(dict(sorted(out.items())), {"per_class": rows}, {"confusion": (list(task.classes), cm)})


def _classwise(probs: torch.Tensor, target: torch.Tensor, c: int) -> dict[str, float]:
    """Top-1 accuracy and macro P/R/F1 (macro over the classes that occur in labels or
    predictions, as sklearn's default ``labels``)."""
    return {
        "accuracy": _f(multiclass_accuracy(probs, target, c, average="micro")),
        "macro_f1": _f(multiclass_f1_score(probs, target, c, average="macro")),
        "macro_precision": _f(multiclass_precision(probs, target, c, average="macro")),
        "macro_recall": _f(multiclass_recall(probs, target, c, average="macro")),
    }


def _class_rows(classes: list[str], probs: torch.Tensor, target: torch.Tensor) -> list[dict[str, Any]]:
    c = len(classes)
    p = multiclass_precision(probs, target, c, average="none")
    r = multiclass_recall(probs, target, c, average="none")
    f = multiclass_f1_score(probs, target, c, average="none")
    support = torch.bincount(target, minlength=c)
    return [
        {"class": name, "support": int(support[i]), "precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f[i])}
        for i, name in enumerate(classes)
    ]


def _multi(task: TaskSpec, probs: torch.Tensor, target: torch.Tensor, thresholds: Any) -> MetricSet:
    k = len(task.classes)
    if target.shape != probs.shape:
        raise ValueError(
            f"multi-label targets {tuple(target.shape)} do not match probabilities {tuple(probs.shape)}"
        )
    out = _f1s(apply_thresholds(probs, 0.5), target, k, "")
    roc, ap, roc_ok, ap_ok = _ranking(probs, target, k)
    out["roc_auc"] = _masked_mean(roc, roc_ok)
    out["pr_auc"] = _masked_mean(ap, ap_ok)
    out["auc_excluded_tags"] = float(k - int(roc_ok.sum()))
    per_class_thr = torch.full((k,), 0.5)
    if thresholds is not None:
        thresholds.check(task)
        out |= _f1s(apply_thresholds(probs, thresholds.global_threshold), target, k, "_thr_global")
        per_class_thr = torch.tensor(thresholds.per_class, dtype=torch.float32)
        out |= _f1s(apply_thresholds(probs, per_class_thr), target, k, "_thr_class")
    pred = apply_thresholds(probs, per_class_thr)
    p = multilabel_precision(pred, target, k, average="none", zero_division=0)
    r = multilabel_recall(pred, target, k, average="none", zero_division=0)
    f = multilabel_f1_score(pred, target, k, average="none", zero_division=0)
    pos = target.sum(dim=0)
    rows = [
        {
            "tag": name,
            "positives": int(pos[i]),
            "threshold": _f(per_class_thr[i]),
            "precision": _f(p[i]),
            "recall": _f(r[i]),
            "f1": _f(f[i]),
            "roc_auc": _f(roc[i]) if roc_ok[i] else math.nan,
            "pr_auc": _f(ap[i]) if ap_ok[i] else math.nan,
        }
        for i, name in enumerate(task.classes)
    ]
    return MetricSet(dict(sorted(out.items())), {"per_tag": rows})


def _f1s(pred: torch.Tensor, target: torch.Tensor, k: int, suffix: str) -> dict[str, float]:
    """Micro/macro F1 (and micro P/R) of 0/1 decisions; macro averages over all tags."""
    zd = 0  # an undefined score (no predicted / no true positives) counts as 0
    return {
        f"micro_f1{suffix}": _f(multilabel_f1_score(pred, target, k, average="micro", zero_division=zd)),
        f"macro_f1{suffix}": _f(multilabel_f1_score(pred, target, k, average="macro", zero_division=zd)),
        f"micro_precision{suffix}": _f(
            multilabel_precision(pred, target, k, average="micro", zero_division=zd)
        ),
        f"micro_recall{suffix}": _f(multilabel_recall(pred, target, k, average="micro", zero_division=zd)),
    }


def _ranking(probs: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Per-tag ROC-AUC and average precision (exact, no binning) and which are defined.

    ROC-AUC needs positives and negatives, AP needs positives; undefined tags are masked
    out of the macro mean (and counted in ``auc_excluded_tags``) instead of counting as 0.
    """
    pos = target.sum(dim=0)
    roc_ok = (pos > 0) & (pos < target.shape[0])
    ap_ok = pos > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
        roc = multilabel_auroc(probs, target, k, average="none", thresholds=None)
        ap = multilabel_average_precision(probs, target, k, average="none", thresholds=None)
    return roc, ap, roc_ok, ap_ok


def _masked_mean(values: torch.Tensor, ok: torch.Tensor) -> float:
    return _f(values[ok].mean()) if bool(ok.any()) else math.nan


def _hier(task: TaskSpec, probs: torch.Tensor, target: torch.Tensor) -> MetricSet:
    """Per-level accuracy (argmax of each head), their mean ("overall" in the ccmusic
    seed), all-levels-correct, and how often the argmaxes respect the parent links."""
    if target.dim() != 2 or target.shape[1] != len(task.levels):
        raise ValueError(f"hierarchical targets must be (N, {len(task.levels)}), got {tuple(target.shape)}")
    out: dict[str, float] = {}
    rows, confusion, preds = [], {}, []
    for i, (lv, head) in enumerate(zip(task.levels, split_heads(probs, task))):
        y, c = target[:, i], len(lv.classes)
        scores = _classwise(head, y, c)
        out |= {f"level/{lv.name}/{name}": v for name, v in scores.items()}
        rows.append(
            {"level": lv.name, "classes": c, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
        )
        confusion[f"confusion_{lv.name}"] = (
            list(lv.classes),
            multiclass_confusion_matrix(head, y, c).numpy(),
        )
        preds.append(head.argmax(dim=1))
    pred = torch.stack(preds, dim=1)
    out["level_mean_accuracy"] = float(np.mean([r["accuracy"] for r in rows]))
    out["all_levels_accuracy"] = _f((pred == target).all(dim=1).float().mean())
    consistent = torch.ones(pred.shape[0], dtype=torch.bool)
    for i, lv in enumerate(task.levels[1:], start=1):
        consistent &= torch.tensor(lv.parent)[pred[:, i]] == pred[:, i - 1]
    out["hierarchy_consistent"] = _f(consistent.float().mean())
    out |= _hier_path(task, probs, target, rows)
    return MetricSet(dict(sorted(out.items())), {"per_level": rows}, confusion)


def _hier_path(
    task: TaskSpec, probs: torch.Tensor, target: torch.Tensor, rows: list[dict]
) -> dict[str, float]:
    """The same scores for the most probable root-to-leaf path (``TaskLoss.predict``): the
    prediction a user of the model gets, which always respects the parent links."""
    path = TaskOutputs(task).predict(probs.float())
    out: dict[str, float] = {}
    for i, (lv, row) in enumerate(zip(task.levels, rows)):
        acc = _f((path[:, i] == target[:, i]).float().mean())
        out[f"level/{lv.name}/path_accuracy"] = row["path_accuracy"] = acc
    out["path_level_mean_accuracy"] = float(np.mean([r["path_accuracy"] for r in rows]))
    out["path_all_levels_accuracy"] = _f((path == target).all(dim=1).float().mean())
    return out
