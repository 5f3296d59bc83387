"""The one all-gather: any picklable object from every rank, on every rank.

Below train and eval so that both (checkpoint states, gbm features, weight fingerprints,
eval predictions) use the same call; in one process it is ``[obj]``.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def world_size() -> int:
    """Ranks in the default process group (1 when none is running)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` from every rank as a list indexed by rank (collective: every rank calls it).
    Send CPU tensors: under NCCL the bytes travel through this rank's current GPU."""
    n = world_size()
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out
