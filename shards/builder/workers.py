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

Every wait has a deadline: an exception inside a call is that call's result (a reject with
its real reason, never a dead process); a process not ready ``START_TIMEOUT_S`` after it was
started counts as one that died starting; a killed process that does not exit within
``KILL_JOIN_S`` (uninterruptible I/O on a dead mount) is left behind with one warning naming
its file, instead of blocking the build.

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

from shards.base.errors import first_line
from shards.base.logs import get_logger
from shards.builder.audio import AudioSpec, Encoded, transcode
from shards.builder.images import EncodedImages, ImageSpec, pack_images

WORKER_DIED = "decode failed: the worker process died on this file (a crash inside the audio library)"
Job = tuple[int, Any, AudioSpec | ImageSpec]
Result = tuple[int, Encoded | EncodedImages | str]
AHEAD = 4  # jobs given out ahead of the next result to yield, per worker (results hold encoded audio)
_START_FAILURES = 3  # consecutive worker processes dying before they are ready: give up
START_TIMEOUT_S = 120.0
"""A worker process not ready this long after its start (its imports hang) is replaced."""
KILL_JOIN_S = 10.0
"""How long a killed worker process may take to exit before it is left behind."""
log = get_logger("shards.workers")


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


def failed(reason: str) -> str:
    """The reject reason of a file whose call raised an exception in its worker."""
    return f"decode failed: {reason}"


def _serve(conn: Connection) -> None:
    """A worker process: say it is ready (its imports done), then run ``(fn, args)`` messages;
    a call that raises answers ``("error", one line)`` and the process goes on."""
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        fn, args = msg
        try:
            result = ("done", fn(*args))
        except Exception as e:  # the call's own failure: its reason goes back, not a traceback
            result = ("error", f"{type(e).__name__}: {first_line(e)}")
        conn.send(result)


@dataclass(frozen=True)
class Fault:
    """What became of a call whose process died twice (``"died"``) or ran past the timeout."""

    kind: str
    """``"died"``, ``"timeout"`` or ``"error"`` (an exception inside the call: ``reason``)."""
    args: tuple[Any, ...]
    reason: str = ""


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
        self.born = time.monotonic()

    def give(self, fn: Callable[..., Any], pos: int, args: tuple[Any, ...]) -> None:
        self.pos, self.args, self.since = pos, args, time.monotonic()
        try:  # ``fn`` is pickled by reference: a replaced module function (tests inject faults so) travels
            self.conn.send((fn, args))
        except OSError:  # it just died: its pipe reports that next, and the call is retried
            pass

    def kill(self) -> None:
        """SIGKILL, then wait at most ``KILL_JOIN_S``: a process in uninterruptible I/O (a dead
        network mount) cannot exit, and the build must not wait on it."""
        self.proc.kill()
        self.proc.join(KILL_JOIN_S)
        if self.proc.is_alive():
            log.warning(
                f"worker process {self.proc.pid} did not exit {KILL_JOIN_S:g} s after SIGKILL "
                f"(stuck in I/O{_subject(self.args)}?); left behind, the build goes on"
            )
        self.conn.close()


def _subject(args: tuple[Any, ...] | None) -> str:
    """`` on FILE`` for the call a worker was running (a decode job or a header read)."""
    first = args[0] if args else None
    path = getattr(first, "path", None) or (first[1] if isinstance(first, tuple) and len(first) > 1 else None)
    return f" on {path}" if isinstance(path, (str, os.PathLike)) else ""


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
        late += [w for w in self._all if not w.ready and now - w.born > START_TIMEOUT_S]
        if late:
            return [(w, "timeout") for w in late]
        left = [timeout - (now - w.since) for w in self.busy()] if timeout else []
        left += [START_TIMEOUT_S - (now - w.born) for w in self._all if not w.ready]
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
            raise ValueError(
                f"decode worker processes die or hang before they start ({_START_FAILURES} in a row, "
                f"{START_TIMEOUT_S:g} s allowed each): check that this Python can import numpy, "
                "soundfile and soxr (python -c 'import soundfile, soxr')"
            )


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
    if isinstance(event, tuple):  # ("done", result) or ("error", reason)
        assert w.pos is not None and w.args is not None
        done[w.pos] = event[1] if event[0] == "done" else Fault("error", w.args, event[1])
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
                why = {"died": WORKER_DIED, "timeout": timed_out(timeout), "error": failed(r.reason)}
                yield job[0], why[r.kind]
            else:
                yield r
    finally:
        if pool is None:
            procs.kill()
