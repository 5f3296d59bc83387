"""Mixup of a training batch on the training device (``augment.mixup_alpha``, issue 33).

Zhang et al. 2018 (and its reference code, facebookresearch/mixup-cifar10; timm's ``Mixup``
in its default ``mode="batch"``): ONE ``lam ~ Beta(alpha, alpha)`` per batch and a random
permutation of the batch; ``x = lam * x + (1 - lam) * x[perm]`` and the targets likewise.
One lambda per batch is what those defaults do: a Python scalar, so the mix is two fused
element-wise passes with no per-sample weight tensor (timm's per-sample ``elem``/``pair``
modes are options, not its default). Targets become soft, ``(B, sum(head_sizes))`` float:
single = a mix of two one-hots, multi = a mix of two multi-hots (BCE with soft targets),
hier = one mixed one-hot per level (each level's cross-entropy on its own block). The run's
label smoothing is applied by the loss, as for hard labels (``train.loss.TaskLoss``).

The draws come from a ``torch.Generator`` on the CPU seeded from ``(train.seed, rank)``,
never from torch's global stream (dropout keeps the draws it has without mixup); its state is
registered with the ``Checkpointer`` per rank, so a resume on the same world size draws the
same lambdas and permutations as the run that never stopped. Training only: validation and
``python -m eval`` never call it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from shards.base.tasks import TaskSpec


def soft_targets(spec: TaskSpec, y: torch.Tensor) -> torch.Tensor:
    """Hard labels -> ``(B, sum(head_sizes))`` float targets: one-hot (single: y ``(B,)``),
    the multi-hot itself (multi: y ``(B, n_tags)``), one one-hot per level side by side
    (hier: y ``(B, n_levels)``), so one mixing rule serves every task kind."""
    if spec.kind == "multi":
        return y.float()
    cols = y.long().view(-1, 1) if spec.kind == "single" else y.long()
    sizes = spec.head_sizes
    return torch.cat([F.one_hot(cols[:, i], n).float() for i, n in enumerate(sizes)], dim=1)


class Mixup:
    """Mixes a training batch's inputs and targets; a stateful component (its generator's
    state, per rank). At ``alpha == 0`` it is the identity and draws nothing: exactly off."""

    def __init__(self, alpha: float, spec: TaskSpec, seed: int, rank: int, trainable: bool = True) -> None:
        if alpha < 0:
            raise ValueError(f"augment.mixup_alpha: must be >= 0, got {alpha}")
        if alpha > 0 and not trainable:
            warnings.warn(
                "augment.mixup_alpha has no effect on a family with its own fit (gbm)", stacklevel=2
            )
        self.alpha, self.spec = alpha, spec
        self.generator = torch.Generator()
        # one stream per rank (each rank mixes its own batch), apart from torch's global stream
        self.generator.manual_seed(_stream_seed(seed, rank))
        self._conc = torch.tensor([alpha, alpha], dtype=torch.float64)

    def draw(self, n: int) -> tuple[float, torch.Tensor]:
        """(lam in [0, 1], a permutation of ``range(n)`` on the CPU) for one batch of n rows."""
        # Dirichlet(alpha, alpha)'s first coordinate is Beta(alpha, alpha): how torch.distributions.Beta
        # samples, here from our own generator (Beta.sample takes none)
        lam = float(torch._sample_dirichlet(self._conc, generator=self.generator)[0])
        return lam, torch.randperm(n, generator=self.generator)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, C, F, T)``, hard labels y -> mixed x (same shape and device) and soft targets
        ``(B, sum(head_sizes))`` float on y's device; ``(x, y)`` unchanged when off."""
        if self.alpha == 0:
            return x, y
        lam, perm = self.draw(x.shape[0])
        idx = perm.to(x.device, non_blocking=True)
        q = soft_targets(self.spec, y)
        mixed_x = x.mul(lam).add_(x.index_select(0, idx), alpha=1.0 - lam)
        mixed_q = q.mul(lam).add_(q.index_select(0, idx.to(q.device)), alpha=1.0 - lam)
        return mixed_x, mixed_q

    def state_dict(self) -> dict[str, Any]:
        """The generator's state ({} when off: nothing to restore)."""
        return {"generator": self.generator.get_state()} if self.alpha else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def _stream_seed(seed: int, rank: int) -> int:
    """A 63-bit seed per (train.seed, rank), apart from the seeds the run's other streams start from."""
    return (seed * 1_000_003 + rank * 7_919 + 0x6D69_7875) % (2**63)
