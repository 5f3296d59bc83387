"""A rank's whole-shard cache: shards in object storage become local files that DALI reads.

Why whole shards: DALI's webdataset reader issues one ranged GET per sample member, one after
another; on any store each request costs milliseconds to tens of them, so per-member reads
cannot feed a GPU. One GET per shard (tens of MB) moves the same bytes at the link's speed.

How it streams (DALI 2.4, checked on this machine; see docs/pipeline.md "Shards in object
storage"): the reader opens EVERY tar of the split when the pipeline is built (a missing path
fails the build) and afterwards reads samples strictly in order, from a position that only
depends on (epoch, batch). So the cache creates each tar at build time as a *sparse file of its
final size* and fills it in place, whole shard by whole shard, ahead of the reader; the reader
opens tars with ``dont_use_mmap`` (plain reads, which see the bytes written since). Before each
DALI batch the loader calls :meth:`ShardCache.ensure` with the shards the reader may touch
until the next call (:mod:`pipelines.read_order`): it returns once those are complete and
verified, while the next ``cache_ahead`` shards download in the background.

- atomic: a shard counts as present only once its bytes are fsynced AND its sha256 equals the
  manifest's; then a marker ``NAME.tar.sha256`` is written atomically. A crash mid-download
  leaves no marker, and the shard is fetched again.
- size-bounded: beyond ``max_bytes``, shards outside the reader's window are evicted by
  truncating them to zero and back (the space is freed; the file DALI holds open stays valid).
- later epochs read the cache: a shard with a valid marker is never fetched again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shards.base.atomic import atomic_write_text
from shards.format import ShardInfo, storage


@dataclass
class CacheStats:
    """What the cache did (for benchmarks and the data-wait report)."""

    fetched: int = 0  # shards downloaded
    fetched_bytes: int = 0
    hits: int = 0  # shards found complete in the cache (a previous run, a previous epoch)
    evicted: int = 0
    wait_seconds: float = 0.0  # time ensure() blocked on downloads
    requests: int = 0  # GETs sent to the store (one per shard, one per index)


@dataclass
class _Entry:
    url: str
    local: Path
    info: ShardInfo
    ready: bool = False
    future: Future[None] | None = None
    last_used: float = field(default_factory=time.monotonic)


class ShardCache:
    """Whole shards of one split, fetched from ``urls`` into ``folder`` (one rank's cache)."""

    def __init__(
        self,
        urls: Sequence[str],
        index_urls: Sequence[str],
        shards: Sequence[ShardInfo],
        folder: Path,
        *,
        max_bytes: int,
        workers: int = 4,
        ahead: int = 8,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.ahead = ahead
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-cache")
        folder.mkdir(parents=True, exist_ok=True)
        self.entries = [
            _Entry(url, folder / _local_name(info.tar), info) for url, info in zip(urls, shards, strict=True)
        ]
        self.indexes = self._fetch_indexes(index_urls, shards)
        for e in self.entries:
            self._open(e)

    @property
    def tars(self) -> list[Path]:
        """Local tar paths, in split order: what the DALI reader is given."""
        return [e.local for e in self.entries]

    def _fetch_indexes(self, urls: Sequence[str], shards: Sequence[ShardInfo]) -> list[Path]:
        """Every index of the split, whole (small; DALI parses them all at build)."""
        paths = [self.folder / _local_name(s.index) for s in shards]
        todo = [(u, p) for u, p in zip(urls, paths) if not p.is_file()]
        self.stats.requests += len(todo)
        list(self._pool.map(lambda up: storage.download(up[0], up[1]), todo))
        return paths

    def _open(self, e: _Entry) -> None:
        """A verified complete shard is ready; anything else becomes an empty sparse file of the
        final size (what DALI opens at build; filled in place later)."""
        marker = _marker(e.local)
        if (
            marker.is_file()
            and marker.read_text().strip() == e.info.sha256
            and _size(e.local) == e.info.bytes
        ):
            e.ready = True
            self.stats.hits += 1
            return
        marker.unlink(missing_ok=True)
        with open(e.local, "ab") as f:  # create if absent; never replace the inode DALI may hold
            f.truncate(0)
            f.truncate(e.info.bytes)

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
                f for i in needed if (f := self.entries[i].future) is not None and not self.entries[i].ready
            ]
        t0 = time.perf_counter()
        for fut in waits:
            fut.result()  # a failed download raises its one-line error here
        self.stats.wait_seconds += time.perf_counter() - t0

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
        with open(e.local, "r+b") as f:
            f.truncate(0)  # frees the blocks; the inode DALI holds open stays valid
            f.truncate(e.info.bytes)
        self.stats.evicted += 1

    def _fetch(self, e: _Entry) -> None:
        """Stream the whole object into the placeholder, verify size and sha256, mark it present."""
        for attempt in (1, 2):
            digest, size = _stream_into(e.url, e.local)
            with self._lock:
                self.stats.requests += 1
            if size == e.info.bytes and digest == e.info.sha256:
                break
            if attempt == 2:
                with self._lock:
                    e.future = None
                raise ValueError(
                    f"{e.url}: {size} bytes with sha256 {digest[:12]}..., the manifest says {e.info.bytes} "
                    f"bytes, {e.info.sha256[:12]}... (a corrupt or replaced object; re-run "
                    "`python -m shards copy`)"
                )
        atomic_write_text(_marker(e.local), e.info.sha256 + "\n")
        with self._lock:
            e.ready, e.future = True, None
            self.stats.fetched += 1
            self.stats.fetched_bytes += size

    def close(self) -> None:
        """Stop downloading (running downloads finish; queued ones are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _stream_into(url: str, local: Path) -> tuple[str, int]:
    """Download ``url`` into the existing file ``local`` in place (one streamed GET; the inode the
    reader holds open stays), fsync it, and hash what landed on disk."""
    storage.download(url, local, in_place=True)
    with open(local, "rb+") as f:
        os.fsync(f.fileno())
    return storage.sha256_file(local), local.stat().st_size


def _local_name(rel: str) -> str:
    """``train/000001.tar`` -> ``train-000001.tar``: one flat folder per rank and build."""
    return rel.replace("/", "-")


def _marker(local: Path) -> Path:
    return local.with_name(local.name + ".sha256")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else -1
