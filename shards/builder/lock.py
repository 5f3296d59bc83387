"""Who is writing a build folder: leases under ``.build/locks/``, so two drivers started on the
same output by mistake do not both write it (the second refuses with one line).

A lease is a small JSON file (host, pid, a token, the time of its last refresh), refreshed by
a background thread while its holder runs. It works the same on a local disk, a shared
filesystem and an object store (no ``flock`` there). A lease is dead when its holder's
process is gone (same host) or it has not been refreshed for ``STALE_S`` seconds (another
host), so rerunning a build whose driver was killed just works on the same machine.

Array jobs hold one lease per part (``part-3-of-16``); parts coexist, but a full build, a
merge or a re-plan refuses while any other lease is live.
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
from dataclasses import asdict, dataclass

from shards.builder.output import BuildOutput

LOCKS = ".build/locks"
HEARTBEAT_S = 10.0
STALE_S = 60.0


@dataclass(kw_only=True)
class Lease:
    name: str
    token: str
    host: str
    pid: int
    time: float

    def live(self, now: float) -> bool:
        """Its holder still runs: same host and the process exists, or refreshed recently elsewhere."""
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return now - self.time < STALE_S


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
        with contextlib.suppress(ValueError, TypeError):
            leases.append(Lease(**json.loads(text)))
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
        while not self.stop.wait(HEARTBEAT_S):
            self.lease.time = time.time()
            with contextlib.suppress(OSError):
                self.out.write_text(f"{LOCKS}/{self.lease.name}.json", json.dumps(asdict(self.lease)))


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
    lease.time = time.time()
    if not out.create(rel, json.dumps(asdict(lease))):
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
    try:
        yield lease
    finally:
        beat.stop.set()
        beat.join()
        out.remove(rel)
