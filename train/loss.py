"""Training's view of a task: the loss, on top of the shared outputs (``shards.base.task_outputs``).

single: cross-entropy with label smoothing; multi: BCE with logits; hier: one
cross-entropy per level, summed. Each also takes soft targets ``(B, sum(head_sizes))``
float (mixup, ``train.mixup``): the same losses with probability targets, label smoothing
applied to them as to hard labels.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from shards.base.task_outputs import TaskOutputs
from shards.base.tasks import TaskSpec


class TaskLoss(TaskOutputs):
    """Loss / probabilities / predictions for one ``TaskSpec``."""

    def __init__(self, spec: TaskSpec, *, label_smoothing: float = 0.0) -> None:
        super().__init__(spec)
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss; y is (B,) int64 single, (B, n_tags) float multi, (B, n_levels) int64 hier,
        or soft targets (B, sum(head_sizes)) float for any kind."""
        logits = logits.float()
        if self.spec.kind == "multi":
            return F.binary_cross_entropy_with_logits(logits, y.float())
        soft = y.is_floating_point() and y.dim() == 2 and y.shape[1] == self.num_outputs
        if self.spec.kind == "single":
            target = y.float() if soft else y.long().view(-1)
            return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        targets = self.split(y.float()) if soft else [y[:, i].long() for i in range(len(self.head_sizes))]
        # TaskSpec guarantees >= 2 hierarchy levels, so the sum is a tensor (never the start value 0)
        return cast(
            torch.Tensor,
            sum(
                F.cross_entropy(h, t, label_smoothing=self.label_smoothing)
                for h, t in zip(self.split(logits), targets)
            ),
        )
