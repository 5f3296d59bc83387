"""The shard cache's files: private folders, one owner per folder, no symlinks, verified indexes.

Why each rule (docs/pipeline.md, "Shards in object storage"):

- one process per folder: the cache truncates and rewrites its files in place, so a second
  process in the same folder would destroy shards the first one's reader holds. A folder is
  claimed with an exclusive ``fcntl.flock`` on ``.lock`` for the cache's life; when it is
  held (another job, ``python -m eval`` beside training, a sweep on one ``MUSICSTREAM_CACHE``)
  the next folder beside it (``rank0-1``, ``rank0-2`` ...) is used, and when every one is held
  the claim is refused with one line naming the folder and the holder. A lock that cannot be
  taken at all (a file system without ``flock``) counts as held: never proceed unlocked.
- private: folders are created ``0700`` and must be owned by the user and not be symlinks;
  files are opened with ``O_NOFOLLOW``, so a link planted in a shared scratch folder cannot
  redirect a write.
- names: a shard's relative name is flattened (``train/000001.tar`` -> ``train-000001.tar``);
  two names that flatten to one file are refused.
- an index is used only when it matches the manifest (sha256, or size for builds that
  record none); a mismatching one is fetched again, atomically.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from shards.base.atomic import atomic_path, write_error, write_faults
from shards.base.logs import get_logger, log_per_rank
from shards.format import ShardInfo, storage

SLOTS = 8
"""Folders tried for one rank of one build (the folder itself, then ``-1`` ... ``-7`` beside it)."""
BLOCK = 32 << 20
"""Bytes per ranged read of a shard (one GET each: a 256-MB shard is 8 requests, none per sample)."""
LOCK = ".lock"


class CacheBusy(ValueError):
    """Every cache folder for this rank is held by another process (or cannot be locked)."""


def private_dir(path: Path, own: int = 3) -> Path:
    """``path`` as a folder of this user: missing parts created ``0700``; it and the ``own - 1``
    folders above it (the cache's own levels: build, split, rank) must be real folders (not
    symlinks) owned by the user, and are made ``0700``."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    with write_faults(path, what="the shard cache folder"):
        for p in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                os.mkdir(p, 0o700)
    for p in reversed([path, *path.parents][:own]):
        _check_own(p)
    return path


def _check_own(path: Path) -> None:
    with write_faults(path, what="the shard cache folder"):
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path}: not a folder (a symlink or a file): the shard cache refuses it; remove it")
    if st.st_uid != os.getuid():
        raise ValueError(
            f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}): the shard cache uses "
            "only its user's folders; set loader.cache_dir (or MUSICSTREAM_CACHE) to a folder of yours"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        with write_faults(path, what="the shard cache folder's permissions"):
            os.chmod(path, 0o700)


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """A file descriptor for ``path`` that never follows a symlink (``O_NOFOLLOW``), mode 0600."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symlink in the shard cache; refused (remove it)") from None
        raise write_error(e, path, what=path.name) or e from None


class FolderLock:
    """An exclusive ``flock`` on ``FOLDER/.lock``, held until :meth:`release` (or process exit)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None
        self.reason = ""  # why it could not be taken: the holder, or the file system's refusal
        self.unlockable = False  # the file system refused flock itself

    def acquire(self) -> bool:
        fd = open_private(self.folder / LOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self.reason = f"in use by {holder(self.folder)}"
            else:  # no flock on this file system: counts as held
                self.reason = f"cannot be locked ({os.strerror(e.errno or 0)})"
                self.unlockable = True
            return False
        self.fd = fd
        with write_faults(self.folder, what=LOCK):
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def holder(folder: Path) -> str:
    """Who holds ``folder``'s lock, as its ``.lock`` file says (``pid P on host H``)."""
    with contextlib.suppress(OSError):
        text = (folder / LOCK).read_text().strip()
        if text:
            return text
    return "another process"


def claim_folder(base: Path) -> tuple[Path, FolderLock]:
    """The first of ``base``, ``base-1`` ... ``base-7`` this process can lock (created private)."""
    refused: list[FolderLock] = []
    for k in range(SLOTS):
        folder = private_dir(base if k == 0 else base.with_name(f"{base.name}-{k}"))
        lock = FolderLock(folder)
        if lock.acquire():
            if refused:  # said once per cache: the job reads its shards into a folder of its own
                log_per_rank(
                    get_logger("cache"), logging.INFO, f"{base}: {refused[0].reason}; using {folder}"
                )
            return folder, lock
        refused.append(lock)
        if lock.unlockable:  # the same file system for every folder beside it: never run unlocked
            raise CacheBusy(
                f"{base}: shard cache folder {lock.reason}: the cache never runs unlocked; put "
                "loader.cache_dir (or MUSICSTREAM_CACHE) on a local file system"
            )
    raise CacheBusy(
        f"{base}: shard cache folder {refused[0].reason}; the {SLOTS - 1} folders beside it are "
        "held too: stop a job or give this one its own loader.cache_dir"
    )


def local_name(rel: str) -> str:
    """A build file's flat name in a cache folder (``train/000000.idx`` -> ``train-000000.idx``)."""
    return rel.replace("/", "-")


def local_names(shards: Sequence[ShardInfo], where: str) -> tuple[list[str], list[str]]:
    """Flat file names of each shard's tar and index in one cache folder; names that would
    collide (``a/b.tar`` and ``a-b.tar``, or a marker's name) are refused naming both."""
    tars = [local_name(s.tar) for s in shards]
    idxs = [local_name(s.index) for s in shards]
    seen: dict[str, str] = {}
    for rel, name in [
        *zip([s.tar for s in shards], tars),
        *((c[0], local_name(c[0])) for s in shards for c in s.companions()),
        *((s.tar + " (its marker)", t + ".sha256") for s, t in zip(shards, tars)),
    ]:
        if name in seen or name.startswith("."):
            other = seen.get(name, LOCK)
            raise ValueError(
                f"{where}: {rel!r} and {other!r} map to one shard cache file {name!r}; "
                "rename the shards (python -m shards build writes SPLIT/NNNNNN.tar)"
            )
        seen[name] = rel
    return tars, idxs


def stream_into(
    url: str, fd: int, path: Path, need: int, on_block: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Write the object ``url`` (``need`` bytes, as the manifest says) into the open file ``fd``
    (``path``) from its start, in ranged reads of ``BLOCK`` bytes (one GET each, no HEAD), hashing
    what is written: (sha256, bytes). A local fault (full disk, read-only folder) is a
    ``WriteError`` naming the cache folder and the room needed, never blamed on the store."""
    h, size = hashlib.sha256(), 0
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        while size < need:
            chunk = storage.read_bytes(
                url, size, min(size + BLOCK, need)
            )  # a ranged GET; errors: the store's
            if not chunk:
                break  # shorter than the manifest says: the sha256 check names it
            _write_all(fd, chunk)
            h.update(chunk)
            size += len(chunk)
            if on_block is not None:
                on_block(size)
        os.fsync(fd)
    except OSError as e:  # only the disk's: a store's failure is a StorageError (a ValueError)
        raise _disk_fault(e, path, need, size) from None
    return h.hexdigest(), size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _disk_fault(e: OSError, path: Path, need: int | None, written: int) -> OSError:
    err = write_error(
        e, path, what=f"the cached copy of {path.name} (shard cache)", need=need, written=written
    )
    return err or e


def copy_matches(path: Path, sha256: str | None, size: int | None) -> bool:
    """The local copy is the file the manifest records: its sha256, else (older builds) its size."""
    if not path.is_file() or path.is_symlink():
        return False
    if sha256 is not None:
        return storage.sha256_file(path) == sha256
    return size is None or path.stat().st_size == size


def fetch_copy(url: str, path: Path, sha256: str | None, size: int | None, what: str = "index") -> bool:
    """Make ``path`` the manifest's small file at ``url`` (an index or ids file: fetched
    atomically unless the local copy matches); True when fetched. A fetched file that does not
    match is one line naming ``url``."""
    if copy_matches(path, sha256, size):
        return False
    # small: one GET (no HEAD when the size is recorded); written below, so a disk fault is the disk's
    data = storage.read_bytes(url, 0, size) if size else storage.read_bytes(url)
    digest = hashlib.sha256(data).hexdigest()
    if (sha256 is not None and digest != sha256) or (size is not None and len(data) != size):
        raise ValueError(
            f"{url}: {what} of {len(data)} bytes with sha256 {digest[:12]}..., the manifest records "
            f"{size} bytes, {str(sha256)[:12]}... (a build replaced under the manifest? re-run "
            "`python -m shards copy`)"
        )
    with atomic_path(path, what=f"the cached {what} {path.name} (shard cache)", need=len(data)) as tmp:
        with opened(tmp, os.O_WRONLY) as fd:
            _write_all(fd, data)
    return True


@contextlib.contextmanager
def opened(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Iterator[int]:
    fd = open_private(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def truncate(path: Path, size: int = 0) -> None:
    """``path`` cut to ``size`` bytes in place (the inode a reader holds stays): a file the cache
    does not hold complete is short, so a read of it fails loudly instead of returning zeros."""
    with write_faults(path, what=f"{path.name} (shard cache)"), opened(path) as fd:
        os.ftruncate(fd, size)
