"""One small API for "a local folder or an object-store prefix" (``s3://``, ``gs://``).

Every stage that names a build (``--data.shards``, ``--out``, ``shards copy``) goes through
these functions, so a local path and ``s3://bucket/prefix`` behave the same and fail the same
way: a store's failure becomes ONE line (:class:`StorageError`, a ``ValueError``) naming the URL
and the fix, for the four things users meet: no credentials, endpoint unreachable, bucket or
key missing, access denied (or credentials rejected).

Remote access uses fsspec (``s3fs``; ``gcsfs`` for ``gs://``), imported on first use, so a
local-only user needs neither. Credentials come only from the standard chain (environment,
profiles, instance metadata): this module never takes, stores or prints a key; :func:`redact`
strips any that a library's message might echo, and URLs carrying ``user:secret@`` are refused.
Environment a user sets (read by botocore and by DALI's own S3 client alike): ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` or ``AWS_PROFILE``, ``AWS_REGION``.

Local writes are atomic (``shards.base.atomic``); a remote object is written by one PUT (or one
multipart upload, completed in one call), which stores are atomic about: a reader sees the old
object or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shards.base.atomic import atomic_path, atomic_write_text
from shards.format.storage_errors import (
    SECRET_VARS,
    StorageError,
    StorageNotFound,
    explain,
    redact,
    remember_credentials,
)

__all__ = [
    "SECRET_VARS",
    "StorageError",
    "StorageNotFound",
    "explain",
    "redact",
]  # re-exported: one import for callers

Location = str | Path
"""A local path, or a URL ``s3://bucket/key`` / ``gs://bucket/key``."""

REMOTE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
"""URL scheme -> the fsspec package that serves it (s3fs comes with ``musicstream[cloud]``; gcsfs is
installed by hand for ``gs://``)."""
SHA256_META = "sha256"
"""User-metadata key holding an object's sha256 (hex), written by :func:`upload` / :func:`write_bytes`."""
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or ``stat``) tells about one object or file."""

    size: int
    sha256: str | None = None  # from the object's user metadata; None when not recorded (and locally)


# --- locations --------------------------------------------------------------------------------


def is_remote(location: Location) -> bool:
    """True for an object-store URL (``s3://``, ``gs://``), False for a local path."""
    m = _URL.match(str(location))
    return bool(m) and m.group(1).lower() in REMOTE_SCHEMES  # type: ignore[union-attr]


def check_location(location: Location) -> Location:
    """``location`` itself, refused with one line if it is a URL this project cannot use (an unknown
    scheme, or credentials written into it: they belong in the environment, never in a config)."""
    text = str(location)
    m = _URL.match(text)
    if not m:
        return location
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{text}: unsupported URL scheme {scheme}://; use a local path, s3:// or gs://")
    if "@" in rest.split("/", 1)[0]:
        raise StorageError(
            f"{scheme}://...@{rest.split('@', 1)[1]}: credentials in a URL are refused (they would "
            "be stored in configs and logs); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if not rest.split("/", 1)[0]:
        raise StorageError(f"{text}: no bucket in the URL (expected {scheme}://BUCKET/PREFIX)")
    return location


def join(base: Location, *parts: str) -> Location:
    """``base / part / ...``: a ``Path`` for a local base, a URL string for a remote one."""
    if not is_remote(base):
        return Path(base).joinpath(*parts)
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def parent(location: Location) -> Location:
    """The folder (prefix) holding ``location``."""
    if not is_remote(location):
        return Path(location).parent
    return str(location).rstrip("/").rsplit("/", 1)[0]


def basename(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def relative_to(location: Location, base: Location) -> str:
    """``location``'s name below ``base``, with ``/`` separators."""
    loc, root = str(location).rstrip("/"), str(base).rstrip("/")
    if not is_remote(location):
        return Path(location).resolve().relative_to(Path(base).resolve()).as_posix()
    if not loc.startswith(root + "/"):
        raise ValueError(f"{loc} is not under {root}")
    return loc[len(root) + 1 :]


# --- the store behind a location --------------------------------------------------------------

_FS_LOCK = threading.Lock()
_FS_CACHE: dict[tuple[str, int], Any] = {}


def _env_key() -> int:
    """Identity of the environment a client was made from (in memory only, never stored): a
    changed endpoint or credential gets a new client, as DALI's own client would in a new process."""
    names = sorted(n for n in os.environ if n.startswith(("AWS_", "GOOGLE_", "GCS")))
    return hash(tuple((n, os.environ[n]) for n in names))


def endpoint() -> str | None:
    """The S3 endpoint in use (``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``); None: AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _filesystem(location: Location) -> Any:
    """The fsspec filesystem serving ``location``'s scheme, made once per environment."""
    scheme = str(location).split("://", 1)[0].lower()
    package = REMOTE_SCHEMES[scheme]
    key = (scheme, _env_key())
    with _FS_LOCK:
        if key in _FS_CACHE:
            return _FS_CACHE[key]
        if importlib.util.find_spec(package) is None:
            raise StorageError(
                f"{location}: {scheme}:// needs the {package} package: "
                + ("pip install 'musicstream[cloud]'" if package == "s3fs" else f"pip install {package}")
            )
        if scheme == "s3":
            with storage_errors(location):  # a broken profile: one line
                remember_credentials()
            s3fs = importlib.import_module("s3fs")
            fs = s3fs.S3FileSystem(
                endpoint_url=endpoint(),
                use_listings_cache=False,
                skip_instance_cache=True,
                config_kwargs={"connect_timeout": 10, "read_timeout": 120},
            )
        else:
            gcsfs = importlib.import_module("gcsfs")
            fs = gcsfs.GCSFileSystem(use_listings_cache=False, skip_instance_cache=True)
        _FS_CACHE[key] = fs
        return fs


def _key(location: Location) -> str:
    """``bucket/key`` as fsspec names it."""
    return str(location).split("://", 1)[1].rstrip("/")


@contextlib.contextmanager
def storage_errors(location: Location) -> Iterator[None]:
    """Turn a remote store's exception inside the block into :func:`explain`'s one line."""
    if not is_remote(location):
        yield
        return
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # a store's failure of any kind: one line, never a traceback
        raise explain(e, location, endpoint()) from None


def check_access(prefix: Location, *, must_exist: bool = True) -> None:
    """Fail fast, before any pipeline is built, if ``prefix`` cannot be listed: one line naming the
    URL and the fix (credentials, endpoint, bucket, access; with ``must_exist``, a prefix holding
    nothing). A local path: only ``must_exist`` is checked."""
    check_location(prefix)
    if not is_remote(prefix):
        if must_exist and not Path(prefix).exists():
            raise FileNotFoundError(f"{prefix}: no such folder")
        return
    fs = _filesystem(prefix)
    try:
        with storage_errors(prefix):
            fs.ls(_key(prefix), detail=False)  # one LIST: the request that tells every failure apart
    except StorageNotFound as e:
        if must_exist or e.bucket:
            raise


# --- reading ----------------------------------------------------------------------------------


def exists(location: Location) -> bool:
    """Whether a file or object (or a non-empty prefix) is there."""
    if not is_remote(location):
        return Path(location).exists()
    with storage_errors(location):
        return bool(_filesystem(location).exists(_key(location)))


def stat(location: Location) -> ObjectInfo:
    """Size (and the sha256 recorded in the object's metadata) of one file or object, without
    reading its bytes; FileNotFoundError / :class:`StorageError` when it is not there."""
    if not is_remote(location):
        return ObjectInfo(size=Path(location).stat().st_size)
    fs = _filesystem(location)
    with storage_errors(location):
        info = fs.info(_key(location))
        if info.get("type") == "directory":
            raise StorageNotFound(f"{location}: a prefix, not an object")
        meta = info.get("metadata") or (fs.metadata(_key(location)) if hasattr(fs, "metadata") else {})
    return ObjectInfo(size=int(info["size"]), sha256=(meta or {}).get(SHA256_META))


def list_files(prefix: Location) -> dict[str, int]:
    """Every file/object below ``prefix`` (recursively): name relative to ``prefix`` -> size in
    bytes. One paged LIST for a store, so "is every shard there, at its size" costs no HEADs."""
    if not is_remote(prefix):
        root = Path(prefix)
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    fs, base = _filesystem(prefix), _key(prefix)
    with storage_errors(prefix):
        found = fs.find(base, detail=True)
    return {
        name[len(base) + 1 :]: int(info["size"])
        for name, info in found.items()
        if name.startswith(base + "/") and info.get("type", "file") == "file"
    }


@contextlib.contextmanager
def open_read(location: Location) -> Iterator[IO[bytes]]:
    """A binary file object for reading ``location`` (streamed from a store, not downloaded whole)."""
    if not is_remote(location):
        with open(location, "rb") as f:
            yield f
        return
    with storage_errors(location), _filesystem(location).open(_key(location), "rb") as f:
        yield f


def read_bytes(location: Location, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``location`` (``[start, end)`` when given: one ranged GET, no HEAD before it)."""
    if not is_remote(location):
        return Path(location).read_bytes()[start:end]
    with storage_errors(location):
        return bytes(_filesystem(location).cat_file(_key(location), start=start, end=end))


def read_text(location: Location) -> str:
    return read_bytes(location).decode("utf-8")


# --- writing ----------------------------------------------------------------------------------


def _meta_kwargs(location: Location, sha256: str | None) -> dict[str, Any]:
    if sha256 is None:
        return {}
    scheme = str(location).split("://", 1)[0].lower()
    return {"Metadata": {SHA256_META: sha256}} if scheme == "s3" else {"metadata": {SHA256_META: sha256}}


def write_bytes(location: Location, data: bytes, *, sha256: str | None = None) -> None:
    """Write ``data`` atomically: locally temp + fsync + rename, remotely one PUT (recording
    ``sha256`` in the object's metadata when given)."""
    if not is_remote(location):
        with atomic_path(location) as tmp:
            tmp.write_bytes(data)
        return
    with storage_errors(location):
        _filesystem(location).pipe_file(_key(location), data, **_meta_kwargs(location, sha256))


def write_text(location: Location, text: str) -> None:
    if not is_remote(location):
        atomic_write_text(location, text)
        return
    write_bytes(location, text.encode("utf-8"))


class NoConditionalWrite(StorageError):
    """The store refused a conditional create (an S3-compatible server without ``If-None-Match``)."""


def create_bytes(location: Location, data: bytes) -> bool:
    """Write ``data`` only if nothing is there yet, in one request the store decides (fsspec's
    ``mode="create"``: ``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS); False when
    the object exists. :class:`NoConditionalWrite` when the store refuses the condition."""
    fs = _filesystem(location)
    try:
        fs.pipe_file(_key(location), data, mode="create")
    except FileExistsError:  # 412 Precondition Failed: another writer's object is there
        return False
    except Exception as e:
        text = f"{type(e).__name__} {e}"
        if "ConditionalRequestConflict" in text:  # a concurrent conditional write is in flight
            return False
        code = getattr(e, "errno", 0)  # s3fs: 501 NotImplemented is ENOSYS, 400 InvalidArgument EINVAL
        if isinstance(e, (TypeError, NotImplementedError)) or code in (errno.ENOSYS, errno.EINVAL):
            raise NoConditionalWrite(f"{location}: the store refused a conditional write ({text})") from None
        raise explain(e, location, endpoint()) from None
    return True


def upload(local: str | Path, dst: Location, *, sha256: str | None = None) -> None:
    """Copy the local file ``local`` to ``dst`` whole (one PUT, or one multipart upload for large
    files: atomic either way), recording ``sha256`` in its metadata; a local ``dst``: atomic copy."""
    if not is_remote(dst):
        with atomic_path(dst) as tmp:
            shutil.copyfile(local, tmp)
        return
    with storage_errors(dst):
        _filesystem(dst).put_file(str(local), _key(dst), **_meta_kwargs(dst, sha256))


def download(src: Location, local: str | Path, *, in_place: bool = False) -> Path:
    """Copy ``src`` whole into the local file ``local``: one streamed GET (large objects: parallel
    ranges). Atomic by default (a crash leaves no partial file under the final name);
    ``in_place`` rewrites an existing file's bytes without replacing the file (its inode), for a
    reader that holds it open (the shard cache, which marks completeness itself)."""
    local = Path(local)
    if in_place:
        if not is_remote(src):
            shutil.copyfile(src, local)  # opens local "wb": same inode
        else:
            with storage_errors(src):
                _filesystem(src).get_file(_key(src), str(local))
        return local
    with atomic_path(local) as tmp:
        if not is_remote(src):
            shutil.copyfile(src, tmp)
        else:
            with storage_errors(src):
                _filesystem(src).get_file(_key(src), str(tmp))
    return local


def copy_file(src: Location, dst: Location, *, sha256: str | None = None) -> None:
    """One file or object from ``src`` to ``dst``, any mix of local and remote, written atomically
    (uploads record ``sha256`` in the object's metadata when given)."""
    if not is_remote(src):
        upload(src, dst, sha256=sha256)
    elif not is_remote(dst):
        download(src, dst)
    else:
        write_bytes(dst, read_bytes(src), sha256=sha256)


def delete(location: Location) -> None:
    """Remove one file or object (missing is not an error: deleting is idempotent)."""
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    fs = _filesystem(location)
    with storage_errors(location):
        if fs.exists(_key(location)):
            fs.rm_file(_key(location))


def sha256_file(path: str | Path, *, block: int = 1 << 20) -> str:
    """Hex sha256 of a local file, read in blocks (memory stays flat)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
