"""Task semantics shared by training and evaluation: model outputs -> probabilities -> decisions.

single: one softmax head; multi: one sigmoid per tag; hier: one softmax head per level,
``predict`` picks the most probable root-to-leaf path, so the predicted classes always
respect the parent links. It sits below train and eval (both use it; neither owns it).
"""

from __future__ import annotations

import torch

from shards.base.tasks import TaskSpec


class TaskOutputs:
    """Probabilities and predictions for one ``TaskSpec`` from (B, sum(head_sizes)) outputs."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.head_sizes = list(spec.head_sizes)
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
