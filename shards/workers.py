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


def decode_pooled(jobs: list[Job], workers: int) -> Generator[Result]:
    """``process_indexed`` over ``jobs`` in ``workers`` processes, results in job order.

    A worker that dies (a segfault in a codec library, the OOM killer) breaks the whole
    pool (``BrokenProcessPool``; ``multiprocessing.Pool`` would wait for it forever): the
    jobs that were in flight are then re-run one at a time in a fresh one-process pool, so
    the file that kills its worker again becomes a reject (``WORKER_DIED``), the others
    are written, and a new pool takes the rest.
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
                result = fut.result()
            except BrokenProcessPool:
                stuck = [(job, fut), *flight]
                flight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _one_by_one(stuck, ctx)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                continue
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _succeeded(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _one_by_one(entries: list[tuple[Job, Future[Result]]], ctx: Any) -> Iterator[Result]:
    """Results of the jobs a broken pool was running, in order: those that finished as they
    came, the others one at a time in a one-process pool; a job whose process dies again
    is ``WORKER_DIED``."""
    solo: ProcessPoolExecutor | None = None
    try:
        for job, fut in entries:
            if _succeeded(fut):
                yield fut.result()
                continue
            solo = solo or ProcessPoolExecutor(1, mp_context=ctx)
            try:
                yield solo.submit(process_indexed, job).result()
            except BrokenProcessPool:
                solo.shutdown(wait=True)
                solo = None
                yield job[0], WORKER_DIED
    finally:
        if solo is not None:
            solo.shutdown(wait=True)
