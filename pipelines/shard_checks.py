"""Refuse shards the pipeline cannot serve, before any DALI work, with one clear error.

DALI's own failures on a bad tar come from a worker thread mid-epoch; checking the
manifest, each tar's size and its index here names the file and the problem up front.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipelines.config import FeatureConfig, LoaderConfig, framing
from shards.base.progress import progress
from shards.format import (
    BadShard,
    Manifest,
    ShardInfo,
    SplitInfo,
    check_shard,
    diagnose,
    files_of,
    member_layout,
    read_index,
    read_manifest,
    sha256_of,
    storage,
    verify_first_open,
)


class ShardError(ValueError):
    """A shard build the pipeline cannot read; the message names the file."""


def load_manifest(shards: str | Path | Manifest) -> Manifest:
    """A validated manifest from a folder, a manifest.json path, or an already read Manifest."""
    if isinstance(shards, Manifest):
        if shards.root is None:
            raise ShardError("manifest was not read from disk (use shards.format.manifest.read_manifest)")
        return shards
    try:
        return read_manifest(shards)
    except (ValueError, FileNotFoundError) as e:
        raise ShardError(str(e)) from None


def split_info(manifest: Manifest, split: str) -> SplitInfo:
    """The manifest's entry for ``split``; an unknown split is a ``ShardError`` naming the file."""
    try:
        return manifest.split(split)
    except ValueError as e:
        raise ShardError(str(e)) from None


def validate_split(
    manifest: Manifest,
    split: str,
    *,
    features: FeatureConfig,
    loader: LoaderConfig,
    world_size: int = 1,
    train: bool = False,
    checksums: bool = False,
    indexes: Sequence[str | Path] | None = None,
) -> None:
    """Check one split's tars and indexes against the manifest and the configs.

    An object-store build (``m.remote``) is checked without downloading a tar: ``read_manifest``
    has compared every object's size from one LIST; ``indexes`` are the local copies of its
    index files; ``checksums`` compares the manifest's sha256 with each object's metadata."""
    assert manifest.root is not None
    where = manifest.where
    if manifest.kind == "audio" and manifest.codec not in ("pcm16", "flac", "ogg"):
        raise ShardError(f"{where}: codec {manifest.codec!r} cannot be read (pcm16, flac, ogg)")
    info = split_info(manifest, split)
    if info.num_samples < world_size:
        raise ShardError(
            f"{where}: split {split!r} has {info.num_samples} tracks, fewer than {world_size} ranks"
        )
    if manifest.kind == "audio" and loader.chunk_seconds > info.max_seconds:
        raise ShardError(
            f"{where}: loader.chunk_seconds={loader.chunk_seconds} is longer than every track of split "
            f"{split!r} (longest {info.max_seconds:.2f} s)"
        )
    if not train and info.num_samples > info.tracks:
        _check_segment_alignment(manifest, features, loader)
    per_rank = info.num_samples // world_size
    if train and per_rank < loader.tracks_per_batch:
        raise ShardError(
            f"{where}: split {split!r} gives {per_rank} tracks per rank, fewer than one training batch "
            f"({loader.tracks_per_batch} tracks); lower loader.batch_size"
        )
    tars, idxs = manifest.urls(split)
    with tempfile.TemporaryDirectory(prefix="musicstream-idx-") as tmp:
        if indexes is not None:
            idxs = [str(i) for i in indexes]
        elif manifest.remote:  # no local copies given: fetch the (small) indexes to check them
            idxs = [str(storage.download(u, Path(tmp) / f"{i}.idx")) for i, u in enumerate(idxs)]
        total = 0
        for shard, tar, idx in zip(info.shards, tars, idxs):
            if manifest.remote:
                _check_object(tar, shard.sha256 if checksums else None)
                _check_index(tar, Path(idx), shard.bytes, shard.num_samples, manifest)
            else:
                _check_shard(
                    Path(tar), Path(idx), shard.bytes, shard.num_samples, manifest, checksums and shard.sha256
                )
                check_ids_file(manifest, shard, checksums)
            total += shard.num_samples
    if total != info.num_samples:
        raise ShardError(
            f"{where}: split {split!r} lists {info.num_samples} tracks but its shards hold {total}"
        )


def _check_segment_alignment(manifest: Manifest, features: FeatureConfig, loader: LoaderConfig) -> None:
    """Evaluation chunks a track from its first sample; with segments that equals chunking each
    segment only if a full segment is a whole number of chunks at the feature rate."""
    seg, src, rate = manifest.segment_samples or 0, manifest.sample_rate, features.sample_rate
    chunk = framing(features, loader).chunk
    if (seg * rate) % src or ((seg * rate) // src) % chunk:
        raise ShardError(
            f"{manifest.where}: tracks are stored in segments of "
            f"{seg / src:g} s, not a whole number of loader.chunk_seconds={loader.chunk_seconds:g} "
            f"chunks: evaluation chunks would straddle segments; use a chunk length that divides "
            f"{seg / src:g} s or rebuild the shards with --segment-seconds a multiple of it"
        )


def _check_object(url: str, sha: str | None) -> None:
    """An object's sha256 from its metadata (a HEAD, no download) against the manifest's."""
    if sha is None:
        return
    recorded = storage.stat(url).sha256
    if recorded is None:
        raise ShardError(
            f"{url}: no sha256 in the object's metadata to check against the manifest (uploaded by "
            "another tool; `python -m shards copy` records it, and loader.remote='cache' verifies "
            "every shard's sha256 as it downloads it)"
        )
    if recorded != sha:
        raise ShardError(
            f"{url}: sha256 in the object's metadata does not match the manifest (replaced object)"
        )


def _check_shard(tar: Path, idx: Path, size: int, count: int, manifest: Manifest, sha: str | bool) -> None:
    _check_file(tar, size, sha, "shard")  # (full checks: shards.format.verify, `python -m shards verify`)
    samples = _check_index(tar, idx, size, count, manifest)
    _check_headers(tar, idx, samples)


def check_ids_file(manifest: Manifest, shard: ShardInfo, checksums: bool = False) -> None:
    """A local build's ids file (the training catalog's labels) at the manifest's size (and sha256)."""
    if shard.ids is not None and shard.ids_bytes is not None:
        path = Path(storage.join(manifest.root, shard.ids))  # type: ignore[arg-type]
        _check_file(path, shard.ids_bytes, checksums and shard.ids_sha256, "ids file")


def _check_file(path: Path, size: int, sha: str | bool | None, what: str) -> None:
    """``path`` at the manifest's ``size``, and its ``sha`` when given: one line naming it."""
    actual = path.stat().st_size
    if actual != size:
        raise ShardError(f"{path}: {actual} bytes, the manifest says {size} (truncated or corrupt {what})")
    if sha and _sha256(path) != sha:
        raise ShardError(f"{path}: sha256 does not match the manifest (corrupt {what})")


def _check_index(
    tar: str | Path, idx: Path, actual: int, count: int, manifest: Manifest
) -> list[dict[str, tuple[int, int]]]:
    """The index's samples: as many as the manifest says, each member inside the tar's bytes."""
    name = storage.basename(tar)
    try:
        samples = read_index(idx)
    except (ValueError, IndexError) as e:
        raise ShardError(f"{idx}: unreadable index: {e}") from None
    if len(samples) != count:
        raise ShardError(f"{idx}: {len(samples)} samples, the manifest says {count} for {name}")
    # media: one member per entry, any of its alternatives (an image channel may mix formats)
    media = (
        [(manifest.audio_ext,)]
        if manifest.kind == "audio"
        else [tuple(c.exts) for c in manifest.images.values()]
    )
    fixed = member_layout(manifest).members  # the ids members: exact sizes (shards.format.members)
    for i, sample in enumerate(samples):
        found = [next((e for e in alts if e in sample), alts[0]) for alts in media]
        need: dict[str, int | None] = {**dict.fromkeys(found), **fixed}
        for ext, want in need.items():
            if ext not in sample:
                raise ShardError(f"{idx}: sample {i} has no .{ext} component")
            off, n = sample[ext]
            if off % 512 or off + n > actual:
                raise ShardError(
                    f"{idx}: .{ext} of sample {i} at {off}+{n} does not fit {tar} ({actual} bytes)"
                )
            if want is not None and n != want:
                raise ShardError(
                    f"{tar}: .{ext} of sample {i} (key {_sample_key(idx, i)}) has {n} bytes, expected "
                    f"{want} (manifest version {manifest.version}; index {storage.basename(idx)})"
                )
        for ext in found:
            if sample[ext][1] == 0:
                raise ShardError(f"{idx}: .{ext} of sample {i} is empty (a sample needs its media)")
        if manifest.kind == "audio" and manifest.codec == "pcm16" and sample[manifest.audio_ext][1] % 2:
            raise ShardError(f"{idx}: .pcm of sample {i} has an odd byte count (not int16)")
    return samples


def _sample_key(idx: Path, i: int) -> str:
    """Sample ``i``'s key, from its index line (member names are ``KEY.EXT``): for error lines."""
    line = idx.read_text().splitlines()[i + 1].split()
    return line[3].split(".", 1)[0] if len(line) >= 4 else "?"


def _check_headers(tar: Path, idx: Path, samples: list[dict[str, tuple[int, int]]]) -> None:
    with open(tar, "rb") as f:  # the index must point at the members it names
        for sample in (samples[0], samples[-1]) if samples else ():
            for ext, (off, _) in sample.items():
                f.seek(off - 512)
                name = f.read(100).split(b"\0", 1)[0].decode("utf-8", "replace")
                if not name.endswith("." + ext):
                    raise ShardError(
                        f"{idx}: offset {off} points at tar member {name!r}, not a .{ext} (index does not match {tar.name})"
                    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def _verify_hint(manifest: Manifest) -> str:
    return f"(loader.verify=first_open; `python -m shards verify {manifest.root}` lists every bad shard)"


def verify_on_first_open(manifest: Manifest, split: str, *, rank: int, world_size: int, workers: int) -> None:
    """``loader.verify = "first_open"`` in evaluation: the sha256 of every shard in this rank's
    range (its reader's contiguous samples), each checked once per process. A bad one stops here,
    before DALI reads it. (Training checks every shard: :func:`verify_bad_shards`.)"""
    assert manifest.root is not None
    info = manifest.split(split)
    lo, hi = rank * info.num_samples // world_size, (rank + 1) * info.num_samples // world_size
    ends = [sum(s.num_samples for s in info.shards[: k + 1]) for k in range(len(info.shards))]
    shards = [s for s, end in zip(info.shards, ends) if end > lo and end - s.num_samples < hi]
    # an object store: one download per shard before step 0, so say so while it runs
    step = max(1, workers) if manifest.remote else max(1, len(shards))
    bar = progress(total=len(shards), desc=f"loader.verify=first_open: downloading {split} to check", unit="shard",
                   enabled=manifest.remote)  # fmt: skip
    try:
        for k in range(0, len(shards), step):
            verify_first_open(
                files_of(manifest),
                shards[k : k + step],
                workers=workers,
                every_rank=world_size > 1,
            )
            bar.update(len(shards[k : k + step]))
    except BadShard as e:
        raise BadShard(e.shard, f"{e.problem} {_verify_hint(manifest)}") from None
    finally:
        bar.close()


def verify_bad_shards(manifest: Manifest, split: str, *, workers: int, stop: bool) -> list[str]:
    """``loader.verify = "first_open"`` for a training split under the sample plan: every shard's
    sha256 (every rank reads from all of them). ``stop``: the first bad one is one line; else
    the names of the bad ones (``loader.on_bad_shard = "skip"`` leaves them out of the plan)."""
    files, shards = files_of(manifest), manifest.split(split).shards
    bar = progress(total=len(shards), desc=f"loader.verify=first_open: downloading {split} to check", unit="shard",
                   enabled=manifest.remote)  # an object store: one download per shard before step 0  # fmt: skip

    bad: list[BadShard] = []
    with bar, ThreadPoolExecutor(max(1, min(workers, len(shards)))) as pool:
        for found in pool.map(lambda s: check_shard(files, s), shards):
            bar.update(1)
            bad += [found] if found is not None else []
    if bad and stop:
        raise BadShard(bad[0].shard, f"{bad[0].problem} {_verify_hint(manifest)}")
    return [f.shard for f in bad]


def read_fault(manifest: Manifest, tars: Sequence[str | Path], error: BaseException) -> BadShard | None:
    """The bad shard behind a reader error mid-run (truncated or damaged under the run), or
    None when every shard it reads is intact (then the error is not the data's). An object-store
    build's reader reads the shard cache, whose files were verified when fetched: only a read of
    a file the cache did not hold complete is named."""
    if manifest.root is None:
        return None
    if storage.is_remote(manifest.root):
        return _cache_fault(manifest, tars, str(error))
    wanted = {str(t) for t in tars}
    shards = [
        s
        for info in manifest.splits.values()
        for s in info.shards
        if str(Path(manifest.root) / s.tar) in wanted
    ]
    return diagnose(files_of(manifest), shards, str(error))


def _cache_fault(manifest: Manifest, tars: Sequence[str | Path], message: str) -> BadShard | None:
    """A reader error on a shard-cache file the cache did not hold complete (it is kept empty
    until verified, so such a read fails instead of returning zeros): one line naming the shard."""
    assert manifest.root is not None
    shards = {s.tar.replace("/", "-"): s for info in manifest.splits.values() for s in info.shards}
    for tar in tars:
        p, s = Path(tar), shards.get(Path(tar).name)
        if s is None or storage.is_remote(str(tar)):
            continue  # direct reads: DALI's own error
        named = p.name in message or s.index.replace("/", "-") in message
        if named and (not p.is_file() or p.stat().st_size != s.bytes):
            return not_in_cache(str(storage.join(manifest.root, s.tar)), p.parent)
    return None


def not_in_cache(url: str, folder: Path, what: str = "") -> BadShard:
    """A read of a shard-cache file the cache did not hold complete (it keeps such a file empty,
    so the read fails instead of returning zeros): one line naming the shard's URL. ``what``:
    the read, when the reader says (``pipelines.media_reader``)."""
    err = BadShard(url, f"read{what} while the shard cache ({folder}) did not hold it complete (evicted or "
                        "still downloading); no wrong byte was used")  # fmt: skip
    err.advice = "resume with checkpoint.resume=auto (the shard is fetched again)"  # type: ignore[attr-defined]
    return err
