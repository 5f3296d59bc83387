"""The trainer's validation function, built from the ``[eval]`` section.

The Trainer is handed a ``validate(predictor, loader, task) -> metrics`` callable instead
of importing eval (``python -m train`` wires this one), so train and eval sit beside
each other without an import cycle, and validation, ``best.pt`` and reports share one
metric definition (``eval.metrics`` with the primary metric of ``shards.base.tasks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eval.config import EvalConfig
from shards.base.tasks import TaskSpec

if TYPE_CHECKING:
    from pipelines.batches import BatchLoader
    from train.checkpoint import TrainedModel
    from train.trainer import Validator  # the Trainer's own signature, not a copy


def validator(cfg: EvalConfig | None = None) -> Validator:
    """``validate(predictor, eval-mode loader, task)``: eval's track- and chunk-level metrics
    (aggregation and top-k from ``cfg``); collective, every rank gets the same numbers."""
    cfg = cfg or EvalConfig()

    def validate(predictor: TrainedModel, loader: BatchLoader, task: TaskSpec) -> dict[str, float]:
        from eval.runner import evaluate_model  # torchmetrics and the scoring: first needed here

        result = evaluate_model(predictor, loader, task, aggregate=cfg.aggregate, top_k=tuple(cfg.top_k))
        return dict(result.metrics)

    return validate
