"""Decoding in worker processes: one record's audio (or images) per job, results in job order,
and a build that survives a worker dying on a file.

Kept apart from the builder's state so a ``spawn`` pool imports only this, the decoders and
the record types: no torch, no builder.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from shards.audio import AudioSpec, Encoded, transcode
from shards.images import EncodedImages, ImageSpec, pack_images

WORKER_DIED = "decode failed: the worker process died on this file (a crash inside the audio library)"
Job = tuple[int, Any, AudioSpec | ImageSpec]
Result = tuple[int, Encoded | EncodedImages | str]


def process_indexed(job: Job) -> Result:
    """Pool entry point: one record's audio or images, with the record index kept."""
    i, payload, spec = job
    if isinstance(spec, ImageSpec):
        return i, pack_images(payload, spec)
    return i, transcode(payload, spec)


def decode_inline(jobs: list[Job]) -> Generator[Result]:
    """In this process (``workers=1``): no pool to start, tracebacks stay readable."""
    for job in jobs:
        yield process_indexed(job)


def decode_stream(jobs: list[Job], workers: int, timeout: float) -> Generator[Result]:
    """Results of ``jobs`` in job order: in this process when ``workers == 1`` (no timeout, no
    crash isolation: for debugging), else in ``workers`` processes with a per-file ``timeout``."""
    return decode_inline(jobs) if workers == 1 else decode_pooled(jobs, workers, timeout)


def timed_out(seconds: float) -> str:
    """The reject reason of a file whose decoding did not finish in time."""
    return f"decode timed out after {seconds:g} s (a stalled read, e.g. a stale network mount?)"


def decode_pooled(jobs: list[Job], workers: int, timeout: float = 0.0) -> Generator[Result]:
    """``process_indexed`` over ``jobs`` in ``workers`` processes, results in job order.

    A worker that dies (a segfault in a codec library, the OOM killer) breaks the whole
    pool (``BrokenProcessPool``; ``multiprocessing.Pool`` would wait for it forever): the
    jobs that were in flight are then re-run one at a time in a fresh one-process pool, so
    the file that kills its worker again becomes a reject (``WORKER_DIED``), the others
    are written, and a new pool takes the rest. A job still running ``timeout`` seconds
    (0: no limit) after it became the oldest in flight (jobs start in order, so it has run
    at least that long) is a reject (``timed_out``): the pool's processes are killed and
    the other unfinished jobs go to a new pool.
    """
    ctx = mp.get_context("spawn")
    pending: deque[Job] = deque(jobs)
    flight: deque[tuple[Job, Future[Result]]] = deque()
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        while pending or flight:
            while pending and len(flight) < 4 * workers:  # bounded: results hold encoded audio
                job = pending.popleft()
                flight.append((job, pool.submit(process_indexed, job)))
            job, fut = flight.popleft()
            try:
                result = fut.result(timeout=timeout or None)
            except FuturesTimeout:
                _kill(pool)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                flight = deque(
                    (j, f if _succeeded(f) else pool.submit(process_indexed, j)) for j, f in flight
                )
                yield job[0], timed_out(timeout)
                continue
            except BrokenProcessPool:
                stuck = [(job, fut), *flight]
                flight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _one_by_one(stuck, ctx, timeout)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                continue
            yield result
    finally:
        _kill(pool)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, whatever its workers are doing (a hung decode never returns)."""
    for proc in list((pool._processes or {}).values()):  # no public way before Python 3.14
        proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _succeeded(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _one_by_one(entries: list[tuple[Job, Future[Result]]], ctx: Any, timeout: float) -> Iterator[Result]:
    """Results of the jobs a broken pool was running, in order: those that finished as they
    came, the others one at a time in a one-process pool; a job whose process dies again
    is ``WORKER_DIED``, one that runs past ``timeout`` is ``timed_out``."""
    solo: ProcessPoolExecutor | None = None
    try:
        for job, fut in entries:
            if _succeeded(fut):
                yield fut.result()
                continue
            solo = solo or ProcessPoolExecutor(1, mp_context=ctx)
            try:
                yield solo.submit(process_indexed, job).result(timeout=timeout or None)
            except (BrokenProcessPool, FuturesTimeout) as e:
                _kill(solo)
                solo = None
                yield job[0], WORKER_DIED if isinstance(e, BrokenProcessPool) else timed_out(timeout)
    finally:
        if solo is not None:
            _kill(solo)
