"""Run a model over an eval loader and score it: chunk level and track level.

Each rank scores its own chunks; the chunk predictions are gathered to every rank
(``shards.base.distributed.all_gather_object``) and only then aggregated to tracks, because a
long track's segments may land on different ranks. Every rank computes the same numbers
from the same rows, whatever the world size. The trainer's validation
(``eval.validation.validator``) calls ``evaluate_model`` every epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from eval.aggregate import ScoredRows, aggregate_tracks
from eval.config import Aggregate
from eval.metrics import MetricSet, compute_metrics
from eval.thresholds import Thresholds
from shards.base.distributed import all_gather_object
from shards.base.task_outputs import TaskOutputs
from shards.base.tasks import TaskSpec, primary_metric

ProbaFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    """Flat metrics plus the gathered predictions (numpy) and tables for the report."""

    metrics: dict[str, float]
    """``chunk/...`` and ``track/...`` keys, e.g. ``track/accuracy``, ``track/micro_f1``."""
    chunk: ScoredRows[np.ndarray]
    track: ScoredRows[np.ndarray]
    details: dict[str, MetricSet] = field(default_factory=dict)
    """``"chunk"`` / ``"track"`` -> tables and confusion matrices."""
    thresholds: Thresholds | None = None
    task_kind: str = "single"

    @property
    def primary(self) -> float:
        """The number to pick checkpoints by (track accuracy / ROC-AUC / level mean)."""
        return self.metrics[primary_metric(self.task_kind)]


def gather(local: ScoredRows[torch.Tensor]) -> ScoredRows[torch.Tensor]:
    """All ranks' rows on every rank, sorted by track id (stable within a track)."""
    parts = all_gather_object(ScoredRows(local.probs.float().cpu(), local.target.long().cpu(),
                                          local.track.long().cpu()))  # fmt: skip
    probs, target, track = (torch.cat([getattr(p, k) for p in parts]) for k in ("probs", "target", "track"))
    order = torch.argsort(track, stable=True)
    return ScoredRows(probs[order], target[order], track[order])


def evaluate_model(
    model_or_predictor: Any,
    loader: Iterable[dict[str, torch.Tensor]],
    task: TaskSpec,
    *,
    aggregate: Aggregate = "mean",
    thresholds: Thresholds | None = None,
    device: str | torch.device | None = None,
    split: str | None = None,
    probabilities: ProbaFn | None = None,
    top_k: tuple[int, ...] | list[int] = (3, 5),
) -> EvalResult:
    """Score every chunk the loader yields ({x (B,C,F,T), y, track (B,)} dicts).

    ``model_or_predictor``: a ``train.checkpoint.TrainedModel`` (``.predict_proba``), an ``nn.Module`` returning
    logits (turned into probabilities by ``probabilities`` or ``train.loss.TaskLoss``),
    or any callable x -> probabilities. ``thresholds`` (multi-label) must come from a
    different ``split``. Collective when a process group is up: call it on every rank.
    """
    if thresholds is not None:
        if task.kind != "multi":
            raise ValueError("thresholds only apply to multi-label tasks")
        if split is None:
            raise ValueError(
                "applying thresholds needs split= (the split reported on, never the tuning split)"
            )
        thresholds.check(task, split)
    chunk_all, track_all = score_tracks(
        model_or_predictor, loader, task, aggregate=aggregate, device=device, probabilities=probabilities
    )
    if len(track_all) == 0:
        raise ValueError(f"split {split or '?'}: the loader yielded no chunks (empty split?)")
    details = {
        "chunk": compute_metrics(task, chunk_all.probs, chunk_all.target, top_k=top_k),
        "track": compute_metrics(task, track_all.probs, track_all.target, thresholds=thresholds, top_k=top_k),
    }
    metrics = {f"{level}/{k}": v for level, m in details.items() for k, v in m.scalars.items()}
    metrics["chunk/count"], metrics["track/count"] = float(len(chunk_all)), float(len(track_all))
    return EvalResult(metrics, chunk_all.numpy(), track_all.numpy(), details, thresholds, task.kind)


def score_tracks(
    model_or_predictor: Any,
    loader: Iterable[dict[str, torch.Tensor]],
    task: TaskSpec,
    *,
    aggregate: Aggregate = "mean",
    device: str | torch.device | None = None,
    probabilities: ProbaFn | None = None,
) -> tuple[ScoredRows[torch.Tensor], ScoredRows[torch.Tensor]]:
    """(chunk, track) predictions of every rank, sorted by track id: what ``evaluate_model``
    scores, and what ``eval.predict`` reports (no labels needed). Collective, like it."""
    with _scoring(model_or_predictor, task, probabilities, device) as (predict, dev):
        chunks = _collect(predict, loader, task, dev)
    chunk_all = gather(chunks)  # before aggregating: a track's segments may be on several ranks
    return chunk_all, aggregate_tracks(chunk_all, aggregate)


@contextlib.contextmanager
def _scoring(
    obj: Any, task: TaskSpec, probabilities: ProbaFn | None, device: str | torch.device | None
) -> Iterator[tuple[ProbaFn, torch.device | None]]:
    """(x -> probabilities, input device); a module is put in eval mode and restored after."""
    dev = torch.device(device) if device is not None else None
    if hasattr(obj, "predict_proba"):
        yield obj.predict_proba, dev
        return
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise TypeError(
                f"cannot evaluate a {type(obj).__name__}: need predict_proba, an nn.Module or a callable"
            )
        yield obj, dev
        return
    module = (
        obj.module if isinstance(obj, nn.parallel.DistributedDataParallel) else obj
    )  # no collectives per batch
    if probabilities is None:
        probabilities = TaskOutputs(task).probabilities
    if dev is None:
        dev = next((p.device for p in module.parameters()), None)
    was_training = module.training
    module.eval()
    try:
        yield (lambda x: probabilities(module(x).float())), dev
    finally:
        module.train(was_training)


@torch.no_grad()
def _collect(
    predict: ProbaFn, loader: Iterable[dict[str, torch.Tensor]], task: TaskSpec, dev: Any
) -> ScoredRows[torch.Tensor]:
    """Chunk predictions of this rank, on the CPU."""
    probs, target, track = [_empty(task).probs], [_empty(task).target], [_empty(task).track]
    width = sum(task.head_sizes)
    for batch in loader:
        x = batch["x"].to(dev) if dev is not None else batch["x"]
        p = predict(x).float()
        if p.dim() != 2 or p.shape != (x.shape[0], width):
            raise ValueError(f"predictions of shape {tuple(p.shape)}, expected ({x.shape[0]}, {width})")
        y = batch["y"]
        y = y.round().long() if y.is_floating_point() else y.long()
        probs.append(p.cpu())
        target.append(y.reshape(x.shape[0], *_target_shape(task)).cpu())
        track.append(batch["track"].reshape(-1).long().cpu())
    return ScoredRows(torch.cat(probs), torch.cat(target), torch.cat(track))


def _target_shape(task: TaskSpec) -> tuple[int, ...]:
    return () if task.kind == "single" else (task.label_width,)


def _empty(task: TaskSpec) -> ScoredRows[torch.Tensor]:
    return ScoredRows(
        torch.zeros(0, sum(task.head_sizes)),
        torch.zeros((0, *_target_shape(task)), dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
    )
