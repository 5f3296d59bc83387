"""Who is writing a build folder: leases under ``.build/locks/``, so two drivers started on the
same output by mistake do not both write it (the second refuses with one line).

A lease is a small JSON file (host, pid, a token, the time of its last refresh), refreshed by
a background thread while its holder runs. It works the same on a local disk, a shared
filesystem and an object store (no ``flock`` there). A lease is dead when its holder's
process is gone (same host) or it has not been refreshed for ``STALE_S`` seconds (another
host), so rerunning a build whose driver was killed just works on the same machine.

Array jobs hold one lease per part (``part-3-of-16``); parts coexist, but a full build, a
merge or a re-plan refuses while any other lease is live.

A lease is taken by a conditional create (``BuildOutput.create``: ``If-None-Match: *`` on a store),
so two drivers never both hold it. The holder never outlives its lease: a refresh that fails
(any error: the store stopped answering) is one warning and is tried again, and once no refresh
has succeeded for ``STALE_S / 2`` seconds ``Lease.check`` (called between records and shards)
stops the build with one line, before another host may take over; before writing the plan or
the manifest the holder re-reads the lease and requires its own token (``Lease.confirm``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from shards.base.errors import first_line
from shards.base.logs import get_logger
from shards.builder.output import BuildOutput

LOCKS = ".build/locks"
HEARTBEAT_S = 10.0
STALE_S = 60.0
log = get_logger("shards.lock")


@dataclass(kw_only=True)
class Lease:
    name: str
    token: str
    host: str
    pid: int
    time: float
    refreshed: float = field(default=0.0, repr=False, compare=False)
    """``time.monotonic()`` of the last successful write (this process only; never stored)."""
    failure: str = field(default="", repr=False, compare=False)
    """The last refresh error (this process only)."""
    taken: str = field(default="", repr=False, compare=False)
    """Who holds the lease file now, when the heartbeat found another's token there."""

    def stored(self) -> str:
        """The lease file's text (without this process's bookkeeping)."""
        d = asdict(self)
        for k in ("refreshed", "failure", "taken"):
            d.pop(k)
        return json.dumps(d)

    def check(self, out: BuildOutput | str = "") -> None:
        """Stop (ValueError, one line) when no refresh has succeeded for half the stale time:
        another host may soon take the lease over, so this holder must not write any more."""
        if self.taken:
            raise _taken_over(out, self.name, self.taken)
        quiet = time.monotonic() - self.refreshed
        if self.refreshed and quiet > STALE_S / 2:
            raise ValueError(
                f"{out}: lost the build lease {self.name}: not refreshed for {quiet:.0f} s "
                f"({self.failure or 'no answer'}); stopped so that no other driver's work is "
                "overwritten: run the same command again when the store answers"
            )

    def confirm(self, out: BuildOutput) -> None:
        """Before a write that only the holder may make (the plan, the manifest): the lease
        file still holds this lease's token (ValueError, one line, when another took it over)."""
        self.check(out)
        mine = next((x for x in _read_leases(out) if x.name == self.name), None)
        if mine is None or mine.token != self.token:
            raise _taken_over(out, self.name, "nobody" if mine is None else f"pid {mine.pid} on {mine.host}")

    def live(self, now: float) -> bool:
        """Its holder still runs: same host and the process exists, or refreshed recently elsewhere."""
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return now - self.time < STALE_S


def _taken_over(out: BuildOutput | str, name: str, who: str) -> ValueError:
    return ValueError(
        f"{out}: the build lease {name} is no longer this driver's (held by {who}); "
        "stopped before writing: another driver took the build over"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_leases(out: BuildOutput) -> list[Lease]:
    names = [f"{LOCKS}/{n}" for n in sorted(out.sizes(LOCKS)) if n.endswith(".json")]
    leases = []
    for text in out.read_texts(names).values():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            d = json.loads(text)
            leases.append(Lease(**{k: d[k] for k in ("name", "token", "host", "pid", "time")}))
    return leases


def _refuse(out: BuildOutput, mine: str, other: Lease) -> ValueError:
    ago = max(0.0, time.time() - other.time)
    return ValueError(
        f"{out}: another build is writing here ({other.name}: pid {other.pid} on {other.host}, "
        f"its lease refreshed {ago:.0f} s ago); wait for it to finish (a lease of a driver killed on another "
        f"machine expires after {STALE_S:.0f} s, or delete {out.url(f'{LOCKS}/{other.name}.json')})"
        + ("" if mine == other.name else f" before running {mine}")
    )


def _conflicts(out: BuildOutput, name: str, alongside: tuple[str, ...]) -> list[Lease]:
    """Leases that may not be held together with ``name`` (any, except parts beside parts)."""
    return [
        x for x in _read_leases(out) if not (alongside and x.name != name and x.name.startswith(alongside))
    ]


class _Heartbeat(threading.Thread):
    def __init__(self, out: BuildOutput, lease: Lease) -> None:
        super().__init__(daemon=True, name=f"lease-{lease.name}")
        self.out, self.lease, self.stop = out, lease, threading.Event()

    def run(self) -> None:
        warned = False
        while not self.stop.wait(HEARTBEAT_S):
            self.lease.time = time.time()
            rel = f"{LOCKS}/{self.lease.name}.json"
            try:
                now = json.loads(self.out.read_text(rel) or "{}")
                if now.get("token", self.lease.token) != self.lease.token:  # never write over another's
                    self.lease.taken = f"pid {now.get('pid')} on {now.get('host')}"
                    return
                self.out.write_text(rel, self.lease.stored())
            except Exception as e:  # any failure (a store's StorageError too): never end the thread
                self.lease.failure = first_line(e)
                if not warned:
                    log.warning(
                        f"{self.out}: cannot refresh the build lease ({self.lease.failure}); retrying"
                    )
                    warned = True
                continue
            self.lease.refreshed, warned = time.monotonic(), False


@contextlib.contextmanager
def hold_lease(out: BuildOutput, name: str, *, alongside: tuple[str, ...] = ()) -> Iterator[Lease]:
    """Hold the lease ``name`` on ``out`` while the block runs; refuse (ValueError, one line)
    when another live lease conflicts. Leases whose names start with one of ``alongside``
    may coexist with this one (array-job parts with each other)."""
    lease = Lease(name=name, token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), time=0.0)
    rel = f"{LOCKS}/{name}.json"
    for other in _conflicts(out, name, alongside):
        if other.live(time.time()):
            raise _refuse(out, name, other)
        if other.name == name:  # a dead holder of the same lease (a killed driver): take it over
            out.remove(rel)
    lease.time, lease.refreshed = time.time(), time.monotonic()
    if not out.create(rel, lease.stored()):
        winner = next((x for x in _read_leases(out) if x.name == name), lease)
        raise _refuse(out, name, winner)
    # two different leases taken at the same moment (a build and a part): both see the other
    rival = next(
        (x for x in _conflicts(out, name, alongside) if x.token != lease.token and x.live(time.time())), None
    )
    if rival is not None:
        out.remove(rel)
        raise _refuse(out, name, rival)
    beat = _Heartbeat(out, lease)
    beat.start()
    failed = True
    try:
        yield lease
        failed = False
    finally:
        beat.stop.set()
        beat.join(HEARTBEAT_S)  # a refresh stuck on a dead store must not hold the exit
        try:  # only our own: a lease another driver took over stays its
            if any(x.token == lease.token for x in _read_leases(out) if x.name == name):
                out.remove(rel)
        except Exception:
            if not failed:  # the block's own error (the store is down, say) is the one to report
                raise
