"""Atomic file writes: write a temp file beside the target, fsync, then rename.

A crash or a preempted job never leaves a half-written shard, index, manifest or
checkpoint under its final name; re-runs can trust any file that exists.

A write the machine refuses (a full disk, a quota, an I/O error, a read-only or
unwritable folder) is the user's to fix, not a bug: every write path turns it into one
``WriteError`` whose text names the folder, what was being written and how much room it
needs, after removing its temporary file. CLIs print it as one ``error:`` line
(``shards.base.errors.run_cli``); whatever was committed before stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600

STORAGE_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EIO: "input/output error (a failing disk or a dropped network mount)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""errno -> what the user is told: the write faults a machine really has."""

_ADVICE = {
    errno.ENOSPC: "free some space and run the same command again",
    errno.EDQUOT: "free some of your quota and run the same command again",
    errno.EFBIG: "write to a file system without a 4 GiB file limit (not FAT32)",
    errno.EIO: "check the disk or the mount (dmesg), then run the same command again",
    errno.EROFS: "write to a writable folder",
    errno.EACCES: "write to a folder you can write to",
    errno.EPERM: "write to a folder you can write to",
}


class WriteError(OSError):
    """A write the machine refused (full disk, I/O error, read-only file system): one line
    for the user naming the folder, what was written and the room it needs. Its ``errno``
    is the original one."""


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB': sizes as a user reads them in ``df -h``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _free(folder: Path) -> int | None:
    for d in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(d).free
    return None


def write_error(
    e: OSError,
    path: str | Path,
    *,
    what: str | None = None,
    need: int | None = None,
    up_to: bool = False,
    written: int = 0,
    kept: str | None = None,
) -> WriteError | None:
    """The ``WriteError`` for ``e`` raised while writing ``path`` (None: not a storage fault).

    ``need``: bytes the write needs (``up_to``: at most that many); unknown, the message says
    it needs more than the ``written`` bytes that fitted. ``kept``: what survives, for the user."""
    if isinstance(e, WriteError):
        return e
    reason = STORAGE_FAULTS.get(e.errno or 0)
    if reason is None:
        return None
    path = Path(path)
    text = f"{path.parent}: {reason} while writing {what or path.name}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        room = f"needs {'up to ' if up_to else ''}{human_bytes(need)}" if need else None
        room = room or (f"needs more than the {human_bytes(written)} written" if written else None)
        free = _free(path.parent)
        text += (
            f" ({', '.join(p for p in (room, None if free is None else f'{human_bytes(free)} free') if p)})"
        )
    text += f"; {_ADVICE[e.errno or 0]}"
    if kept:
        text += f" ({kept})"
    out = WriteError(text)
    out.errno = e.errno
    return out


@contextlib.contextmanager
def write_faults(
    path: str | Path,
    *,
    what: str | None = None,
    need: int | None = None,
    up_to: bool = False,
    kept: str | None = None,
) -> Iterator[None]:
    """Turn a storage fault raised inside the block (writing ``path``) into a ``WriteError``."""
    try:
        yield
    except OSError as e:
        err = write_error(e, path, what=what, need=need, up_to=up_to, kept=kept)
        if err is None:
            raise
        raise err from None


def remove_quietly(path: Path) -> None:
    """Delete a temporary file; a second fault while cleaning up never hides the first."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(
    path: str | Path,
    *,
    what: str | None = None,
    need: int | None = None,
    up_to: bool = False,
    kept: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any failure the temporary file is removed and ``path`` keeps its previous content; a
    storage fault (full disk, I/O error, read-only folder) becomes one ``WriteError``
    (``what``/``need``/``up_to``/``kept`` word it, see ``write_error``)."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as e:
        written = _size(tmp_path)
        if tmp_path is not None:
            remove_quietly(tmp_path)
        err = write_error(e, path, what=what, need=need, up_to=up_to, written=written, kept=kept)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp_path is not None:
            remove_quietly(tmp_path)


def _size(path: Path | None) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size if path is not None else 0
    return 0


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, what: str | None = None) -> Iterator[IO]:
    """``open()`` that only replaces ``path`` once the block finishes without error."""
    with atomic_path(path, what=what) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | Path, text: str, *, what: str | None = None) -> None:
    """``path`` holds exactly ``text`` afterwards, or (on any error) what it held before."""
    data = text.encode()
    with atomic_path(path, what=what, need=len(data)) as tmp:
        tmp.write_bytes(data)
