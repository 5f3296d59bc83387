"""Keeping ranks' models identical: rank 0's buffers everywhere, and a check that they agree.

DDP averages gradients, so parameters stay in step by construction; buffers (BatchNorm
statistics) are only synced at the next forward, and a bug or a non-deterministic kernel can
still let ranks drift. Both run at epoch ends and at the end of a run, never per step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from shards.base.distributed import all_gather_object


def broadcast_buffers(modules: list[nn.Module]) -> None:
    """Rank 0's buffers in every module, on every rank (collective)."""
    for module in modules:
        for buf in module.buffers():
            torch.distributed.broadcast(buf, src=0)


def weight_fingerprints(model: nn.Module) -> list[float]:
    """Every rank's float64 position-weighted sum of ``model``'s tensors (collective): equal
    fingerprints mean equal weights, to float64 rounding."""
    tensors = [p.detach().double() for p in model.state_dict().values() if torch.is_tensor(p)]
    fp = sum(
        float((t.flatten() * torch.arange(1, t.numel() + 1, dtype=t.dtype, device=t.device)).sum())
        for t in tensors
    )
    return [float(v) for v in all_gather_object(fp)]
