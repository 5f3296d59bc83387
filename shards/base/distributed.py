"""Everything distributed, in one place: rank, world size, local rank, device, the process
group, collectives and "local rank 0 first".

The launcher's variables are read here and nowhere else (torchrun, else SLURM, else one
process), so SLURM is honoured by the loader's split, the trainer's process group and the
CLIs' "print the error once" alike. Everything that splits data takes explicit ``rank`` /
``world_size`` (``resolve_rank``) so the split is testable in one process. torch is imported
on first use: the shard builder and its worker processes read ranks without loading it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


# ---------------------------------------------------------------- ranks (no torch)
def env_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun variables, else SLURM, else (0, 1, 0)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def env_local_rank() -> int | None:
    """LOCAL_RANK (torchrun) or SLURM_LOCALID, None when neither launcher set one."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return None


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments win; otherwise the launcher's (torchrun, SLURM); otherwise 0 / 1."""
    env_r, env_w, _ = env_rank()
    r = env_r if rank is None else rank
    w = env_w if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} / world_size {w}: need 0 <= rank < world_size")
    return r, w


def is_main_process() -> bool:
    """Rank 0 (or no launcher): the process that prints messages meant for the user once."""
    return env_rank()[0] == 0


# ---------------------------------------------------------------- device
def cuda_index(local_rank: int | None = None) -> int:
    """This process's GPU index. ``local_rank`` given (the trainer, which owns the process):
    a rank without a GPU is an error. Read from the environment (a loader built by itself):
    falls back to the current device. One rule: a process that sees exactly one GPU (SLURM
    ``--gpus-per-task=1``, a per-rank ``CUDA_VISIBLE_DEVICES``) uses it; otherwise the GPU at
    its local rank."""
    import torch

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
    this process's index (``cuda_index``); ``cuda:N`` and ``cpu`` are taken as given. The one
    place "auto" is decided (trainer, loader, eval, predict, stats, benchmarks)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    return torch.device("cuda", cuda_index(local_rank))


# ---------------------------------------------------------------- process group
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
    """``resolve_device``, set as the current device (before NCCL starts) so collectives and
    object gathers use this rank's GPU."""
    import torch

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
    rank (env:// rendezvous): a 1-GPU torchrun run then takes the N-GPU path (NCCL, DDP).
    nccl on GPU, gloo on CPU, so the same trainer runs in CPU CI."""
    import torch.distributed as dist

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


def _group_up() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def close() -> None:
    import torch.distributed as dist

    if _group_up():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if _group_up():
        dist.barrier()


# ---------------------------------------------------------------- collectives
def world_size() -> int:
    """Ranks in the default process group (1 when none is running)."""
    import torch.distributed as dist

    return dist.get_world_size() if _group_up() else 1


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` from every rank as a list indexed by rank (collective: every rank calls it; in
    one process ``[obj]``). Send CPU tensors: under NCCL the bytes travel through this rank's
    current GPU."""
    import torch.distributed as dist

    n = world_size()
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in one process)."""
    import torch.distributed as dist

    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s Python object on every rank (used for decisions made on rank 0)."""
    import torch.distributed as dist

    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_zero_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on each node's local rank 0, then (its cache filled) on the other ranks.

    A failure on any local rank 0 is raised on every rank, so no rank waits forever."""
    if world_size() == 1:
        return fn()
    first = env_rank()[2] == 0
    out: T | None = None
    err: str | None = None
    if first:
        try:
            out = fn()
        except (ValueError, FileNotFoundError) as e:
            err = str(e)
    bad = next((e for e in all_gather_object(err) if e), None)
    if bad is not None:
        raise ValueError(bad)
    return out if first else fn()  # type: ignore[return-value]
