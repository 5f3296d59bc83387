"""The one shard writer: size-bounded WebDataset tars with a DALI index beside each.

Importers only yield records; this writer owns the on-disk layout (``SPLIT/%06d.tar``
plus ``SPLIT/%06d.idx``, and ``SPLIT/%06d.ids`` when every sample has an ``ids`` member), the
checksums and the atomic renames. The index is written here, from the offsets we just wrote,
so DALI never has to scan a tar at start-up; the ids file holds the shard's ``ids`` members
back to back, so a trainer learns every sample's labels from a store in one GET per shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tarfile
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from shards.base.atomic import atomic_path, remove_quietly, write_error
from shards.format.manifest import IDS_EXT, ShardInfo

INDEX_VERSION = "v1.2"  # the version DALI's wds2idx writes
MAX_KEY = 80  # characters: KEY.EXT stays within USTAR's 100-character member names
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def sanitize_key(text: str) -> str:
    """A tar-member stem DALI and webdataset both split correctly: no dots, no slashes."""
    key = _KEY_BAD.sub("_", str(text)).strip("_")
    if not key:
        raise ValueError(f"cannot make a shard key from {text!r}")
    return key[:MAX_KEY]


class _HashingFile(io.RawIOBase):
    """File wrapper that hashes and counts every byte written through it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.f.write(data)
        self.h.update(data)
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n


def index_line(ext: str, offset: int, size: int, name: str) -> str:
    """One member's entry in a DALI index line (a sample's line lists each of its members)."""
    return f"{ext} {offset} {size} {name}"


def index_text(lines: list[str]) -> bytes:
    """The whole DALI index file: version, sample count, one line per sample."""
    return (f"{INDEX_VERSION} {len(lines)}\n" + "\n".join(lines) + "\n").encode()


def shard_name(index: int) -> str:
    return f"{index:06d}"


class ShardWriter:
    """Write samples of one split into ``folder/split/%06d.tar`` shards of at most
    ``max_bytes`` each (a single sample larger than that gets a shard of its own).

    ``write(key, {ext: bytes})`` adds one sample; ``output`` lists the finished shards.
    A storage fault (full disk, I/O error) removes the open shard's temporary file and raises
    one ``WriteError``; the shards finished before it stay as they are. ``room``: the bytes a
    shard is expected to need, for that message (default ``max_bytes``; a writer whose shard
    the plan already cut has no meaningful bound).
    """

    def __init__(
        self,
        folder: str | Path,
        split: str,
        *,
        max_bytes: int = 256 << 20,
        start: int = 0,
        room: int | None = None,
    ) -> None:
        self.dir = Path(folder) / split
        self.split = split
        self.max_bytes = max_bytes
        self.room = max_bytes if room is None else room
        self.next_index = start
        self.output: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._hf: _HashingFile | None = None
        self._raw: io.BufferedWriter | None = None
        self._lines: list[str] = []
        self._ids: list[bytes | None] = []
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, et: type | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self._abort()

    def _open(self) -> None:
        name = shard_name(self.next_index)
        self._tar_path = self.dir / f"{name}.tar"
        self._ctx = atomic_path(self._tar_path, what=self._what(), need=self.room, up_to=True)
        tmp = self._ctx.__enter__()
        self._raw = open(tmp, "wb")
        self._hf = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hf, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[arg-type]
        self._lines, self._ids, self._keys = [], [], set()

    def _what(self, suffix: str = ".tar") -> str:
        return f"shard {self.split}/{shard_name(self.next_index)}{suffix}"

    def _kept(self) -> str | None:
        n = self.next_index
        return (
            f"the {n} finished shard{'s' if n != 1 else ''} of {self.split} before it are kept" if n else None
        )

    def _fail(self, e: OSError) -> NoReturn:
        """Abort the open shard; a storage fault becomes the one ``WriteError`` the user reads."""
        written = self._hf.tell() if self._hf is not None and self._tar is not None else 0
        self._abort()
        path = self.dir / f"{shard_name(self.next_index)}.tar"
        need = max(self.room, written)
        err = write_error(e, path, what=self._what(), need=need, up_to=True, kept=self._kept())
        if err is None:
            raise e
        raise err from None

    def write(self, key: str, components: dict[str, bytes]) -> None:
        """Add one sample; ``key`` must already be sanitised and unique within the shard."""
        self.write_group([(key, components)])

    def write_group(self, samples: list[tuple[str, dict[str, bytes]]]) -> None:
        """Add samples that must share a shard (the segments of one track: a shard then ends
        only between tracks, so resuming after a finished shard never splits a track)."""
        for key, _ in samples:
            if key != sanitize_key(key):
                raise ValueError(f"shard key {key!r} is not sanitised (use sanitize_key)")
        size = sum(512 + ((len(member) + 511) // 512) * 512 for _, c in samples for member in c.values())
        try:
            if self._tar is not None and self._lines and self._hf.tell() + size > self.max_bytes:  # type: ignore[union-attr]
                self._finish()
            if self._tar is None:
                self._open()
            for key, components in samples:
                self._add(key, components)
        except OSError as e:
            self._fail(e)

    def _add(self, key: str, components: dict[str, bytes]) -> None:
        if key in self._keys:
            raise ValueError(f"duplicate shard key {key!r} in {self._tar_path}")
        self._keys.add(key)
        parts = []
        for ext, data in components.items():
            name = f"{key}.{ext}"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            # fixed metadata: a shard's bytes depend only on its samples, not on who wrote it when
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            offset = self._tar.offset + 512  # type: ignore[union-attr]  # USTAR: one header block
            self._tar.addfile(info, io.BytesIO(data))  # type: ignore[union-attr]
            parts.append(index_line(ext, offset, len(data), name))
        self._lines.append(" ".join(parts))
        self._ids.append(components.get(IDS_EXT))

    def _finish(self) -> None:
        """Close the tar, write its index, then commit the tar: an index is never missing
        beside a committed tar, and a fault leaves no temporary file."""
        assert self._tar is not None and self._hf is not None and self._ctx is not None
        self._tar.close()
        self._raw.close()  # type: ignore[union-attr]
        idx_path = self._tar_path.with_suffix(".idx")
        index = index_text(self._lines)
        ids = _ids_file(self._ids)
        ids_path = self._tar_path.with_suffix(".ids")
        written: list[Path] = []
        try:
            for path, data in ((idx_path, index), (ids_path, ids)):
                if data is not None:
                    with atomic_path(
                        path, what=self._what(path.suffix), need=len(data), kept=self._kept()
                    ) as tmp:
                        tmp.write_bytes(data)
                    written.append(path)
        except BaseException:
            for path in written:
                remove_quietly(path)
            raise  # the tar is still open: the caller's abort drops its temporary file
        try:
            self._ctx.__exit__(None, None, None)  # fsync + rename the tar
        except BaseException:
            for path in written:
                remove_quietly(path)
            self._tar = None
            raise
        root = self.dir.parent
        self.output.append(
            ShardInfo(
                tar=self._tar_path.relative_to(root).as_posix(),
                index=idx_path.relative_to(root).as_posix(),
                num_samples=len(self._lines),
                sha256=self._hf.h.hexdigest(),
                bytes=self._hf.tell(),
                index_sha256=hashlib.sha256(index).hexdigest(),
                index_bytes=len(index),
                ids=None if ids is None else ids_path.relative_to(root).as_posix(),
                ids_sha256=None if ids is None else hashlib.sha256(ids).hexdigest(),
                ids_bytes=None if ids is None else len(ids),
            )
        )
        self._tar = None
        self.next_index += 1

    def _abort(self) -> None:
        """Drop the open shard's temporary file. Never raises: closing a stream that cannot
        flush (the disk that just filled up) fails again, and that must not hide the first fault."""
        if self._tar is not None and self._ctx is not None:
            self._tar = None
            with contextlib.suppress(OSError):
                self._raw.close()  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def close(self) -> None:
        if self._tar is not None:
            try:
                self._finish()
            except OSError as e:
                self._fail(e)


def _ids_file(members: list[bytes | None]) -> bytes | None:
    """The shard's ``ids`` members back to back (one row per sample, in index order), or None
    when a sample has none or their sizes differ (older layouts: no ids file)."""
    rows = [m for m in members if m is not None]
    if not rows or len(rows) != len(members) or any(len(m) != len(rows[0]) for m in rows):
        return None
    return b"".join(rows)


MAX_INDEX_BYTES = 64 << 20
"""Larger is no index of a shard (a line of ~100 bytes per sample): refused before reading it."""


def read_index(path: str | Path) -> list[dict[str, tuple[int, int]]]:
    """Parse a DALI index: one dict ``ext -> (offset, size)`` per sample; a damaged or hostile
    one (too large, not numbers, negative offsets or sizes) is one error naming the file."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_INDEX_BYTES:
        raise ValueError(f"{path}: {size} bytes, over the {MAX_INDEX_BYTES >> 20} MiB of any shard index")
    lines = path.read_text(errors="replace").splitlines()
    if not lines or not lines[0].startswith(INDEX_VERSION + " "):
        raise ValueError(f"{path}: not a DALI {INDEX_VERSION} webdataset index")
    samples = []
    try:
        n = int(lines[0].split()[1])
        for ln in lines[1 : n + 1]:
            f = ln.split()
            if len(f) % 4:
                raise ValueError(f"line {ln!r}")
            samples.append({f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)})
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: malformed index ({e})") from None
    bad = next(((k, v) for s in samples for k, v in s.items() if min(v) < 0), None)
    if bad is not None:
        raise ValueError(f"{path}: negative offset or size for member {bad[0]} {bad[1]}")
    if len(samples) != n:
        raise ValueError(f"{path}: header says {n} samples, found {len(samples)}")
    return samples
