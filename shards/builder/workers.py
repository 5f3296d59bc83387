"""Decoding in worker processes: one record's audio (or images) per job, results in job order,
and a build that survives a worker dying on a file or hanging on it.

Each worker is one spawned process with a pipe of its own, running one job at a time, so the
parent always knows which file a process was on: a process that dies (a segfault in a codec
library, the OOM killer) is replaced and its file tried once more on a fresh one (a second
death makes it a reject, ``WORKER_DIED``); a file still running after the timeout (a read
stalled on a dead network mount) has its process killed and becomes a reject (``timed_out``).
``concurrent.futures.ProcessPoolExecutor`` cannot do either safely: its workers share one
result pipe, so killing one mid-write leaves the pool waiting forever for the rest of a
message, and a broken pool does not say which job broke it.

Kept apart from the builder's state so a ``spawn``ed worker imports only this, the decoders
and the record types: no torch, no builder.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from shards.builder.audio import AudioSpec, Encoded, transcode
from shards.builder.images import EncodedImages, ImageSpec, pack_images

WORKER_DIED = "decode failed: the worker process died on this file (a crash inside the audio library)"
Job = tuple[int, Any, AudioSpec | ImageSpec]
Result = tuple[int, Encoded | EncodedImages | str]
AHEAD = 4  # jobs given out ahead of the next result to yield, per worker (results hold encoded audio)
_START_FAILURES = 3  # consecutive worker processes dying before they are ready: give up


def process_indexed(job: Job) -> Result:
    """A worker's job: one record's audio or images, with the record index kept."""
    i, payload, spec = job
    if isinstance(spec, ImageSpec):
        return i, pack_images(payload, spec)
    return i, transcode(payload, spec)


def decode_inline(jobs: list[Job]) -> Generator[Result]:
    """In this process (``workers=1``): no process to start, tracebacks stay readable."""
    for job in jobs:
        yield process_indexed(job)


def timed_out(seconds: float) -> str:
    """The reject reason of a file whose decoding did not finish in time."""
    return f"decode timed out after {seconds:g} s (a stalled read, e.g. a stale network mount?)"


def _serve(conn: Connection) -> None:
    """A worker process: say it is ready (its imports done), then run ``(fn, args)`` messages."""
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        fn, args = msg
        conn.send(("done", fn(*args)))


@dataclass(frozen=True)
class Fault:
    """What became of a call whose process died twice (``"died"``) or ran past the timeout."""

    kind: str
    args: tuple[Any, ...]


class _Worker:
    """One process and its pipe; ``pos``/``args`` is the call it is running (None: idle)."""

    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="shards-worker")
        self.proc.start()
        child.close()
        self.ready = False
        self.pos: int | None = None
        self.args: tuple[Any, ...] | None = None
        self.since = 0.0

    def give(self, fn: Callable[..., Any], pos: int, args: tuple[Any, ...]) -> None:
        self.pos, self.args, self.since = pos, args, time.monotonic()
        try:  # ``fn`` is pickled by reference: a replaced module function (tests inject faults so) travels
            self.conn.send((fn, args))
        except OSError:  # it just died: its pipe reports that next, and the call is retried
            pass

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class DecodePool:
    """Worker processes that can be killed one by one and replaced, and kept across calls (the
    plan's header reads and the decoding share one; a Ray worker keeps one for all its shard
    tasks: spawning costs ~2 s there)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = mp.get_context("spawn")
        self._all: list[_Worker] = []
        self._start_failures = 0

    def fill(self) -> None:
        while len(self._all) < self.workers:
            self._all.append(_Worker(self._ctx))

    def idle(self) -> list[_Worker]:
        return [w for w in self._all if w.ready and w.pos is None]

    def busy(self) -> list[_Worker]:
        return [w for w in self._all if w.pos is not None]

    def replace(self, w: _Worker) -> None:
        w.kill()
        self._all.remove(w)
        self.fill()

    def kill(self, only_busy: bool = False) -> None:
        """Stop processes now, whatever they are doing (all, or those running a call)."""
        for w in self.busy() if only_busy else list(self._all):
            w.kill()
            self._all.remove(w)

    def events(self, timeout: float) -> list[tuple[_Worker, Any]]:
        """Wait for messages: ``(worker, ("ready"|"done", value))``, ``(worker, None)`` for a
        process that died, ``(worker, "timeout")`` for one running a call past ``timeout``."""
        self.fill()
        now = time.monotonic()
        late = [w for w in self.busy() if timeout and now - w.since > timeout]
        if late:
            return [(w, "timeout") for w in late]
        left = [timeout - (now - w.since) for w in self.busy()] if timeout else []
        conns = wait([w.conn for w in self._all], timeout=max(0.0, min(left)) if left else None)
        out: list[tuple[_Worker, Any]] = []
        for w in self._all:
            if w.conn in conns:
                try:
                    out.append((w, w.conn.recv()))
                except (EOFError, OSError):  # died (mid-message or between them)
                    out.append((w, None))
        return out

    def started(self, w: _Worker) -> None:
        w.ready, self._start_failures = True, 0

    def died_starting(self) -> None:
        self._start_failures += 1
        if self._start_failures >= _START_FAILURES:
            raise RuntimeError(f"worker processes die before they start ({_START_FAILURES} in a row)")


def run_pooled(
    fn: Callable[..., Any], calls: list[tuple[Any, ...]], pool: DecodePool, timeout: float = 0.0
) -> Generator[Any]:
    """``fn(*args)`` for every ``args`` in ``calls``, in ``pool``'s processes, results in order. A
    call whose process dies is tried once more on a new process, then is ``Fault("died")``; one
    running more than ``timeout`` seconds (0: no limit; counted from when its process, ready,
    got it) has its process killed and is ``Fault("timeout")``. Idle processes stay in ``pool``."""
    todo: deque[tuple[int, tuple[Any, ...]]] = deque(enumerate(calls))
    done: dict[int, Any] = {}
    tries: dict[int, int] = {}
    nxt = 0
    try:
        while nxt < len(calls):
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1
            if nxt >= len(calls):
                break
            for w in pool.idle():
                if todo and todo[0][0] < nxt + AHEAD * pool.workers:
                    w.give(fn, *todo.popleft())
            for w, event in pool.events(timeout):
                _handle(pool, w, event, todo, done, tries)
    finally:
        pool.kill(only_busy=True)  # a call still running is not wanted any more


def _handle(
    pool: DecodePool,
    w: _Worker,
    event: Any,
    todo: deque[tuple[int, tuple[Any, ...]]],
    done: dict[int, Any],
    tries: dict[int, int],
) -> None:
    """One worker event: a result, readiness, a death (retry once) or a timeout."""
    if isinstance(event, tuple) and event[0] == "ready":
        pool.started(w)
        return
    if isinstance(event, tuple):  # ("done", result)
        assert w.pos is not None
        done[w.pos] = event[1]
        w.pos, w.args = None, None
        return
    pos, args = w.pos, w.args
    pool.replace(w)
    if pos is None or args is None:  # died while idle or starting
        if not w.ready:
            pool.died_starting()
        return
    tries[pos] = tries.get(pos, 0) + 1
    if event == "timeout":
        done[pos] = Fault("timeout", args)
    elif tries[pos] < 2:
        todo.appendleft((pos, args))  # once more, on a fresh process
    else:
        done[pos] = Fault("died", args)


def decode_pooled(
    jobs: list[Job], workers: int, timeout: float = 0.0, *, pool: DecodePool | None = None
) -> Generator[Result]:
    """``process_indexed`` over ``jobs`` in ``workers`` processes (those of ``pool`` when given,
    kept for the next call), results in job order; a file whose process dies twice is
    ``WORKER_DIED``, one still decoding after ``timeout`` seconds is ``timed_out``."""
    procs = pool or DecodePool(workers)
    try:
        for r in run_pooled(process_indexed, [(job,) for job in jobs], procs, timeout):
            if isinstance(r, Fault):
                job = r.args[0]
                yield job[0], WORKER_DIED if r.kind == "died" else timed_out(timeout)
            else:
                yield r
    finally:
        if pool is None:
            procs.kill()
