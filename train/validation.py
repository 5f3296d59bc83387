"""Validation: one call, ``validate(predictor, loader, task) -> metrics``.

Uses ``eval.runner.evaluate_model`` (chunk-to-track aggregation, synchronised across
ranks). Until the eval stage is importable a minimal fallback computes the headline
track-level metrics here, so the swap is this one module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from shards.manifest import TaskSpec
from train.tasks import TaskHead

if TYPE_CHECKING:
    from eval.config import Aggregate


def validate(predictor: Any, loader: Any, task: TaskSpec, eval_cfg: Any = None) -> dict[str, float]:
    """Track- and chunk-level metrics of ``predictor`` on the eval-mode ``loader`` (all ranks call it)."""
    try:
        from eval.runner import evaluate_model
    except ImportError:
        return fallback_metrics(predictor, loader, task)
    # EvalConfig validates its aggregate; evaluate_model refuses anything but mean/max
    aggregate = cast("Aggregate", getattr(eval_cfg, "aggregate", "mean"))
    top_k = tuple(getattr(eval_cfg, "top_k", (3, 5)))
    return dict(evaluate_model(predictor, loader, task, aggregate=aggregate, top_k=top_k).metrics)


def primary_metric(kind: str) -> str:
    """The headline track-level metric of a task kind (eval's PRIMARY)."""
    try:
        from eval.metrics import PRIMARY
    except ImportError:
        PRIMARY = {"single": "accuracy", "multi": "micro_f1", "hier": "level_mean_accuracy"}
    return f"track/{PRIMARY[kind]}"


@torch.no_grad()
def fallback_metrics(predictor: Any, loader: Any, task: TaskSpec) -> dict[str, float]:
    """Mean chunk probabilities per track, then accuracy / level accuracy / micro-F1@0.5."""
    tracks, probs, labels = [], [], []
    for batch in loader:
        probs.append(predictor.predict_proba(batch["x"]).float().cpu())
        tracks.append(batch["track"].cpu())
        labels.append(batch["y"].cpu())
    t, p, y = _gather(torch.cat(tracks), torch.cat(probs), torch.cat(labels))
    uniq, inv = torch.unique(t, return_inverse=True)
    agg = torch.zeros(len(uniq), p.shape[1]).index_add_(0, inv, p)
    agg /= torch.bincount(inv, minlength=len(uniq)).clamp(min=1).unsqueeze(1).float()
    first = torch.zeros(len(uniq), dtype=torch.long).scatter_(0, inv, torch.arange(len(t)))
    y_track = y[first]
    pred = TaskHead(task).predict(agg)
    if task.kind == "single":
        return {"track/accuracy": (pred == y_track.view(-1)).float().mean().item()}
    if task.kind == "multi":
        tp = (pred * y_track).sum().item()
        denom = pred.sum().item() + y_track.sum().item()
        return {"track/micro_f1": 2 * tp / denom if denom else 0.0}
    per_level = (pred == y_track).float().mean(0)
    out = {f"track/level{i}_accuracy": v.item() for i, v in enumerate(per_level)}
    out["track/level_mean_accuracy"] = per_level.mean().item()
    out["track/accuracy"] = per_level[-1].item()
    return out


def _gather(*tensors: torch.Tensor) -> list[torch.Tensor]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(tensors)
    boxes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(boxes, tensors)
    return [torch.cat([b[i] for b in boxes]) for i in range(len(tensors))]
