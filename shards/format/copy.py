"""``python -m shards copy SRC DST``: a build between a local folder and an object-store prefix.

Either way (local -> ``s3://``, ``s3://`` -> local, or store to store through a temporary
file). Every shard's sha256 is checked against the manifest on the bytes actually sent or
received; uploads record it in the object's metadata (``x-amz-meta-sha256``), so later checks
(``read_manifest``'s sizes, ``validate_split(checksums=True)``, a resumed copy) need no
download. Resumable: a shard already at DST with the manifest's size and sha256 is skipped.
DST's own ``manifest.json`` and ``rejects.jsonl`` are removed before the first shard is written
and the new manifest is written LAST, so a DST with a manifest is a complete build, as after
``python -m shards build``: a failed or killed copy over an older build leaves no manifest over
a mix of old and new shards. Index and ids files are checked against the manifest's sha256s.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import shards.format.storage as storage
from shards.base.progress import progress
from shards.format.manifest import MANIFEST, REJECTS, ShardInfo, read_manifest

EXTRAS = (REJECTS, "feature_stats.json")
"""Files of a build copied when present (besides shards, their index and ids files and the manifest)."""


@dataclass
class CopyReport:
    copied: int = 0  # shards sent
    skipped: int = 0  # shards already at DST, verified
    bytes: int = 0  # shard bytes sent


def copy_build(
    src: str | Path,
    dst: str | Path,
    *,
    workers: int = 4,
    show: bool | None = None,
    report: CopyReport | None = None,
) -> CopyReport:
    """Copy the build at ``src`` to ``dst`` (see the module docstring); one error line on failure.
    ``report``: filled as shards go (what a failed copy had done, for its caller to print)."""
    manifest = read_manifest(src)  # every listed object there, at its size
    assert manifest.root is not None
    root = manifest.root
    storage.check_location(dst)
    storage.check_access(dst, must_exist=False)
    for name in (MANIFEST, REJECTS):  # DST is no build until its new manifest is written
        storage.delete(storage.join(dst, name))
    present = storage.list_files(dst)
    shards = [s for info in manifest.splits.values() for s in info.shards]
    report = report if report is not None else CopyReport()
    failed = threading.Event()
    bar = progress(total=len(shards), desc="copy", unit="shard", enabled=show)

    def one(s: ShardInfo) -> None:
        if failed.is_set():  # no shard starts after a failure
            return
        try:
            _one(s)
        except BaseException:
            failed.set()
            raise

    def _one(s: ShardInfo) -> None:
        if _already_there(storage.join(dst, s.tar), s, present):
            report.skipped += 1
        else:
            _copy_shard(storage.join(root, s.tar), storage.join(dst, s.tar), s)
            report.copied += 1
            report.bytes += s.bytes
        for rel, sha256, size in s.companions():
            _copy_small(storage.join(root, rel), storage.join(dst, rel), sha256, size)
        bar.update(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, shards))  # re-raises the first failure
    bar.close()
    for name in EXTRAS:
        if storage.exists(storage.join(root, name)):
            storage.copy_file(storage.join(root, name), storage.join(dst, name))
    storage.copy_file(storage.join(root, MANIFEST), storage.join(dst, MANIFEST))  # last: DST is complete
    return report


def _already_there(where: storage.Location, s: ShardInfo, present: dict[str, int]) -> bool:
    """DST holds this shard complete: the manifest's size, and its sha256 (object metadata for a
    store, the file's own bytes locally)."""
    if present.get(s.tar) != s.bytes:
        return False
    if storage.is_remote(where):
        return storage.stat(where).sha256 == s.sha256
    return storage.sha256_file(where) == s.sha256


def _copy_shard(src: storage.Location, dst: storage.Location, s: ShardInfo) -> None:
    """One shard, its sha256 checked on the bytes sent (or received) before DST holds it."""
    if not storage.is_remote(src):
        _verify(Path(src), s, src)
        storage.upload(src, dst, sha256=s.sha256)
        return
    with tempfile.TemporaryDirectory(prefix="musicstream-copy-") as tmp:
        local = Path(tmp) / "shard.tar"
        storage.download(src, local)
        _verify(local, s, src)
        storage.upload(local, dst, sha256=s.sha256)


def _copy_small(src: storage.Location, dst: storage.Location, sha256: str | None, size: int | None) -> None:
    """One index or ids file (small: read whole), checked against the manifest's sha256 (or
    size, for builds that record none) before DST holds it."""
    data = storage.read_bytes(src)
    got = hashlib.sha256(data).hexdigest()
    if (sha256 is not None and got != sha256) or (size is not None and len(data) != size):
        raise ValueError(
            f"{src}: {len(data)} bytes with sha256 {got[:12]}..., the manifest records {size} "
            f"bytes, {str(sha256)[:12]}... (a file that does not belong to this build; rebuild it)"
        )
    storage.write_bytes(dst, data, sha256=got)


def _verify(path: Path, s: ShardInfo, name: storage.Location) -> None:
    got = storage.sha256_file(path)
    if got != s.sha256:
        raise ValueError(
            f"{name}: sha256 {got[:12]}... does not match the manifest's {s.sha256[:12]}... "
            "(corrupt source shard; rebuild it)"
        )
