"""Storage faults on real files, for the tests of what a user sees when the machine refuses a write.

Two ways to fill a disk: a size-limited tmpfs (``tmpfs``: needs root and mount permission,
the test skips cleanly elsewhere) and ``FailingWrites``, which makes every ``open()``-ed
file whose name matches a pattern raise an ``OSError`` with a chosen errno once a number
of bytes went through (always available; the rest of the file system is untouched).
"""

from __future__ import annotations

import builtins
import contextlib
import errno as errnos
import fnmatch
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shards.base import atomic


@contextlib.contextmanager
def tmpfs(path: Path, size: int, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (skips the test where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if run.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize_tmpfs(path: Path, size: int) -> None:
    """Grow (free space on) a mounted tmpfs."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class _Faulty:
    """A file whose writes go through ``FailingWrites.charge`` first."""

    def __init__(self, f: Any, owner: FailingWrites, name: str) -> None:
        self._f, self._owner, self._name = f, owner, name

    def write(self, b: Any) -> int:
        self._owner.charge(self._name, len(b))
        return self._f.write(b)

    def close(self) -> None:
        """A stream whose write failed cannot flush either (what a full disk does to a buffer)."""
        self._f.close()
        if self._owner.hits:
            raise OSError(self._owner.err, os.strerror(self._owner.err), self._name)

    def __getattr__(self, k: str) -> Any:
        return getattr(self._f, k)

    def __enter__(self) -> _Faulty:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FailingWrites:
    """Files opened for writing under ``folder`` whose name matches ``pattern`` (fnmatch)
    raise ``OSError(err)`` once ``after`` bytes were written to them in all; the free space
    the messages report is ``free`` bytes."""

    def __init__(
        self, folder: Path, pattern: str, *, err: int = errnos.ENOSPC, after: int = 0, free: int = 3000
    ):
        self.folder, self.pattern, self.err, self.after, self.free = Path(folder), pattern, err, after, free
        self.written = 0
        self.hits: list[str] = []

    def charge(self, name: str, n: int) -> None:
        if self.written + n > self.after:
            self.hits.append(name)
            raise OSError(self.err, os.strerror(self.err), name)
        self.written += n

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FailingWrites:
        real = builtins.open

        def fake_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            f = real(file, mode, *args, **kw)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax"):
                p = Path(os.fspath(file)).absolute()
                if p.is_relative_to(self.folder.absolute()) and fnmatch.fnmatch(p.name, self.pattern):
                    return _Faulty(f, self, str(p))
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(atomic, "_free", lambda folder: self.free)
        return self


def temp_files(folder: Path) -> list[Path]:
    """Temporary files an atomic write would leave (``.NAME.XXXX.tmp``) anywhere under ``folder``."""
    return sorted(p for p in Path(folder).rglob(".*.tmp"))


_BAR = re.compile(r".*\d+%\|.*\| *\d+/\d+ \[")  # a progress bar's refresh (tqdm on stderr)


def error_lines(err: str) -> list[str]:
    """What a user reads on stderr besides progress bars: the lines a fault must keep to one."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not _BAR.match(ln)]
