"""What the sample plan knows of every training sample, read once per run from the builds.

Per sample: where its media members lie (from the shard indexes), its ids (``tid``, labels,
segment fields: the ``ids`` member, or ``lbl``/``tid``/``seg`` in older versions, read at their
index offsets) and its length (for ``loader.track_weighting``). A shard's ids come from its ids
file (``NNNNNN.ids``: every sample's ``ids`` member back to back), read in place or, from object
storage, fetched whole (one GET per shard) and kept verified beside the cache's index copies.
Builds written before ids files are read member by member: in place, or from a store by one
ranged read per sample member, kept beside the index copies (``NAME.ids.npy``, valid while its
index matches the manifest), so a second run reads no object. Labels of several builds are
merged by name (:func:`merge_tasks`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.cache_files import fetch_copy, local_name
from pipelines.sample_plan import Catalog
from pipelines.shard_checks import check_ids_file
from shards.base.atomic import atomic_write_text
from shards.base.tasks import TaskSpec
from shards.format import (
    SEGMENT_FIELDS,
    Manifest,
    MemberLayout,
    ShardInfo,
    StorageError,
    member_layout,
    read_index,
    storage,
)


@dataclass(frozen=True)
class BuildPart:
    """One build's training split as the catalog reads it."""

    manifest: Manifest
    split: str
    tars: Sequence[str]  # local paths, or URLs (object store)
    idxs: Sequence[str]  # local index files (copies for an object store)
    media: Sequence[str]  # member extension per media output ("pcm"; "mel.jpg;mel.png" per channel)
    label_map: np.ndarray  # this build's label index -> the run's (merged) index


@dataclass(frozen=True)
class Samples:
    """The catalog plus what the reader needs per row (all numpy, row-aligned)."""

    catalog: Catalog
    offsets: np.ndarray  # (rows, media) int64 byte offsets of the media members in their tars
    sizes: np.ndarray  # (rows, media) int64
    lbl: np.ndarray  # (rows, label_width) int64, in the merged vocabulary
    tid: np.ndarray  # (rows,) int64
    seg: np.ndarray | None  # (rows, 5) int64 for segmented builds
    shard_names: list[str]  # per shard number: the tar's path or URL (error lines, skip reports)
    shard_tars: list[str]  # per shard number: what the reader opens
    shard_info: list[tuple[int, ShardInfo]]  # per shard number: (build, its manifest entry)


def merge_tasks(tasks: Sequence[TaskSpec], where: Sequence[str]) -> tuple[TaskSpec, list[np.ndarray]]:
    """One vocabulary for several builds: classes (tags) merged by name, the first build's order
    first; hierarchies must be equal. Returns it and each build's label index map."""
    first = tasks[0]
    for t, w in zip(tasks[1:], where[1:]):
        if t.kind != first.kind:
            raise ValueError(f"{w}: a {t.kind} task cannot be mixed with {where[0]}'s {first.kind} task")
        if t.kind == "hier" and t.vocab() != first.vocab():
            raise ValueError(
                f"{w}: its hierarchy differs from {where[0]}'s; mixed hierarchical builds must match"
            )
    if first.kind == "hier":
        return first, [np.arange(max(first.head_sizes)) for _ in tasks]
    names: list[str] = []
    for t in tasks:
        names += [c for c in t.classes if c not in names]
    merged = TaskSpec(kind=first.kind, name=first.name, classes=names)
    return merged, [np.array([names.index(c) for c in t.classes], np.int64) for t in tasks]


def remap(lbl: np.ndarray, task: TaskSpec, mapping: np.ndarray, width: int) -> np.ndarray:
    """Labels ``(n, own width)`` of a build in its vocabulary -> ``(n, width)`` in the merged one."""
    if task.kind == "hier":
        return lbl
    if task.kind == "single":
        return mapping[lbl]
    out = np.zeros((len(lbl), width), np.int64)
    out[:, mapping] = lbl
    return out


def read_samples(
    parts: Sequence[BuildPart], task: TaskSpec, *, weighting: str, balance_level: int, workers: int = 8
) -> Samples:
    """The catalog of every build's training split (build order, then split order); a row's
    weight is its seconds (``uniform_time``) or its share of its track (``uniform_track``)."""
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("off", "size", "lbl", "tid", "seg", "sec", "w", "src", "shard", "uid")
    }
    names: list[str] = []
    tars: list[str] = []
    infos: list[tuple[int, ShardInfo]] = []
    for b, part in enumerate(parts):
        m, info = part.manifest, part.manifest.split(part.split)
        layout = member_layout(m)
        sources = m.urls(part.split)[0]  # the ids are read where the build lives (not the cache's files)
        indexes = [read_index(idx) for idx in part.idxs]
        all_ids = _all_ids(m, sources, part.idxs, indexes, layout, info.shards, workers)
        for tar, idx, rows, ids, shard in zip(part.tars, part.idxs, indexes, all_ids, info.shards):
            fields = _fields(ids, layout)
            off, size = _media(rows, part.media, idx)
            cols["off"].append(off)
            cols["size"].append(size)
            cols["lbl"].append(remap(fields["lbl"], task, part.label_map, task.label_width))
            cols["tid"].append(fields["tid"][:, 0])
            seg = fields.get("seg")
            cols["seg"].append(
                seg if seg is not None else np.zeros((len(rows), len(SEGMENT_FIELDS)), np.int64)
            )
            sec, share = _lengths(m, info.seconds, info.num_samples, size, seg)
            cols["sec"].append(sec)
            cols["w"].append(sec if weighting == "uniform_time" else share)
            cols["src"].append(np.full(len(rows), b, np.int64))
            cols["shard"].append(np.full(len(rows), len(names), np.int64))
            sample = seg[:, 0] if seg is not None else fields["tid"][:, 0]
            cols["uid"].append((np.int64(b) << np.int64(40)) | sample)
            names.append(str(storage.join(m.root, shard.tar)) if m.root is not None else tar)
            tars.append(tar)
            infos.append((b, shard))
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}
    lbl = cat["lbl"].reshape(-1, task.label_width)
    catalog = Catalog(
        source=cat["src"],
        shard=cat["shard"],
        uid=cat["uid"],
        stratum_class=_stratum_class(lbl, task, balance_level),
        weight=np.maximum(cat["w"].astype(np.float64), 1e-12),
        seconds=cat["sec"].astype(np.float64),
        shard_sizes=np.bincount(cat["shard"], minlength=len(names)),
    )
    segmented = any(member_layout(p.manifest).segmented for p in parts)
    return Samples(catalog, cat["off"].reshape(-1, len(parts[0].media)), cat["size"].reshape(-1, len(parts[0].media)),
                   lbl, cat["tid"], cat["seg"].reshape(-1, len(SEGMENT_FIELDS)) if segmented else None,
                   names, tars, infos)  # fmt: skip


def _fields(ids: np.ndarray, layout: MemberLayout) -> dict[str, np.ndarray]:
    """``tid``, ``lbl`` (, ``seg``) columns of the ids members' int64 entries, concatenated in
    member order (version 3: ``[tid, *lbl, *seg]``; before: ``lbl``, ``tid``, ``seg`` members)."""
    out, at = {}, 0
    for name in layout.order:
        out[name] = ids[:, at : at + layout.widths[name]]
        at += layout.widths[name]
    return out


def _media(
    rows: list[dict[str, tuple[int, int]]], media: Sequence[str], idx: str
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) ``(n, len(media))`` of each sample's media members (``a;b``: either)."""
    off = np.zeros((len(rows), len(media)), np.int64)
    size = np.zeros_like(off)
    for i, row in enumerate(rows):
        for j, alts in enumerate(media):
            hit = next((row[e] for e in alts.split(";") if e in row), None)
            if hit is None:
                raise ValueError(f"{idx}: sample {i} has no {alts} member")
            off[i, j], size[i, j] = hit
    return off, size


def _all_ids(
    m: Manifest,
    tars: Sequence[str],
    idxs: Sequence[str],
    indexes: list[list[dict[str, tuple[int, int]]]],
    layout: MemberLayout,
    shards: Sequence[ShardInfo],
    workers: int,
) -> list[np.ndarray]:
    """Every shard's ids ``(n, int64 entries)``: from its ids file where the build wrote one
    (read in place, or fetched whole into the cache folder: one GET per shard, ``workers`` at a
    time), else from its samples' members (:func:`_shard_ids`)."""
    want = sum(layout.members.values()) // 8
    out: list[np.ndarray | None] = [None] * len(shards)
    with_file = [i for i, s in enumerate(shards) if s.ids is not None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        got = pool.map(lambda i: _ids_file(m, Path(idxs[i]), len(indexes[i]), shards[i], want), with_file)
        for i, ids in zip(with_file, got):
            out[i] = ids
    for i in (i for i, s in enumerate(shards) if s.ids is None):
        out[i] = _shard_ids(tars[i], Path(idxs[i]), indexes[i], layout, shards[i], workers)
    return [ids for ids in out if ids is not None]


def _ids_file(m: Manifest, idx: Path, rows: int, shard: ShardInfo, want: int) -> np.ndarray:
    """One shard's ids file as ``(rows, want)``; a remote one is kept, verified, beside the
    cache's index copy (fetched again whenever its sha256 differs from the manifest's)."""
    assert m.root is not None and shard.ids is not None
    if m.remote:
        path = idx.with_name(local_name(shard.ids))
        fetch_copy(str(storage.join(m.root, shard.ids)), path, shard.ids_sha256, shard.ids_bytes, "ids file")
    else:
        path = Path(storage.join(m.root, shard.ids))
        check_ids_file(m, shard)  # its size, before it is read (its sha256: loader.verify)
    size = path.stat().st_size
    if size != rows * want * 8:
        raise ValueError(
            f"{path}: {size} bytes, its shard's {rows} samples need {rows * want * 8} "
            "(a truncated or foreign ids file; run `python -m shards verify`)"
        )
    return np.fromfile(path, "<i8").reshape(rows, want)


def _shard_ids(tar: str, idx: Path, rows: list[dict[str, tuple[int, int]]], layout: MemberLayout, shard: ShardInfo, workers: int) -> np.ndarray:  # fmt: skip
    """Every sample's ids members ``(n, int64 entries)`` of one shard: read in place (local), or
    by ranged reads kept beside the index copy (object store)."""
    want = sum(layout.members.values()) // 8
    if not storage.is_remote(tar):
        return _read_local(tar, rows, layout.members, want)
    kept = idx.with_name(idx.name + ".ids.npy")
    stamp = idx.with_name(idx.name + ".ids.sha256")
    if (
        kept.is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == (shard.index_sha256 or shard.sha256)
    ):
        got = np.load(kept)
        if got.shape == (len(rows), want):
            return got
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda r: _read_remote(tar, r, layout.members), rows))
    out = np.stack(parts) if parts else np.zeros((0, want), np.int64)
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, kept)
    atomic_write_text(stamp, (shard.index_sha256 or shard.sha256) + "\n")
    return out


def _read_local(
    tar: str, rows: list[dict[str, tuple[int, int]]], members: dict[str, int], want: int
) -> np.ndarray:
    out = np.zeros((len(rows), want), np.int64)
    with open(tar, "rb") as f:
        fd = f.fileno()
        for i, row in enumerate(rows):
            data = b"".join(os.pread(fd, n, row[ext][0]) for ext, n in members.items())
            if len(data) != want * 8:
                raise ValueError(f"{tar}: sample {i}'s ids members end past the file (a truncated shard)")
            out[i] = np.frombuffer(data, "<i8")
    return out


def _read_remote(tar: str, row: dict[str, tuple[int, int]], members: dict[str, int]) -> np.ndarray:
    data = b"".join(storage.read_bytes(tar, row[ext][0], row[ext][0] + n) for ext, n in members.items())
    if len(data) != sum(members.values()):
        raise StorageError(f"{tar}: short read of a sample's ids members")
    return np.frombuffer(data, "<i8").copy()


def _lengths(m: Manifest, seconds: float, count: int, size: np.ndarray, seg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(seconds, share of its track) per sample."""
    if m.kind == "image":
        ones = np.ones(len(size))
        return ones, ones
    rate = float(m.sample_rate)
    if seg is not None:
        i = SEGMENT_FIELDS.index
        n = np.minimum(seg[:, i("track_samples")] - seg[:, i("start")], m.segment_samples or 1 << 62)
        return n / rate, n / np.maximum(seg[:, i("track_samples")], 1)
    if m.codec == "pcm16":
        sec = size[:, 0] / 2.0 / rate
    else:  # version 1, compressed: the split's bytes per second (an approximation, docs/training.md)
        sec = size[:, 0] * (seconds / max(float(size[:, 0].sum()) * count / max(len(size), 1), 1.0))
    return sec, np.ones(len(size))


def _stratum_class(lbl: np.ndarray, task: TaskSpec, level: int) -> np.ndarray:
    """The class ``loader.balance`` balances per sample: single: its class; multi: its rarest
    tag (-1 without tags: a group of its own); hier: its class at ``level``."""
    if task.kind == "single":
        return lbl[:, 0].astype(np.int64)
    if task.kind == "hier":
        return lbl[:, level].astype(np.int64)
    freq = lbl.sum(axis=0).astype(np.float64)
    score = np.where(lbl > 0, freq[None, :], np.inf)
    rarest = score.argmin(axis=1)
    return np.where(np.isfinite(score.min(axis=1)), rarest, -1).astype(np.int64)
