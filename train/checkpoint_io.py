"""Checkpoint files: atomic writes that survive a full disk, reads that name a damaged file,
and the newest step file that still loads.

A write goes to a temporary file beside the target and is renamed only when complete, so a
failed write (a full disk, an I/O error) leaves the previous checkpoints as they were and
is one ``WriteError`` line. The folder is fsynced after the rename, so the new name is on disk
before the caller prunes older checkpoints (a power loss then cannot leave none). On a file
system without atomic rename a kill during the write can still leave a truncated newest file;
``newest_loadable`` reports it and takes the one before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from shards.base.atomic import atomic_path
from shards.base.errors import first_line, say_warning


class _KeepError:
    """A file wrapper that remembers the ``OSError`` of a failed write: ``torch.save`` turns it
    into a ``RuntimeError`` without the errno, and the errno says whether the disk is full."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, b: bytes) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested state: about what the checkpoint file needs."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_checkpoint(state: dict[str, Any], path: Path, *, kept: str | None = None) -> None:
    """torch.save through a temp file + rename (a crash never leaves half a checkpoint); a
    storage fault is one ``WriteError`` (``kept``: what the user still has)."""
    path = Path(path)
    need = _tensor_bytes(state)
    with atomic_path(path, what=f"checkpoint {path.name}", need=need, kept=kept) as tmp, open(tmp, "wb") as f:
        sink = _KeepError(f)
        try:
            torch.save(state, sink)  # type: ignore[arg-type]  # a file-like object
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise
    fsync_folder(path.parent)  # before the caller prunes the older ones


def fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a file's fsync does not cover its directory
    entry); quiet where the file system cannot fsync a directory."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (no pickled objects)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises various types for corrupt files
        size = p.stat().st_size
        raise ValueError(
            f"{p}: not a loadable musicstream checkpoint ({size} bytes, truncated or damaged: {first_line(e)})"
        ) from None


def newest_loadable(files: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The newest of ``files`` (sorted oldest first) that loads, with its state. Each newer one
    that does not (a kill during its write where rename is not atomic) is one warning line."""
    for p in reversed(files):
        try:
            return p, read_checkpoint(p)
        except ValueError as e:
            say_warning(f"{e}; skipped, resuming from an older checkpoint")
    return None
