"""Keeping ranks' models identical: rank 0's buffers everywhere, and a check that they agree.

DDP averages gradients, so parameters stay in step by construction; buffers (BatchNorm
statistics) are only synced at the next forward, and a bug or a non-deterministic kernel can
still let ranks drift. Both run at epoch ends and at the end of a run, never per step; the
gradient average by hand covers the one step DDP cannot sync itself.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from shards.base.distributed import all_gather_object


def broadcast_buffers(modules: list[nn.Module]) -> None:
    """Rank 0's buffers in every module, on every rank (collective)."""
    for module in modules:
        for buf in module.buffers():
            torch.distributed.broadcast(buf, src=0)


def average_grads(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks (collective): what DDP does when a group's last backward
    syncs, for a partial accumulation group the loader ended before its last micro-batch."""
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world_size


def weight_fingerprints(model: nn.Module) -> list[float]:
    """Every rank's float64 position-weighted sum of ``model``'s tensors (collective): equal
    fingerprints mean equal weights, to float64 rounding."""
    tensors = [p.detach().double() for p in model.state_dict().values() if torch.is_tensor(p)]
    fp = sum(
        float((t.flatten() * torch.arange(1, t.numel() + 1, dtype=t.dtype, device=t.device)).sum())
        for t in tensors
    )
    return [float(v) for v in all_gather_object(fp)]


def weight_spread(model: nn.Module) -> tuple[list[float], float]:
    """Every rank's fingerprint and their largest difference (collective); a warning when ranks
    ended with different weights."""
    prints = weight_fingerprints(model)
    diff = max(prints) - min(prints)
    if diff != 0.0:
        warnings.warn(f"ranks ended with different weights (fingerprints {prints})", stacklevel=3)
    return prints, diff
