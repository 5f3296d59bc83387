"""Which rank of how many this process is: explicit arguments, torchrun, SLURM, else 0 of 1.

The one place the launcher's variables are read (the loader's split, the trainer's process
group and the CLIs' "print the error once" all ask here), so SLURM is honoured everywhere.
"""

from __future__ import annotations

import os


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
