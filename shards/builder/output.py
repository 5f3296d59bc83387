"""The build folder as the builder sees it: a local folder or an object-store prefix (``s3://``).

Every step of a build (plan, each shard task, merge, the driver lease) reads and writes the
output only through ``BuildOutput``, which goes through ``shards.format.storage``, the same layer
that reads shards from object storage. A shard is written into a local *staging* folder by
``shards.format.writer.ShardWriter`` (atomic renames), then published: on a local output it already is
in place; on a store each file is uploaded whole (an object appears only once its upload has
completed, so a killed task never leaves half an object under its final name).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shards.base.atomic import write_faults
from shards.base.logs import get_logger
from shards.format import storage

_READERS = 16  # small objects fetched at once (markers, parts): a store answers each in ~10-50 ms
_SETTLE_S = 0.5  # a store without conditional writes: write, wait, read back (last writer wins)
_UNCONDITIONAL: set[str] = set()  # endpoints (buckets) that refused a conditional write, warned once
log = get_logger("shards.output")


class BuildOutput:
    """One build folder: relative names (``train/000000.tar``, ``.build/plan.json``) in, bytes out."""

    def __init__(self, where: storage.Location) -> None:
        storage.check_location(where)
        self.remote = storage.is_remote(where)
        self.where: storage.Location = str(where).rstrip("/") if self.remote else Path(where)
        self.local: Path | None = None if self.remote else Path(where)

    def __str__(self) -> str:
        return str(self.where)

    def __reduce__(self) -> tuple[type[BuildOutput], tuple[storage.Location]]:  # pickled to shard tasks
        return BuildOutput, (self.where,)

    def url(self, rel: str) -> storage.Location:
        """The path or URL of ``rel`` in this output."""
        return storage.join(self.where, rel)

    def check(self) -> None:
        """Fail now, with one line, if a store cannot be listed (credentials, endpoint, bucket)."""
        storage.check_access(self.where, must_exist=False)

    def read_text(self, rel: str) -> str | None:
        """The text of ``rel``; None when it does not exist."""
        try:
            return storage.read_text(self.url(rel))
        except FileNotFoundError:  # storage.StorageNotFound is one too
            return None

    def read_texts(self, rels: list[str]) -> dict[str, str]:
        """Several small files at once (commit markers, shard parts): those that exist."""
        if not self.remote or len(rels) < 2:
            texts = {rel: self.read_text(rel) for rel in rels}
        else:
            with ThreadPoolExecutor(_READERS) as pool:
                texts = dict(zip(rels, pool.map(self.read_text, rels)))
        return {rel: t for rel, t in texts.items() if t is not None}

    def write_text(self, rel: str, text: str) -> None:
        """Replace ``rel`` atomically (a reader sees the old or the new one, never a part)."""
        storage.write_text(self.url(rel), text)

    def create(self, rel: str, text: str) -> bool:
        """Write ``rel`` only if it does not exist yet; False when another writer got there first
        (local: exclusive creation; a store: a conditional create, or, where the store refuses
        that, write, wait, read back, which two writers can both pass when a PUT is slow)."""
        if self.remote:
            store = f"{storage.endpoint() or 'aws'} {str(self.where).split('/')[2]}"
            if store not in _UNCONDITIONAL:
                try:
                    return storage.create_bytes(self.url(rel), text.encode("utf-8"))
                except storage.NoConditionalWrite as e:
                    _UNCONDITIONAL.add(store)
                    log.warning(
                        f"{e}; falling back to write, wait {_SETTLE_S} s, read back (see docs/building-at-scale.md)"
                    )
            if self.read_text(rel) is not None:
                return False
            self.write_text(rel, text)
            time.sleep(_SETTLE_S)
            return self.read_text(rel) == text
        path = Path(self.url(rel))
        with write_faults(path, what=path.name):  # a full disk, a read-only folder: one line
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return True

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """Name -> size of the files directly in ``rel_dir`` (one LIST on a store)."""
        return {k: v for k, v in storage.list_files(self.url(rel_dir)).items() if "/" not in k}

    def folders(self) -> list[str]:
        """Names of the folders directly in the output (split folders, ``.build``)."""
        if self.local is None:
            return sorted({k.split("/", 1)[0] for k in storage.list_files(self.where) if "/" in k})
        root = self.local
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    def remove(self, rel: str) -> None:
        """Delete one file (nothing when it is not there)."""
        storage.delete(self.url(rel))

    def remove_tree(self, rel: str) -> None:
        """Delete everything under ``rel`` (nothing when it is not there)."""
        for name in storage.list_files(self.url(rel)):
            storage.delete(storage.join(self.url(rel), name))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A local folder laid out like the output, to write shard files into before ``publish``.
        Local output: the output itself (the writer's atomic renames put files in place)."""
        if self.local is not None:
            with write_faults(self.local / ".build", what="the build folder"):
                self.local.mkdir(parents=True, exist_ok=True)
            yield self.local
            return
        with tempfile.TemporaryDirectory(prefix="shard-stage-") as tmp:
            yield Path(tmp)

    def publish(self, staged: Path, rel: str, *, sha256: str | None = None) -> None:
        """Make the staged file ``staged / rel`` visible under ``rel``: one whole-object upload
        (its sha256 recorded in the object's metadata); local output: already there."""
        if self.remote:
            storage.upload(staged / rel, self.url(rel), sha256=sha256)
