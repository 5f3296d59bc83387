"""Deadlines instead of hangs, and real reasons instead of tracebacks, where a build waits on
its worker processes or its Ray tasks (issue 28)."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers import decode_faults as faults

import shards.builder.ray_executor as ray_executor
import shards.builder.workers as workers
from shards.builder.output import BuildOutput
from shards.builder.plan import ShardPlan
from shards.cli import main


def test_an_exception_in_a_worker_is_a_reject_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    names = ["a", "raise", "b"]
    for i, name in enumerate(names):
        sf.write(raw / f"audio/{name}.wav", np.full(8000, 0.1 * (i + 1), dtype=np.float32), 8000)
    rows = [{"path": f"audio/{n}.wav", "label": "xy"[i % 2], "split": "train"} for i, n in enumerate(names)]
    pd.DataFrame(rows).to_csv(raw / "labels.csv", index=False)
    monkeypatch.setattr(workers, "process_indexed", faults.raise_on_named)  # in the decode processes
    args = ["build", "folder", "--root", str(raw), "--out", str(tmp_path / "o"), "--quiet", "--workers", "2"]
    assert main(args) == 0
    rejects = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    want = "decode failed: ValueError: bad header field 7"
    assert [(r["path"], r["reason"]) for r in rejects] == [("audio/raise.wav", want)]
    assert "Traceback" not in capfd.readouterr().err  # no child traceback, no retry on a new process


def _in_thread(fn: Any, seconds: float) -> list[Any]:
    """``fn()`` in a thread; [result or exception], or [] when it is still running after ``seconds``."""
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(fn())
        except Exception as e:  # noqa: BLE001 - handed to the test
            got.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return got


def test_a_worker_that_never_gets_ready_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "_serve", faults.hang_before_ready)
    monkeypatch.setattr(workers, "START_TIMEOUT_S", 1.0)
    pool = workers.DecodePool(1)
    try:
        got = _in_thread(lambda: list(workers.run_pooled(abs, [(-1,)], pool, timeout=0.0)), 60)
    finally:
        pool.kill()
    assert got and isinstance(got[0], ValueError), got
    assert "hang before they start (3 in a row, 1 s allowed each)" in str(got[0])
    assert not mp.active_children()


class _Stuck:
    """A process in uninterruptible I/O: SIGKILL does not end it, a join without timeout never returns."""

    pid = 4242

    def kill(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        time.sleep(3600 if timeout is None else min(timeout, 0.2))

    def is_alive(self) -> bool:
        return True


def test_a_killed_worker_stuck_in_io_does_not_block(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers, "KILL_JOIN_S", 0.2)
    w = workers._Worker(mp.get_context("spawn"))
    w.proc.kill()
    w.proc.join()
    w.proc, w.args = _Stuck(), ((0, Path("/mnt/dead/track.flac"), None),)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING):
        assert _in_thread(lambda: w.kill(), 10) == [None]
    said = [r.getMessage() for r in caplog.records]
    assert any("4242 did not exit" in m and "/mnt/dead/track.flac" in m for m in said), said


class _FakeRay:
    """Just enough of ray for ``run_ray``: tasks that never finish."""

    class exceptions:  # noqa: N801 - ray's own name
        RayError = RuntimeError

    def __init__(self) -> None:
        self.cancelled: list[Any] = []

    def is_initialized(self) -> bool:
        return True

    def remote(self, **_: Any) -> Any:
        return lambda fn: type("Task", (), {"remote": staticmethod(lambda *a: object())})

    def wait(self, refs: list[Any], num_returns: int = 1, timeout: float | None = None) -> Any:
        assert timeout is not None, "ray.wait without a deadline blocks forever on a lost task"
        return [], refs

    def cancel(self, ref: Any, force: bool = False) -> None:
        self.cancelled.append(ref)


def test_the_ray_driver_gives_up_on_tasks_that_never_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeRay()
    monkeypatch.setattr(ray_executor, "_ray", lambda: fake)
    monkeypatch.setattr(ray_executor, "TASK_SLACK_S", 0.0)
    shards = [ShardPlan(split="train", index=i, records=[], extra_ids=0) for i in range(7)]
    with pytest.raises(ValueError, match=r"no shard task finished in \d+ s \(still out: train/000000") as e:
        ray_executor.run_ray(None, shards, BuildOutput(tmp_path), address=None, workers=1, timeout=1.0)  # type: ignore[arg-type]
    assert "and 2 more" in str(e.value) and len(fake.cancelled) == 7
