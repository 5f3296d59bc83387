"""Tasks: how logits (B, sum(head_sizes)) become a loss, probabilities and predictions.

single: one softmax head, cross-entropy with label smoothing.
multi:  one sigmoid per tag, BCE with logits.
hier:   one softmax head per level, losses summed; ``predict`` picks the most probable
        root-to-leaf path, so the predicted classes always respect the parent links.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from shards.manifest import TaskSpec


class TaskHead:
    """Loss / probabilities / predictions for one ``TaskSpec``."""

    def __init__(self, spec: TaskSpec, *, label_smoothing: float = 0.0) -> None:
        self.spec = spec
        self.head_sizes = list(spec.head_sizes)
        self.label_smoothing = label_smoothing
        if spec.kind == "hier":
            self._parents = [torch.tensor(lv.parent, dtype=torch.long) for lv in spec.levels[1:]]

    @property
    def num_outputs(self) -> int:
        return sum(self.head_sizes)

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """(B, sum(head_sizes)) -> one (B, head_size) tensor per head."""
        if t.shape[-1] != self.num_outputs:
            raise ValueError(
                f"expected {self.num_outputs} outputs (heads {self.head_sizes}), got {t.shape[-1]}"
            )
        return list(torch.split(t, self.head_sizes, dim=-1))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar loss; y is (B,) int64 single, (B, n_tags) float multi, (B, n_levels) int64 hier."""
        logits = logits.float()
        if self.spec.kind == "single":
            return F.cross_entropy(logits, y.long().view(-1), label_smoothing=self.label_smoothing)
        if self.spec.kind == "multi":
            return F.binary_cross_entropy_with_logits(logits, y.float())
        heads = self.split(logits)
        # TaskSpec guarantees >= 2 hierarchy levels, so the sum is a tensor (never the start value 0)
        return cast(
            torch.Tensor,
            sum(
                F.cross_entropy(h, y[:, i].long(), label_smoothing=self.label_smoothing)
                for i, h in enumerate(heads)
            ),
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax per head (single/hier) or sigmoid (multi), still (B, sum(head_sizes))."""
        logits = logits.float()
        if self.spec.kind == "multi":
            return torch.sigmoid(logits)
        return torch.cat([h.softmax(-1) for h in self.split(logits)], dim=-1)

    def predict(self, probs: torch.Tensor, threshold: float | torch.Tensor = 0.5) -> torch.Tensor:
        """single: (B,) class; multi: (B, n_tags) 0/1; hier: (B, n_levels) consistent path."""
        if self.spec.kind == "single":
            return probs.argmax(-1)
        if self.spec.kind == "multi":
            return (probs >= threshold).long()
        return self._best_path(self.split(probs))

    def _best_path(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """Leaf maximising the sum of log-probabilities along its root-to-leaf path."""
        score = heads[0].clamp_min(1e-12).log()
        for parent, h in zip(self._parents, heads[1:]):
            score = h.clamp_min(1e-12).log() + score[:, parent.to(h.device)]
        leaf = score.argmax(-1)
        cols = [leaf]
        for parent in reversed(self._parents):
            cols.insert(0, parent.to(leaf.device)[cols[0]])
        return torch.stack(cols, 1)
