"""A rank's whole-shard cache: shards in object storage become local files that DALI reads.

Why whole shards: DALI's webdataset reader issues one ranged GET per sample member, one after
another; on any store each request costs milliseconds to tens of them, so per-member reads
cannot feed a GPU. Whole shards in ranged GETs of 32 MiB (one for a small shard, no HEAD)
move the same bytes at the link's speed.

How it streams (DALI 2.4, checked on this machine; see docs/pipeline.md "Shards in object
storage"): the reader opens EVERY tar of the split when the pipeline is built (a missing path
fails the build), takes a file's size at each read, and afterwards reads samples strictly in
order, from a position that only depends on (epoch, batch). So the cache creates each tar at
build time as an EMPTY file and fills it in place, whole shard by whole shard, ahead of the
reader; the reader opens tars with ``dont_use_mmap`` (plain reads, which see the bytes written
since). A shard the cache does not hold is short (empty), never zeros: a read of it fails
loudly. Before each DALI batch the loader calls :meth:`ShardCache.ensure` with the shards the
reader may touch until the next call (:mod:`pipelines.read_order`): it returns once those are
complete and verified, while the next ``cache_ahead`` shards download in the background.

- one process per folder (:mod:`pipelines.cache_files`: an exclusive lock, private folders,
  ``O_NOFOLLOW``, verified index files).
- atomic: a shard counts as present only once its bytes are fsynced AND its sha256 equals the
  manifest's; then a marker ``NAME.tar.sha256`` is written atomically. A crash mid-download
  leaves no marker, and the shard is fetched again.
- size-bounded: beyond ``max_bytes``, shards outside the reader's window are evicted by
  truncating them to zero (the space is freed; the file DALI holds open stays valid).
- deadlines: a wait gives up when a shard's download delivers no byte for ``stall_s`` seconds,
  and a SIGTERM/SIGINT that a handler (the trainer's) catches ends the wait at once; either is
  :class:`CacheWaitStopped`, one line naming the shard, so the trainer saves and stops.
- later epochs read the cache: a shard with a valid marker is never fetched again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cache_files import claim_folder, fetch_copy, local_names, opened, stream_into, truncate
from shards.base.atomic import atomic_write_text
from shards.format import BadShard, ShardInfo, storage


@dataclass
class CacheStats:
    """What the cache did (for benchmarks and the data-wait report)."""

    fetched: int = 0  # shards downloaded
    fetched_bytes: int = 0
    hits: int = 0  # shards found complete in the cache (a previous run, a previous epoch)
    evicted: int = 0
    wait_seconds: float = 0.0  # time ensure() blocked on downloads
    requests: int = 0  # objects read from the store (one per shard, one per index fetched)


class CacheWaitStopped(BadShard):
    """The reader's wait for a shard ended: a signal, or a download that stopped delivering."""

    advice = "resume with checkpoint.resume=auto once the store answers (loader.cache_stall_s)"


class CorruptShard(BadShard):
    """A fetched shard whose bytes are not the manifest's (``loader.on_bad_shard`` decides)."""


@dataclass
class _Entry:
    url: str
    local: Path
    info: ShardInfo
    ready: bool = False
    future: Future[None] | None = None
    last_used: float = field(default_factory=time.monotonic)
    progress: float = field(default_factory=time.monotonic)  # when its download last wrote a block


class ShardCache:
    """Whole shards of one split, fetched from ``urls`` into a folder claimed at ``base`` (one
    process's cache: ``base`` itself, or a folder beside it when another process holds it)."""

    def __init__(
        self,
        urls: Sequence[str],
        index_urls: Sequence[str],
        shards: Sequence[ShardInfo],
        base: Path,
        *,
        max_bytes: int,
        workers: int = 4,
        ahead: int = 8,
        stall_s: float = 300.0,
        verify_hits: bool = False,
        where: str = "",
        local_tars: bool = True,
    ) -> None:
        self.max_bytes = max_bytes
        self.ahead = ahead
        self.stall_s = stall_s
        self.stats = CacheStats()
        self._lock = threading.Lock()
        tars, idxs = local_names(shards, where or str(base))  # ``where``: the manifest, for errors
        self.folder, self._claim = claim_folder(base)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-cache")
        try:
            self.entries = [
                _Entry(url, self.folder / t, info) for url, t, info in zip(urls, tars, shards, strict=True)
            ]
            self.indexes = self._fetch_indexes(index_urls, shards, idxs)
            for e in self.entries if local_tars else ():  # False: only the indexes (direct reads)
                self._open(e, verify_hits)
        except BaseException:
            self.close()
            raise

    @property
    def tars(self) -> list[Path]:
        """Local tar paths, in split order: what the DALI reader is given."""
        return [e.local for e in self.entries]

    def _fetch_indexes(
        self, urls: Sequence[str], shards: Sequence[ShardInfo], names: list[str]
    ) -> list[Path]:
        """Every index of the split, whole and as the manifest records it (small; DALI parses
        them all at build): a local copy that does not match is fetched again."""
        paths = [self.folder / n for n in names]
        fetched = list(
            self._pool.map(
                lambda a: fetch_copy(a[0], a[1], a[2].index_sha256, a[2].index_bytes),
                zip(urls, paths, shards),
            )
        )
        self.stats.requests += sum(fetched)
        return paths

    def _open(self, e: _Entry, verify: bool) -> None:
        """A complete shard with a valid marker is ready (``verify``: its bytes hashed again);
        anything else becomes an empty file (what DALI opens at build; filled in place later)."""
        marker = _marker(e.local)
        if (
            marker.is_file()
            and not marker.is_symlink()
            and marker.read_text().strip() == e.info.sha256
            and _size(e.local) == e.info.bytes
            and (not verify or storage.sha256_file(e.local) == e.info.sha256)
        ):
            e.ready = True
            self.stats.hits += 1
            return
        marker.unlink(missing_ok=True)
        truncate(e.local)  # created if absent; never replace the inode DALI may hold

    def resident_bytes(self) -> int:
        return sum(e.info.bytes for e in self.entries if e.ready or e.future is not None)

    def ensure(self, needed: Sequence[int], upcoming: Sequence[int] = ()) -> None:
        """Return once shards ``needed`` (indices into the split) are complete and verified;
        start downloads of ``upcoming`` (reading order) up to ``ahead`` shards and the size bound."""
        protect = set(needed) | set(upcoming[: self.ahead])
        with self._lock:
            for i in needed:
                self._schedule(i, protect, required=True)
            for i in upcoming[: self.ahead]:
                if not self._schedule(i, protect, required=False):
                    break
            now = time.monotonic()
            for i in protect:
                self.entries[i].last_used = now
            waits = [
                (e, e.future) for i in needed if (e := self.entries[i]).future is not None and not e.ready
            ]
        if not waits:
            return
        t0 = time.perf_counter()
        try:
            self._wait(waits)
        finally:
            self.stats.wait_seconds += time.perf_counter() - t0

    def _wait(self, waits: Sequence[tuple[_Entry, Future[None] | None]]) -> None:
        """Block until each download is done; a stalled one or a caught signal ends the wait."""
        with _signals() as caught:
            for e, fut in waits:
                while fut is not None:
                    try:
                        fut.result(timeout=0.2)  # a failed download raises its one-line error here
                        break
                    except TimeoutError:
                        pass
                    if caught:
                        raise CacheWaitStopped(e.url, f"{caught[0]} while the reader waited for this shard")
                    idle = time.monotonic() - e.progress
                    if idle > self.stall_s:
                        raise CacheWaitStopped(
                            e.url, f"its download delivered no byte for {idle:.0f} s (loader.cache_stall_s)"
                        )

    def _schedule(self, i: int, protect: set[int], *, required: bool) -> bool:
        """Start fetching shard ``i`` unless present; False when the size bound leaves no room."""
        e = self.entries[i]
        if e.ready or e.future is not None:
            return True
        if not self._make_room(e.info.bytes, protect):
            if required:
                raise ValueError(
                    f"{self.folder}: loader.cache_gb={self.max_bytes / 1e9:g} cannot hold the shards the "
                    f"reader needs at once ({sum(self.entries[j].info.bytes for j in protect) / 1e9:.2f} "
                    "GB); raise loader.cache_gb"
                )
            return False
        e.progress = time.monotonic()
        e.future = self._pool.submit(self._fetch, e)
        return True

    def _make_room(self, size: int, protect: set[int]) -> bool:
        """Evict least recently used complete shards outside ``protect`` until ``size`` fits."""
        victims = sorted(
            (j for j, e in enumerate(self.entries) if e.ready and j not in protect),
            key=lambda j: self.entries[j].last_used,
        )
        while self.resident_bytes() + size > self.max_bytes:
            if not victims:
                return False
            self._evict(self.entries[victims.pop(0)])
        return True

    def _evict(self, e: _Entry) -> None:
        _marker(e.local).unlink(missing_ok=True)  # not present from here on
        e.ready = False
        truncate(e.local)  # frees the blocks; a read of it now fails instead of returning zeros
        self.stats.evicted += 1

    def _fetch(self, e: _Entry) -> None:
        """Stream the whole object into its cache file, verify size and sha256, mark it present."""
        try:
            for attempt in (1, 2):
                with opened(e.local) as fd:
                    digest, size = stream_into(e.url, fd, e.local, e.info.bytes, lambda _: self._touch(e))
                with self._lock:
                    self.stats.requests += 1
                if size == e.info.bytes and digest == e.info.sha256:
                    break
                if attempt == 2:
                    truncate(e.local)
                    raise CorruptShard(
                        e.url,
                        f"{size} bytes with sha256 {digest[:12]}..., the manifest says "
                        f"{e.info.bytes} bytes, {e.info.sha256[:12]}... (a corrupt or replaced object; "
                        "re-run `python -m shards copy`)",
                    )
            atomic_write_text(
                _marker(e.local),
                e.info.sha256 + "\n",
                what=f"the cached copy of {e.local.name} (its sha256 marker, shard cache)",
            )
        except BaseException:
            with self._lock:
                e.future = None
            raise
        with self._lock:
            e.ready, e.future = True, None
            self.stats.fetched += 1
            self.stats.fetched_bytes += size

    def _touch(self, e: _Entry) -> None:
        e.progress = time.monotonic()

    def close(self) -> None:
        """Stop downloading (running downloads finish; queued ones are dropped), free the folder."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._claim.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._claim.release()


@contextlib.contextmanager
def _signals() -> Iterator[list[str]]:
    """While the block runs, a SIGTERM/SIGINT that a Python handler (the trainer's) would catch
    is still handed to it, and also recorded in the yielded list (the wait polls it). Signals
    left to their default action (end the process) keep it."""
    caught: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    old: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if callable(handler) and handler is not signal.default_int_handler:

            def chained(signum: int, frame: Any, handler: Any = handler) -> None:
                caught.append(signal.Signals(signum).name)
                handler(signum, frame)

            old[sig] = signal.signal(sig, chained)
    try:
        yield caught
    finally:
        for number, previous in old.items():
            signal.signal(number, previous)


def _marker(local: Path) -> Path:
    return local.with_name(local.name + ".sha256")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else -1
