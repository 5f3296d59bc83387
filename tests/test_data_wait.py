"""The data-wait telemetry: what each rank waited for its batches, and how the progress line says it."""

from __future__ import annotations

import time
from collections.abc import Iterator

from train.data_wait import DataWait, wait_postfix


def _slow(n: int, seconds: float) -> Iterator[int]:
    for i in range(n):
        time.sleep(seconds)
        yield i


def test_report_counts_the_wait_for_every_batch_and_resets() -> None:
    wait = DataWait()
    assert list(wait.timed(_slow(4, 0.01))) == [0, 1, 2, 3]
    report = wait.report()  # one process: the gather is this rank alone
    assert report["data/slowest_rank"] == 0
    assert report["data/wait_ms/rank0"] >= 10.0  # each next() slept 10 ms at least
    assert report["data/wait_ms_mean"] == report["data/wait_ms_max"] == report["data/wait_ms/rank0"]
    assert wait.report()["data/wait_ms_mean"] == 0.0  # counters reset by the report


def test_postfix_names_the_slowest_rank_only_when_there_are_several() -> None:
    one = {
        "data/wait_ms/rank0": 3.21,
        "data/wait_ms_mean": 3.21,
        "data/wait_ms_max": 3.21,
        "data/slowest_rank": 0,
    }
    assert wait_postfix(one) == "3.2ms"
    two = {"data/wait_ms/rank0": 1.0, "data/wait_ms/rank1": 7.9, "data/wait_ms_mean": 4.45,
           "data/wait_ms_max": 7.9, "data/slowest_rank": 1}  # fmt: skip
    assert wait_postfix(two) == "4.5ms (slowest r1 7.9ms)"
