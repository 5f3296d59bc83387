"""What the DALI reader is given for a build in object storage, and the gate that streams it.

``loader.remote = "cache"`` (default): whole shards fetched ahead of the reader into a per-rank
cache (:mod:`pipelines.shard_cache`); DALI reads local files. ``"direct"``: DALI reads the
``s3://`` tars itself, one ranged GET per sample member (its S3 client is configured from the
same environment: ``AWS_ENDPOINT_URL``, the credential chain, ``AWS_REGION``). In both modes the
small index files are downloaded into the cache folder (and used only while they match the
manifest), so validation reads them locally and DALI's start-up costs no request per index.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import LoaderConfig
from pipelines.read_order import ReadOrder
from pipelines.shard_cache import ShardCache
from shards.format import Manifest


@dataclass
class ReaderInputs:
    """Paths (or URLs) for the reader, the local index copies, and the streaming gate."""

    tars: list[str]
    idxs: list[str]
    gate: CacheGate | None = None  # cache mode: called before every DALI batch
    plain_reads: bool = False  # DALI opens tars without mmap (cache files are filled in place)


def cache_root(cfg: LoaderConfig) -> Path:
    """``loader.cache_dir``, else ``$MUSICSTREAM_CACHE``, else ``~/.cache/musicstream/shards``."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("MUSICSTREAM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "musicstream" / "shards"


def cache_folder(manifest: Manifest, split: str, cfg: LoaderConfig, rank: int) -> Path:
    """One folder per build (its URL and the digest of the split's shard entries: a rebuild at
    the same URL never meets the old files), split and rank. One process per folder: the cache
    locks it and moves beside it when another process holds it (:mod:`pipelines.cache_files`)."""
    url = str(manifest.root).rstrip("/")
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", url.split("://", 1)[-1])[-60:]
    entries = [url] + [
        f"{s.tar} {s.sha256} {s.bytes} {s.index} {s.index_sha256} {s.index_bytes}"
        for s in manifest.split(split).shards
    ]
    key = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:12]
    return cache_root(cfg) / f"{readable}-{key}" / split / f"rank{rank}"


def open_cache(
    manifest: Manifest, split: str, cfg: LoaderConfig, rank: int, share: float = 1.0
) -> ShardCache:
    """The shard cache of an object-store build's split for this rank (``share`` of
    ``loader.cache_gb``: builds mixed in one run share it). Direct reads (``remote = "direct"``)
    use it for the verified index copies only; the caller closes it then."""
    tars, idxs = manifest.urls(split)
    return ShardCache(
        tars,
        idxs,
        manifest.split(split).shards,
        cache_folder(manifest, split, cfg, rank),
        max_bytes=int(cfg.cache_gb * 1e9 * share),
        workers=cfg.cache_workers,
        ahead=cfg.cache_ahead,
        stall_s=cfg.cache_stall_s,
        verify_hits=cfg.verify == "first_open" and cfg.remote == "cache",
        where=manifest.where,
        local_tars=cfg.remote == "cache",
    )


def reader_inputs(
    manifest: Manifest, split: str, cfg: LoaderConfig, *, rank: int, world_size: int, batch: int
) -> ReaderInputs:
    """What an evaluation loader's reader is given (training reads the sample plan:
    ``pipelines.plan_inputs``). Local builds: their own paths. Object-store builds: local index
    copies, and either the cache (local tar files filled ahead of the reader) or the tar URLs for
    DALI's direct reads.
    In cache mode with ``loader.verify = "first_open"`` the cache's own sha256 check is the
    check (no second download); shards found in the cache are hashed again once."""
    tars, idxs = manifest.urls(split)
    if not manifest.remote:
        return ReaderInputs(tars, idxs)
    info = manifest.split(split)
    cache = open_cache(manifest, split, cfg, rank)
    local_idxs = [str(p) for p in cache.indexes]
    if cfg.remote == "direct":
        cache.close()  # the indexes are verified copies; the tars are read from the store
        return ReaderInputs(tars, local_idxs)
    order = ReadOrder(
        counts=tuple(s.num_samples for s in info.shards),
        rank=rank,
        world_size=world_size,
        batch=batch,
        prefetch=cfg.prefetch,
    )
    return ReaderInputs([str(p) for p in cache.tars], local_idxs, CacheGate(cache, order), plain_reads=True)


class CacheGate:
    """Holds each DALI batch back until the shards the reader may touch are in the cache."""

    def __init__(self, cache: ShardCache, order: ReadOrder) -> None:
        self.cache = cache
        self.order = order

    def wait(self, epoch: int, batch: int, *, restored: bool = False) -> None:
        needed, upcoming = self.order.window(epoch, batch, restored=restored)
        self.cache.ensure(needed, upcoming)

    def wrap(self, it: Any, position: Callable[[], tuple[int, int]]) -> GatedIterator:
        return GatedIterator(it, self, position)


class GatedIterator:
    """The DALI iterator, each ``next`` preceded by :meth:`CacheGate.wait` at the loader's
    (epoch, batch); everything else is the DALI iterator's."""

    def __init__(self, it: Any, gate: CacheGate, position: Callable[[], tuple[int, int]]) -> None:
        self._it, self._gate, self._position = it, gate, position

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._gate.wait(*self._position())
        return next(self._it)

    def __len__(self) -> int:
        return len(self._it)

    def checkpoints(self) -> list[str]:
        return list(self._it.checkpoints())
