"""Faults for the scale-out tests, injected where a build decodes: a decode that crawls, one
that hangs, one that kills its Ray worker once. They replace ``shards.builder.workers.process_indexed``
(the function a decode process runs), so they reach spawned decode processes (pickled by
reference: this module must be importable there, ``tests/`` on PYTHONPATH) and, through
``ray_setup`` (a Ray ``worker_process_setup_hook``), Ray workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import shards.builder.estimate as estimate
import shards.builder.workers as workers

REAL_DECODE = workers.process_indexed
REAL_ESTIMATE = estimate.estimate_record
KILL_MARKER = ".kill-once"
"""Beside an audio file named ``*killme*``: the decode of that file kills its Ray worker once."""


def slow(job: workers.Job) -> workers.Result:
    """A decode that takes at least 0.75 s (a build slow enough to be killed mid-way)."""
    time.sleep(0.75)
    return REAL_DECODE(job)


def hang_on_named(job: workers.Job) -> workers.Result:
    """A decode that never returns for a file whose name says "hang" (a stale network mount)."""
    if "hang" in str(job[1]):
        time.sleep(3600)
    return REAL_DECODE(job)


def hanging_header(rec: Any, layout: estimate.Layout) -> estimate.Estimate:
    """A header read that never returns for a file whose name says "hang"."""
    if "hang" in str(rec.audio):
        time.sleep(3600)
    return REAL_ESTIMATE(rec, layout)


def kill_worker_once(job: workers.Job) -> workers.Result:
    """Runs in the decode process of a Ray worker: for a ``*killme*`` file with its marker
    beside it, remove the marker and SIGKILL the Ray worker (this process's parent), mid-shard."""
    marker = Path(f"{job[1]}{KILL_MARKER}")
    if "killme" in str(job[1]) and marker.exists():
        marker.unlink()
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    return REAL_DECODE(job)


def ray_setup() -> None:
    """Ray ``worker_process_setup_hook``: every Ray worker decodes through ``kill_worker_once``."""
    workers.process_indexed = kill_worker_once


def slow_cli(argv: list[str]) -> int:
    """``python -m shards`` whose decoding crawls (run in a subprocess that the test kills)."""
    from shards.cli import main

    workers.process_indexed = slow
    return main(argv)


def raise_on_named(job: workers.Job) -> workers.Result:
    """A decode that raises (a bug or an odd file inside a library) for a file named "raise"."""
    if "raise" in str(job[1]):
        raise ValueError("bad header field 7")
    return REAL_DECODE(job)


def hang_before_ready(conn: Any) -> None:
    """A worker process whose start never finishes (an import stuck on a dead mount)."""
    time.sleep(3600)
