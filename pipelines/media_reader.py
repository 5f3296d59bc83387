"""The bytes of a batch's media members, read where the plan says they lie.

Local builds: ``pread`` at the index offsets (no mmap: a shard truncated under the run is a
short read, one line naming it, never a SIGBUS). Builds in object storage: the whole-shard cache
(``loader.remote = "cache"``, :mod:`pipelines.shard_cache`) is asked for the batch's shards
first (and to fetch the next batches' shards in the background), then the local copies are
read the same way; ``"direct"``: one ranged GET per member, a batch's in parallel.

Builds mixed with the first one (``data.shards``) at another rate or codec are brought to the
first build's (int16 PCM at its rate: decoded with soundfile, resampled with soxr HQ, as the
shard builder does), so one graph reads them all.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipelines.shard_cache import ShardCache
from pipelines.shard_checks import not_in_cache
from shards.format import BadShard, Manifest, ShardInfo, check_shard, files_of, storage


@dataclass(frozen=True)
class Target:
    """What the graph reads: every build's media arrive as this codec at this rate."""

    codec: str  # "pcm16" | "flac" | "ogg" | "none" (images)
    rate: int


class MediaReader:
    """Reads media members ``(shard, offset, size)``; one instance per training loader."""

    def __init__(
        self,
        shard_tars: Sequence[str],
        shard_build: Sequence[int],
        shard_local: Sequence[int],
        manifests: Sequence[Manifest],
        caches: dict[int, ShardCache],
        target: Target,
        infos: Sequence[ShardInfo],
        *,
        workers: int = 8,
    ) -> None:
        self.tars, self.build, self.local = list(shard_tars), list(shard_build), list(shard_local)
        self.manifests, self.caches, self.target = list(manifests), caches, target
        self.infos = list(infos)  # per shard number: its manifest entry
        self.infos = list(infos)  # per shard number: its manifest entry
        self._fds: dict[int, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media-reader")

    def prepare(self, shards: Sequence[int], upcoming: Sequence[int]) -> None:
        """Hold the batch back until its shards are in the cache (object-store builds in cache
        mode); start fetching ``upcoming`` (the next batches' shards, in reading order)."""
        for b, cache in self.caches.items():
            need = sorted({self.local[s] for s in shards if self.build[s] == b})
            ahead = list(dict.fromkeys(self.local[s] for s in upcoming if self.build[s] == b))
            if need or ahead:
                cache.ensure(need, ahead)

    def read(self, shard: int, offset: int, size: int) -> bytes:
        """One member's bytes: exactly ``size`` of them, or one line naming the shard."""
        tar = self.tars[shard]
        if storage.is_remote(tar):
            data = storage.read_bytes(tar, offset, offset + size)
        else:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(tar, os.O_RDONLY)
            data = os.pread(fd, size, offset)
        if len(data) != size:
            raise self._short(shard, f"{len(data)} of a member's {size} bytes at offset {offset}")
        return data

    def _short(self, shard: int, what: str) -> BadShard:
        """A short read: the shard's own finding (its size against the manifest's) for a local
        build; for the shard cache's copy, that the copy ended under the run (no byte is used)."""
        m, info, tar = self.manifests[self.build[shard]], self.infos[shard], self.tars[shard]
        if not m.remote:
            found = check_shard(files_of(m), info, checksums=False)
            if found is not None:
                return found
        if storage.is_remote(tar):  # direct reads: the store answered short
            return BadShard(tar, f"read {what}: the object ended under the run; no wrong byte was used")
        url = str(storage.join(m.root, info.tar)) if m.root is not None else tar
        return not_in_cache(url, Path(tar).parent, f" {what}")

    def read_batch(self, members: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """Many members (direct object-store reads in parallel, local ones in order)."""
        if any(storage.is_remote(self.tars[s]) for s, _, _ in members):
            return list(self._pool.map(lambda m: self.read(*m), members))
        return [self.read(*m) for m in members]

    def audio(self, shard: int, data: bytes) -> np.ndarray:
        """A member as the graph reads it: int16 samples (pcm16) or the file's bytes."""
        m = self.manifests[self.build[shard]]
        if m.codec == self.target.codec and m.sample_rate == self.target.rate:
            return np.frombuffer(data, "<i2" if m.codec == "pcm16" else np.uint8)
        if m.codec == "pcm16":
            wave = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        else:
            wave, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            wave = wave.mean(axis=1)
        if m.sample_rate != self.target.rate:
            wave = soxr.resample(wave, m.sample_rate, self.target.rate, quality="HQ")
        return np.clip(np.round(wave * 32767.0), -32768, 32767).astype("<i2")

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for cache in self.caches.values():
            cache.close()
