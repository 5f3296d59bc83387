"""Shard integrity: each tar and index of a build against the sizes and sha256 its manifest records.

A flipped byte from a bad disk or a broken copy trains without a word: DALI reads the bytes
the index points at and never compares them with anything. Three users of one check:
``python -m shards verify BUILD`` (every shard, in parallel, one line per bad shard),
``loader.verify = "first_open"`` (each shard the first time a process reads it), and the
loader's diagnosis of a read that failed mid-run (which shard, and what is wrong with it).
Builds from before index checksums were recorded have their index compared with the one
the tar's own headers give (the writer's index is a function of the tar).
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import shards.format.storage as storage
from shards.base.errors import first_line
from shards.base.progress import progress
from shards.format.manifest import MANIFEST, Manifest, ShardInfo, parse_manifest, read_manifest
from shards.format.writer import index_line, index_text

_BLOCK = 1 << 20


class BadShard(ValueError):
    """A shard whose bytes differ from what its manifest records; the message names it.

    ``every_rank``: raised where only the rank that read the shard knows it, so that rank
    prints the line (``shards.base.errors.run_cli``)."""

    every_rank = True

    def __init__(self, shard: str, problem: str) -> None:
        super().__init__(f"{shard}: {problem}")
        self.shard, self.problem = shard, problem


class Files(Protocol):
    """Where a build's files are read from: a local folder, or an object store."""

    def name(self, rel: str) -> str:
        """The path or URL a user reads in a message."""
        ...

    def size(self, rel: str) -> int: ...

    def open(self, rel: str) -> AbstractContextManager[IO[bytes]]: ...


class LocalFiles:
    """A build folder on this machine, as ``verify`` reads it (names, sizes, byte streams)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def name(self, rel: str) -> str:
        return str(self.root / rel)

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def open(self, rel: str) -> AbstractContextManager[IO[bytes]]:
        return (self.root / rel).open("rb")


class RemoteFiles:
    """A build under an object-store prefix (``s3://bucket/prefix``), read through
    ``shards.format.storage``: sizes from one listing, bytes streamed."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self._sizes: dict[str, int] | None = None
        self._lock = threading.Lock()

    def name(self, rel: str) -> str:
        return str(storage.join(self.base, rel))

    def size(self, rel: str) -> int:
        with self._lock:
            if self._sizes is None:
                self._sizes = storage.list_files(self.base)  # one paged LIST, not a HEAD per shard
        if rel not in self._sizes:
            raise FileNotFoundError(self.name(rel))
        return self._sizes[rel]

    def open(self, rel: str) -> AbstractContextManager[IO[bytes]]:
        return storage.open_read(self.name(rel))


def files_of(manifest: Manifest) -> Files:
    """The files of a build read from ``m.root``: a local folder or an object-store prefix."""
    assert manifest.root is not None, "manifest not read from a build"
    return (
        RemoteFiles(str(manifest.root))
        if storage.is_remote(manifest.root)
        else LocalFiles(Path(manifest.root))
    )


def open_build(build: str | Path) -> tuple[Manifest, Files]:
    """A build's manifest (not checking its files: a missing shard is a finding) and its files,
    from a local folder or an object-store prefix."""
    if not storage.is_remote(build):
        manifest = read_manifest(build, check_files=False)
        return manifest, files_of(manifest)
    storage.check_access(storage.check_location(build))
    url = str(storage.join(build, MANIFEST))
    manifest = parse_manifest(storage.read_text(url), url)
    for s in (s for info in manifest.splits.values() for s in info.shards):
        for rel in (s.tar, *(c[0] for c in s.companions())):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"{url}: path {rel!r} points outside the build")
    return manifest, RemoteFiles(str(build))


def sha256_of(f: IO[bytes]) -> str:
    """sha256 of a stream, read in 1 MiB blocks (hashlib releases the GIL: threads run in parallel)."""
    h = hashlib.sha256()
    while block := f.read(_BLOCK):
        h.update(block)
    return h.hexdigest()


def index_of_tar(f: IO[bytes]) -> bytes:
    """The DALI index the shard writer writes for this tar, rebuilt from its member headers."""
    samples: list[list[str]] = []
    last = None
    with tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            key, _, ext = m.name.partition(".")
            if key != last:
                samples.append([])
                last = key
            samples[-1].append(index_line(ext, m.offset_data, m.size, m.name))
    return index_text([" ".join(parts) for parts in samples])


def _size_problem(files: Files, rel: str, want: int, what: str) -> str | None:
    try:
        got = files.size(rel)
    except FileNotFoundError:
        return f"{what} missing"
    except OSError as e:
        return f"{what} unreadable: {e.strerror or first_line(e)}"
    if got != want:
        how = "truncated" if got < want else "longer than written"
        return f"{what} has {got} bytes, the manifest says {want} ({how})"
    return None


def shard_problems(files: Files, info: ShardInfo, *, checksums: bool = True) -> list[str]:
    """What is wrong with one shard's tar, index and ids file (empty: all match the manifest).
    ``checksums=False``: sizes only (a stat each), for a quick look."""
    tar_bad = _file_problem(files, info.tar, info.sha256, info.bytes, "tar", checksums)
    problems = [tar_bad] if tar_bad else []
    for rel, sha256, size in info.companions():
        what = f"{'index' if rel == info.index else 'ids file'} {rel.rsplit('/', 1)[-1]}"
        if sha256 is not None and size is not None:
            bad = _file_problem(files, rel, sha256, size, what, checksums)
        elif checksums and tar_bad is None:  # an older build's index: it must be the tar's own
            bad = _index_matches_tar(files, info)
        else:
            bad = None
        problems += [bad] if bad else []
    return problems


def _file_problem(files: Files, rel: str, sha256: str, size: int, what: str, checksums: bool) -> str | None:
    """``rel``'s size, then (``checksums``) its sha256, against the manifest's."""
    bad = _size_problem(files, rel, size, what)
    return _digest_problem(files, rel, sha256, what) if bad is None and checksums else bad


def _digest_problem(files: Files, rel: str, want: str, what: str) -> str | None:
    try:
        with files.open(rel) as f:
            got = sha256_of(f)
    except OSError as e:
        return f"{what} unreadable: {e.strerror or first_line(e)}"
    if got != want:
        return f"{what} sha256 {got[:12]}... differs from the manifest's {want[:12]}... (corrupt: bit rot or a bad copy)"
    return None


def _index_matches_tar(files: Files, info: ShardInfo) -> str | None:
    try:
        with files.open(info.tar) as f:
            want = index_of_tar(f)
        with files.open(info.index) as f:
            got = f.read()
    except (OSError, tarfile.TarError) as e:
        return f"index unreadable: {first_line(e)}"
    return None if got == want else "index does not match the tar's members (corrupt index)"


def check_shard(files: Files, info: ShardInfo, *, checksums: bool = True) -> BadShard | None:
    """``BadShard`` naming the tar and every problem found, or None when it is intact."""
    problems = shard_problems(files, info, checksums=checksums)
    return BadShard(files.name(info.tar), "; ".join(problems)) if problems else None


@dataclass
class Verified:
    """What ``verify_build`` checked and what it found."""

    shards: int
    bytes: int
    bad: list[BadShard]


def verify_build(
    manifest: Manifest, files: Files | None = None, *, workers: int = 4, show_progress: bool = True
) -> Verified:
    """Every shard and index of every split against the manifest, ``workers`` at a time
    (``files``: where they are; default the folder the manifest was read from)."""
    assert files is not None or manifest.root is not None, "manifest not read from disk"
    fs = files if files is not None else LocalFiles(manifest.root)  # type: ignore[arg-type]
    shards = [s for info in manifest.splits.values() for s in info.shards]
    total = sum(s.bytes for s in shards)
    bar = progress(total=len(shards), desc="verify shards", unit="shard", enabled=show_progress)
    bad = []
    with ThreadPoolExecutor(max(1, workers)) as pool, bar:
        for found in pool.map(lambda s: check_shard(fs, s), shards):
            bar.update(1)
            if found is not None:
                bad.append(found)
    return Verified(shards=len(shards), bytes=total, bad=bad)


_seen: set[tuple[str, str]] = set()  # (tar, sha256) this process has verified
_seen_lock = threading.Lock()


def verify_first_open(
    files: Files, shards: Iterable[ShardInfo], *, workers: int = 4, every_rank: bool = False
) -> None:
    """Check each of ``shards`` this process has not checked yet (``loader.verify =
    "first_open"``); raises ``BadShard`` naming the first bad one (``every_rank``: the shards
    are this rank's own, so no other rank reports them)."""
    with _seen_lock:
        todo = [s for s in shards if (files.name(s.tar), s.sha256) not in _seen]
    with ThreadPoolExecutor(max(1, min(workers, len(todo) or 1))) as pool:
        for s, found in zip(todo, pool.map(lambda s: check_shard(files, s), todo)):
            if found is not None:
                found.every_rank = every_rank
                raise found
            with _seen_lock:
                _seen.add((files.name(s.tar), s.sha256))


def diagnose(files: Files, shards: list[ShardInfo], message: str) -> BadShard | None:
    """Which shard made a read fail (``message``: the reader's error text), or None when every
    shard is intact (the fault is elsewhere). Shards the message names are checked in full,
    the others by size."""
    named = [s for s in shards if files.name(s.tar) in message]
    for s in named:
        found = check_shard(files, s)
        if found is not None:
            return found
    for s in shards:
        found = check_shard(files, s, checksums=False)
        if found is not None:
            return found
    if named:  # intact on disk now, yet its read failed: a transient I/O error
        return BadShard(files.name(named[0].tar), f"read failed: {reader_reason(message)}")
    return None


def reader_reason(message: str) -> str:
    """The line of a DALI error that says what went wrong (after its traceback of the graph)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    after = [ln for i, ln in enumerate(lines) if i and lines[i - 1].startswith("encountered")]
    return (after or lines or ["unknown error"])[0][:300]
