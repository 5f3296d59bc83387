"""The build folder as the builder sees it: a local folder or an object-store prefix (``s3://``).

Every step of a build (plan, each shard task, merge, the driver lock) reads and writes the
output only through ``BuildOutput``, so the same code runs whether a shard task writes to a
local disk or to a bucket. A shard is written into a local *staging* folder by
``shards.writer.ShardWriter`` (atomic renames), then moved (local output: it already is in
place) or uploaded as whole objects (an object appears only once its upload completes, so a
killed task never leaves half an object under its final name).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shards.base.atomic import atomic_write_text

URL_SCHEMES = ("s3://", "gs://", "gcs://")


def is_url(where: str | Path) -> bool:
    """An object-store location (``s3://bucket/prefix``) rather than a local path."""
    return isinstance(where, str) and where.startswith(URL_SCHEMES)


class BuildOutput:
    """One build folder: relative paths (``train/000000.tar``, ``.build/plan.json``) in, bytes out."""

    def __init__(self, where: str | Path) -> None:
        self.where = str(where).rstrip("/") if is_url(where) else Path(where)
        self.local: Path | None = None if is_url(where) else Path(where)
        self._remote = None if self.local is not None else _remote_store(str(self.where))

    def __str__(self) -> str:
        return str(self.where)

    def __reduce__(self) -> tuple[type[BuildOutput], tuple[str | Path]]:  # pickled to shard tasks
        return BuildOutput, (self.where,)

    def url(self, rel: str) -> str:
        """A path or URL naming ``rel`` in this output (for messages)."""
        return f"{self.where}/{rel}" if self.local is None else str(self.local / rel)

    def read_text(self, rel: str) -> str | None:
        """The text of ``rel``; None when it does not exist."""
        if self._remote is not None:
            return self._remote.read_text(rel)
        try:
            return (self._path(rel)).read_text()
        except FileNotFoundError:
            return None

    def read_texts(self, rels: list[str]) -> dict[str, str]:
        """Several small files at once (those that exist): commit markers, shard parts."""
        if self._remote is not None:
            return self._remote.read_texts(rels)
        out = {}
        for rel in rels:
            text = self.read_text(rel)
            if text is not None:
                out[rel] = text
        return out

    def write_text(self, rel: str, text: str) -> None:
        """Replace ``rel`` atomically (a reader sees the old or the new file, never a part)."""
        if self._remote is not None:
            self._remote.write_text(rel, text)
        else:
            atomic_write_text(self._path(rel), text)

    def create(self, rel: str, text: str) -> bool:
        """Write ``rel`` only if no such file exists; False when another writer got there first.
        Local: exclusive creation; object store: write, wait, read back (last writer wins)."""
        if self._remote is not None:
            return self._remote.create(rel, text)
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """Name -> size of the files directly in ``rel_dir`` (empty when it does not exist)."""
        if self._remote is not None:
            return self._remote.sizes(rel_dir)
        d = self._path(rel_dir)
        if not d.is_dir():
            return {}
        return {f.name: f.stat().st_size for f in d.iterdir() if f.is_file()}

    def folders(self) -> list[str]:
        """Names of the folders directly in the output (split folders, ``.build``)."""
        if self._remote is not None:
            return self._remote.folders()
        root = self.local
        assert root is not None
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    def remove(self, rel: str) -> None:
        """Delete one file (nothing when it is not there)."""
        if self._remote is not None:
            self._remote.remove(rel)
        else:
            self._path(rel).unlink(missing_ok=True)

    def remove_tree(self, rel: str) -> None:
        """Delete a folder and everything under it (nothing when it is not there)."""
        if self._remote is not None:
            self._remote.remove_tree(rel)
        else:
            shutil.rmtree(self._path(rel), ignore_errors=True)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A local folder to write shard files into, laid out like the output; ``publish``
        then makes them visible. Local output: the output itself (files renamed in place)."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            yield self.local
            return
        with tempfile.TemporaryDirectory(prefix="shard-stage-") as tmp:
            yield Path(tmp)

    def publish(self, staged: Path, rel: str) -> None:
        """Make a staged file ``staged / rel`` visible under ``rel`` (upload; local: already there)."""
        if self._remote is not None:
            self._remote.put_file(staged / rel, rel)

    def _path(self, rel: str) -> Path:
        assert self.local is not None
        return self.local / rel


def _remote_store(url: str):  # type: ignore[no-untyped-def]
    """The object-store side of ``BuildOutput`` (``shards.output_remote``, over the storage layer)."""
    from shards.output_remote import RemoteOutput

    return RemoteOutput(url)
