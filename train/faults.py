"""A shard that goes bad under a running job: stop with one line naming it and the step.

The loader turns a reader error from a truncated or damaged shard into
``shards.format.verify.BadShard``; the Trainer hands it here. One process: the run is checkpointed
first, so nothing trained is lost. Under DDP the other ranks are already waiting in the
step's collectives and cannot join a save: the line names the last checkpoint written
before it, and only the rank that read the shard knows it, so that rank prints it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shards.format import BadShard

__all__ = ["BadShard", "stop_on_bad_shard"]

if TYPE_CHECKING:
    from train.trainer import Trainer


def stop_on_bad_shard(trainer: Trainer, e: BadShard) -> BadShard:
    """Checkpoint what can be (one process), then the one-line error to raise."""
    info = trainer.info
    saved = None
    if not info.distributed:
        try:
            trainer.save()
        except Exception:  # noqa: BLE001 - the shard is the news; the line says no checkpoint was written
            pass
        else:
            saved = trainer.checkpointer.folder / f"step_{trainer.step:08d}.pt"
    latest = saved or trainer.checkpointer.latest()
    where = f"step {trainer.step}" + (f", rank {info.rank}" if info.distributed else "")
    kept = (
        f"checkpoint {latest} {'written' if saved else 'is the last one'}"
        if latest is not None
        else "no checkpoint written yet"
    )
    # the fault's own advice where it has one (a stalled or signalled shard-cache wait)
    advice = getattr(e, "advice", None) or (
        "rebuild or copy the shard again (python -m shards verify lists every bad one), then resume "
        "with checkpoint.resume=auto"
    )
    err = BadShard(e.shard, f"{e.problem}; the run stopped at {where} ({kept}): {advice}")
    err.every_rank = info.distributed
    return err
