"""Process-group setup in one place: torchrun or SLURM env, nccl on GPU, gloo on CPU.

Everything that splits data takes explicit ``rank``/``world_size``; this module is
only where those numbers come from, so the same trainer runs in one CPU process, under
``torchrun --nproc_per_node=N`` and in multi-node jobs (torchrun rendezvous flags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipelines.devices import resolve_device
from shards.ranks import env_rank


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    joined: bool = False
    """In a process group: always under torchrun, even with one rank."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Take the multi-rank code path (DDP, collectives): several ranks, or one that joined a group."""
        return self.world_size > 1 or self.joined


def pick_device(want: str, local_rank: int) -> torch.device:
    """auto -> cuda:LOCAL_RANK when CUDA is present, else cpu (``pipelines.devices``); set as
    the current device (before NCCL starts) so collectives and object gathers use this rank's GPU."""
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is visible")
    dev = resolve_device(want, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index)
    return dev


def rendezvous_env(rank: int, world: int) -> None:
    """Fill what env:// needs when SLURM started the processes without torchrun.

    One node: MASTER_ADDR/PORT default to 127.0.0.1:29500. Several nodes: MASTER_ADDR
    must be exported by the job script (guessing it would hang every rank)."""
    env = os.environ
    if "MASTER_ADDR" not in env:
        nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)
        if nodes > 1:
            raise ValueError(
                f"SLURM job on {nodes} nodes without torchrun: export MASTER_ADDR (e.g. "
                "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)) and MASTER_PORT, "
                "or launch with torchrun"
            )
        env["MASTER_ADDR"] = "127.0.0.1"
    env.setdefault("MASTER_PORT", "29500")
    env.setdefault("RANK", str(rank))
    env.setdefault("WORLD_SIZE", str(world))


def launched_with_rendezvous() -> bool:
    """A launcher (torchrun) set RANK, WORLD_SIZE and where to meet (MASTER_ADDR/PORT)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group when launched with world_size > 1, or by torchrun even with one
    rank (env:// rendezvous): a 1-GPU torchrun run then takes the N-GPU path (NCCL, DDP)."""
    rank, world, local = env_rank()
    join = world > 1 or launched_with_rendezvous()
    if join and not dist.is_initialized():
        rendezvous_env(rank, world)  # before any CUDA work: a config mistake fails fast
    dev = pick_device(device, local)
    if join and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(
            backend, timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world, **kwargs
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, joined=join)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s Python object on every rank (used for decisions made on rank 0)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
