"""Decoding in worker processes: one record's audio (or images) per job, results in job order,
and a build that survives a worker dying on a file.

Kept apart from the builder's state so a ``spawn`` pool imports only this, the decoders and
the record types: no torch, no builder.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
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


def ready_pid() -> int:
    """Warm-up job: answers once this process has imported the decoders (briefly busy, so
    the warm-up calls spread over the pool's processes)."""
    time.sleep(0.01)
    return os.getpid()


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


class DecodePool:
    """A pool of spawned decode processes that can be killed and replaced (a worker hung on a
    file never returns), and kept across calls: a Ray worker keeps one for all its shard
    tasks, so a process is spawned once per worker rather than once per shard."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        """The running pool; a new one is started and warmed up first (every process has
        imported the decoders), so a decode timeout never counts a process's start-up."""
        if self._pool is None:
            pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
            ready: set[int] = set()
            for _ in range(100):  # rounds until every process has answered once
                ready |= {f.result() for f in [pool.submit(ready_pid) for _ in range(self.workers)]}
                if len(ready) >= self.workers:
                    break
            self._pool = pool
        return self._pool

    def kill(self) -> None:
        """Stop the processes now, whatever they are doing; the next ``get`` starts new ones."""
        if self._pool is not None:
            _kill(self._pool)
            self._pool = None


def decode_pooled(
    jobs: list[Job], workers: int, timeout: float = 0.0, *, pool: DecodePool | None = None
) -> Generator[Result]:
    """``process_indexed`` over ``jobs`` in ``workers`` processes (those of ``pool`` when given:
    kept for the next call unless something went wrong), results in job order.

    A worker that dies (a segfault in a codec library, the OOM killer) breaks the whole
    pool (``BrokenProcessPool``; ``multiprocessing.Pool`` would wait for it forever): the
    jobs that were in flight are then re-run one at a time in a fresh one-process pool, so
    the file that kills its worker again becomes a reject (``WORKER_DIED``), the others
    are written, and a new pool takes the rest. A job still running ``timeout`` seconds
    (0: no limit) after it became the oldest in flight (jobs start in order, so it has run
    at least that long) is a reject (``timed_out``): the pool's processes are killed and
    the other unfinished jobs go to a new pool.
    """
    procs = pool or DecodePool(workers)
    pending: deque[Job] = deque(jobs)
    flight: deque[tuple[Job, Future[Result]]] = deque()
    finished = False
    try:
        while pending or flight:
            while pending and len(flight) < 4 * procs.workers:  # bounded: results hold encoded audio
                job = pending.popleft()
                flight.append((job, procs.get().submit(process_indexed, job)))
            job, fut = flight.popleft()
            try:
                result = fut.result(timeout=timeout or None)
            except FuturesTimeout:
                procs.kill()
                flight = deque(
                    (j, f if _succeeded(f) else procs.get().submit(process_indexed, j)) for j, f in flight
                )
                yield job[0], timed_out(timeout)
                continue
            except BrokenProcessPool:
                stuck = [(job, fut), *flight]
                flight.clear()
                procs.kill()
                yield from _one_by_one(stuck, timeout)
                continue
            finished = not pending and not flight  # a consumer may stop at the last result
            yield result
        finished = True
    finally:
        if pool is None or not finished:
            procs.kill()


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, whatever its workers are doing (a hung decode never returns)."""
    for proc in list((pool._processes or {}).values()):  # no public way before Python 3.14
        proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _succeeded(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _one_by_one(entries: list[tuple[Job, Future[Result]]], timeout: float) -> Iterator[Result]:
    """Results of the jobs a broken pool was running, in order: those that finished as they
    came, the others one at a time in a one-process pool; a job whose process dies again
    is ``WORKER_DIED``, one that runs past ``timeout`` is ``timed_out``."""
    solo = DecodePool(1)
    try:
        for job, fut in entries:
            if _succeeded(fut):
                yield fut.result()
                continue
            try:
                yield solo.get().submit(process_indexed, job).result(timeout=timeout or None)
            except (BrokenProcessPool, FuturesTimeout) as e:
                solo.kill()
                yield job[0], WORKER_DIED if isinstance(e, BrokenProcessPool) else timed_out(timeout)
    finally:
        solo.kill()
