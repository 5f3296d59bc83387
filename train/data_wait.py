"""Data-wait telemetry: how long each rank's step waited for its next batch, and which rank waits most.

A rank whose input is slow (a cold shard cache, a slow disk, an overloaded store) makes every
other rank wait in the next collective, so the step time alone cannot say who is to blame.
Each rank times only its own ``next(loader)``; at every log step one all-gather brings the
ranks' mean waits together, and the log line, ``metrics.jsonl`` and TensorBoard show them with
the slowest rank named.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from shards.base import distributed


class DataWait:
    """Times the waits for the next batch on this rank; :meth:`report` is collective."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, each ``next`` timed (wall clock on the host: what the step waited)."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - t0
            self.batches += 1
            yield batch

    def report(self) -> dict[str, float]:
        """Every rank's mean wait per batch since the last report (ms), their mean and max, and
        the slowest rank; resets the counters. Every rank must call it at the same step."""
        mine = 1000.0 * self.seconds / self.batches if self.batches else 0.0
        self.seconds, self.batches = 0.0, 0
        waits = [float(w) for w in distributed.all_gather_object(mine)]
        slowest = max(range(len(waits)), key=waits.__getitem__)
        out = {f"data/wait_ms/rank{r}": round(w, 3) for r, w in enumerate(waits)}
        out |= {
            "data/wait_ms_mean": round(sum(waits) / len(waits), 3),
            "data/wait_ms_max": round(waits[slowest], 3),
            "data/slowest_rank": slowest,
        }
        return out


def wait_postfix(report: dict[str, float]) -> str:
    """``"3.2ms (slowest r1 7.9ms)"`` for the progress line; ``"3.2ms"`` with one rank."""
    mean = f"{report['data/wait_ms_mean']:.1f}ms"
    if sum(k.startswith("data/wait_ms/rank") for k in report) < 2:
        return mean
    return f"{mean} (slowest r{int(report['data/slowest_rank'])} {report['data/wait_ms_max']:.1f}ms)"
