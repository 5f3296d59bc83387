"""Which device this process computes on: ``auto``/``cpu``/``cuda``/``cuda:N`` -> ``torch.device``.

One rule for the loader and the trainer: a process that sees exactly one GPU (SLURM
``--gpus-per-task=1``, a per-rank ``CUDA_VISIBLE_DEVICES``) uses it; otherwise the GPU at
its local rank (torchrun ``LOCAL_RANK`` or SLURM ``SLURM_LOCALID``).
"""

from __future__ import annotations

import torch

from shards.ranks import env_local_rank


def cuda_index(local_rank: int | None = None) -> int:
    """This process's GPU index. ``local_rank`` given (the trainer, which owns the process):
    a rank without a GPU is an error. Read from the environment (a loader built by itself):
    falls back to the current device."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    strict = local_rank is not None
    local = local_rank if strict else env_local_rank()
    if local is not None and 0 <= local < count:
        return local
    if strict:
        raise ValueError(
            f"local rank {local_rank} has no GPU: this process sees {count} CUDA devices; "
            "start at most one process per visible GPU (torchrun --nproc_per_node)"
        )
    return torch.cuda.current_device()


def resolve_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is present, else cpu; a bare ``cuda`` gets
    this process's index (``cuda_index``); ``cuda:N`` and ``cpu`` are taken as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    return torch.device("cuda", cuda_index(local_rank))
