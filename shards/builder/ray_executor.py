"""Step 2 on Ray: one task per shard, the same ``build_shard`` as on the local pool.

Audio never passes through Ray's object store (binary payloads there spill and run out of
memory: ray #26441, #48042, #65544): a task gets its shard's plan (paths and labels, a few
KB), reads the raw files itself, writes its shard to the output and returns its small part.
Inside a task the records are decoded in one child process, so a file that crashes its codec
or hangs past the timeout is a reject exactly as on the local pool. A task whose worker
dies (node lost, OOM killer, SIGKILL) is retried by Ray; the shard is rebuilt from the
start and is the same bytes. The driver's wait has a deadline: when no task has finished
for as long as the slowest shard may take (``task_deadline``), the tasks still out are
cancelled and named in one line. Ray is an optional extra (``pip install .[ray]``) and is
imported only here.
"""

from __future__ import annotations

import importlib.util
import signal
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from shards.base.errors import first_line
from shards.builder.output import BuildOutput
from shards.builder.plan import ShardContext, ShardPlan
from shards.builder.shard_task import build_shard, shard_jobs
from shards.builder.stats import ShardPart
from shards.builder.workers import DecodePool, decode_pooled

RETRIES = 3
"""Ray retries of a shard task whose worker died (node lost, OOM killer, SIGKILL)."""
TASK_SLACK_S = 600.0
"""Beyond its records' decode timeouts, what a shard task may take (scheduling, a retry,
writing and uploading its shard)."""


def task_deadline(shards: list[ShardPlan], timeout: float) -> float | None:
    """Seconds without any shard task finishing after which the wait gives up: the largest
    shard's records each at the decode timeout, plus ``TASK_SLACK_S``, for each of Ray's
    tries; None when the decode timeout is off (0)."""
    if not timeout:
        return None
    return (RETRIES + 1) * (timeout * max(len(s.records) for s in shards) + TASK_SLACK_S)


_DECODER = DecodePool(1)
"""This Ray worker's decode process, kept across its shard tasks (spawning one costs ~2 s in a
Ray worker, which re-imports Ray's worker script in the child)."""


def ray_shard_task(ctx: ShardContext, shard: ShardPlan, where: str, timeout: float) -> ShardPart:
    """What runs in a Ray worker: decode the shard's records in a child process, write the shard."""
    results = decode_pooled(shard_jobs(ctx, shard), 1, timeout, pool=_DECODER)
    with closing(results):
        return build_shard(ctx, shard, BuildOutput(where), results)


def kept_signal_handlers() -> Callable[[], None]:
    """A function putting back this process's SIGTERM/SIGINT handlers as they are now:
    ``ray.init`` installs its own and ``ray.shutdown`` leaves them (a caller's, e.g. a
    trainer's checkpoint-on-SIGTERM, would be lost)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    return restore


def _ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise ValueError("executor: ray is not installed in this environment; pip install .[ray]")
    import ray

    return ray


def _connect(ray: Any, address: str | None, workers: int) -> None:
    """Join the cluster at ``address``, or start Ray here with ``workers`` CPUs; one line if it fails."""
    kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
    try:
        ray.init(**kwargs, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ValueError(f"ray_address: cannot start or join {where}: {first_line(e)}") from None


def _reason(e: BaseException) -> str:
    """One line for a failed task: the task's own exception when Ray carries it."""
    cause = getattr(e, "cause", None)
    return first_line(cause if isinstance(cause, BaseException) else e)


def _stuck(
    ray: Any, out: BuildOutput, waiting: list[Any], refs: dict[Any, ShardPlan], deadline: Any
) -> ValueError:
    """Cancel the tasks still out; the one line naming them."""
    for ref in waiting:
        ray.cancel(ref, force=True)
    names = [refs[r].name for r in waiting]
    return ValueError(
        f"{out}: no shard task finished in {deadline:.0f} s (still out: {', '.join(names[:5])}"
        f"{f' and {len(names) - 5} more' if len(names) > 5 else ''}); cancelled them, the shards "
        "already built stay committed: check the Ray cluster's nodes, then run the same command again"
    )


def run_ray(
    ctx: ShardContext,
    shards: list[ShardPlan],
    out: BuildOutput,
    *,
    address: str | None,
    workers: int,
    timeout: float,
    tick: Callable[[int], object] | None = None,
) -> list[ShardPart]:
    """Build ``shards`` as Ray tasks on the cluster at ``address`` (None: a Ray started here
    with ``workers`` CPUs, or the one this process already joined); ``tick(n)`` per finished
    shard of n records. Failed tasks are one error naming them (the others stay committed)."""
    ray = _ray()
    started = not ray.is_initialized()
    handlers = kept_signal_handlers()
    if started:
        _connect(ray, address, workers)
    try:
        # a dead worker is retried; an exception (the output not writable...) would only fail again
        task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(ray_shard_task)
        where = str(out.where)
        refs = {task.remote(ctx, s, where, timeout): s for s in shards}
        parts, failed = [], []
        waiting = list(refs)
        deadline = task_deadline(shards, timeout)
        last = time.monotonic()
        while waiting:
            left = None if deadline is None else max(0.0, deadline - (time.monotonic() - last))
            done, waiting = ray.wait(waiting, num_returns=1, timeout=left)
            if not done:
                raise _stuck(ray, out, waiting, refs, deadline)
            last = time.monotonic()
            shard = refs[done[0]]
            try:
                parts.append(ray.get(done[0]))
            except ray.exceptions.RayError as e:
                failed.append(f"{shard.name}: {_reason(e)}")
            if tick is not None:
                tick(len(shard.records))
    finally:
        if started:
            ray.shutdown()
            handlers()
    if failed:
        raise ValueError(
            f"{out}: {len(failed)} shard task(s) failed ({failed[0]}"
            f"{f'; and {len(failed) - 1} more' if len(failed) > 1 else ''}); the other shards are "
            "committed: run the same command again to retry these"
        )
    return parts
