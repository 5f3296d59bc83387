"""Executors of step 2 on this machine: every pending shard through ``build_shard``, with the
records decoded by one process pool that runs ahead across shard boundaries (so a build of
few shards still uses every core). Array parts use it for their slice of the plan; the Ray
executor (``shards.builder.ray_executor``) runs the same ``build_shard`` in one task per shard.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from itertools import islice

from shards.builder.output import BuildOutput
from shards.builder.plan import ShardContext, ShardPlan
from shards.builder.shard_task import build_shard, shard_jobs
from shards.builder.stats import ShardPart
from shards.builder.workers import DecodePool, decode_inline, decode_pooled


def run_local(
    ctx: ShardContext,
    shards: list[ShardPlan],
    out: BuildOutput,
    *,
    pool: DecodePool | None,
    timeout: float,
    tick: Callable[[int], object] | None = None,
) -> list[ShardPart]:
    """Build ``shards`` in order, decoding in ``pool``'s processes with a per-file ``timeout``
    (``pool=None``: in this process, without a timeout); ``tick(1)`` per record."""
    jobs = [job for s in shards for job in shard_jobs(ctx, s)]
    results = decode_inline(jobs) if pool is None else decode_pooled(jobs, pool.workers, timeout, pool=pool)
    parts = []
    with closing(results):
        for shard in shards:
            mine = islice(results, len(shard.records))
            parts.append(build_shard(ctx, shard, out, mine, tick=tick))
            for _ in mine:  # a shard another driver committed meanwhile: its results are not needed
                pass
    return parts
