"""Step 1 of a build, the plan: which records go into which shard, under which keys and ids.

Deterministic for a config and an importer's records: a seeded shuffle per split (classes mix
across shards), unique sanitised keys, and shard boundaries from size estimates of cheap
header reads (``shards.builder.estimate``), so any worker can build any shard on its own and every
executor writes the same bytes. The plan is written to the output first
(``.build/plan.json``) and fingerprinted, so a re-run, an array job or ``merge`` works from it.

Ids are fixed here too: a track's ``tid`` is its position in the split's planned order, and
its samples' ids start at the running total of the estimated segment counts before it. A
track that decodes into more segments than its header promised (an MP3 without an exact
length) numbers the extra ones above every estimated id (``ShardPlan.extra_ids``), so ids
stay unique whichever worker builds which shard.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.base.tasks import TaskSpec
from shards.builder.audio import AudioSpec
from shards.builder.config import BuildConfig
from shards.builder.estimate import HEADER_TIMEOUT_S, Estimate, Layout, estimate_all
from shards.builder.images import ImageSpec
from shards.builder.workers import DecodePool
from shards.format.manifest import VERSION
from shards.format.writer import MAX_KEY, sanitize_key, shard_name
from shards.importers.records import SPLITS, Dataset, Record, Reject

_SEGMENT_SUFFIX = re.compile(r"-s\d+$")  # segment keys are KEY-sNNNN; no record key may look like one
PLAN_FORMAT = "musicstream.plan"
PLAN_VERSION = 1


def order_records(ds: Dataset, seed: int) -> dict[str, list[tuple[str, Record]]]:
    """Unique sanitised keys, then a seeded shuffle per split (classes mix across shards)."""
    used: set[str] = set()
    by_split: dict[str, list[tuple[str, Record]]] = {}
    for rec in ds.records:
        base = sanitize_key(rec.key)[: MAX_KEY - 6]  # room for a segment suffix (-sNNNN)
        if _SEGMENT_SUFFIX.search(base):
            base += "x"
        key = base
        n = 1
        while key in used:
            n += 1
            suffix = f"_{n}"  # within MAX_KEY, or the writer refuses the key as unsanitised
            key = base[: MAX_KEY - len(suffix)] + suffix
        used.add(key)
        by_split.setdefault(rec.split, []).append((key, rec))
    order = [s for s in SPLITS if s in by_split] + sorted(set(by_split) - set(SPLITS))
    out = {}
    for i, split in enumerate(order):
        items = by_split[split]
        perm = np.random.default_rng([seed, i]).permutation(len(items))
        out[split] = [items[j] for j in perm]
    return out


def fingerprint(cfg: BuildConfig, ds: Dataset, ordered: dict[str, list[tuple[str, Record]]]) -> str:
    """What makes two builds write the same shards: the shard format version, the config's
    shard-shaping fields, the vocabulary and every split's ordered (key, path) list."""
    # a new plan format or shard format rebuilds: an older version's shards are never "up to date"
    h = hashlib.sha256(f"{PLAN_FORMAT} {PLAN_VERSION} shards {VERSION}\n".encode())
    h.update(json.dumps(cfg.fingerprint_fields(), sort_keys=True, default=str).encode())
    h.update(json.dumps(ds.task.vocab(), sort_keys=True).encode())
    for split, items in ordered.items():
        h.update(split.encode())
        for key, rec in items:
            h.update(f"{key}\0{rec.path}\0".encode())
    return h.hexdigest()


@dataclass(kw_only=True)
class ShardContext:
    """What every shard task needs besides its records (the same for every shard of a build)."""

    source: str
    kind: str
    """Sample kind: "audio" or "image"."""
    channels: list[str]
    task: TaskSpec
    sample_rate: int
    codec: str
    min_seconds: float
    segment_samples: int
    shard_bytes: int
    """The planned bound of a shard (for a full disk's message: the room a shard may need)."""
    fingerprint: str
    cut: str = ""
    """Hash of the shard cut (``cut_hash``): plans of one fingerprint may cut differently."""
    max_seconds: float = 0.0
    """Longer inputs are rejected from their header, before decoding (0: no limit); a limit of
    the run, like the decode timeout, so not in the fingerprint."""

    @property
    def spec(self) -> AudioSpec | ImageSpec:
        """What the decoders make of each record."""
        if self.kind == "image":
            return ImageSpec(tuple(self.channels))
        return AudioSpec(
            self.sample_rate, self.codec, self.min_seconds, self.segment_samples, self.max_seconds
        )


@dataclass(kw_only=True)
class PlannedRecord:
    """One record in its shard: its key and ids, fixed by the plan."""

    record: Record
    key: str
    tid: int
    """The track's position in its split's planned order (its ``tid`` member)."""
    first_sample: int
    """Id of its first sample; its segment ``i`` is ``first_sample + i`` while ``i < segments``."""
    segments: int
    """Estimated samples (from the header)."""
    bytes: int
    """Estimated tar bytes."""


@dataclass(kw_only=True)
class ShardPlan:
    """One shard: the unit of work of every executor."""

    split: str
    index: int
    records: list[PlannedRecord]
    extra_ids: int
    """First id above every estimated sample id of the split (for segments beyond the estimate)."""

    @property
    def name(self) -> str:
        """``SPLIT/NNNNNN``: its files are ``name + ".tar"`` and ``name + ".idx"``."""
        return f"{self.split}/{shard_name(self.index)}"

    def sample_id(self, rec: PlannedRecord, index: int) -> int:
        """The unique id of segment ``index`` of ``rec`` within the split."""
        if index < rec.segments:
            return rec.first_sample + index
        a, b = rec.tid, index - rec.segments  # Cantor pairing: distinct for every (track, extra)
        return self.extra_ids + (a + b) * (a + b + 1) // 2 + b


@dataclass(kw_only=True)
class BuildPlan:
    """The whole plan: shards in build order, plus what ``merge`` needs for the manifest."""

    context: ShardContext
    shards: list[ShardPlan]
    rejects: list[Reject] = field(default_factory=list)
    """Import-time rejects (before any decoding)."""
    num_inputs: int = 0
    build: dict[str, Any] = field(default_factory=dict)
    """The build config as the manifest records it (with the fingerprint)."""

    @property
    def fingerprint(self) -> str:
        return self.context.fingerprint

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s.split for s in self.shards))


def context_of(cfg: BuildConfig, ds: Dataset, fp: str) -> ShardContext:
    return ShardContext(
        source=ds.source,
        kind=ds.kind,
        channels=list(ds.channels),
        task=ds.task,
        sample_rate=cfg.sample_rate,
        codec=cfg.codec,
        min_seconds=cfg.min_seconds,
        segment_samples=cfg.segment_samples,
        shard_bytes=cfg.shard_bytes,
        fingerprint=fp,
        max_seconds=cfg.max_seconds,
    )


def plan(
    cfg: BuildConfig,
    ds: Dataset,
    *,
    ordered: dict[str, list[tuple[str, Record]]] | None = None,
    show: bool = False,
    pool: DecodePool | None = None,
) -> BuildPlan:
    """Step 1: order the records (``ordered``: already done by ``order_records``), estimate
    their sizes from their headers, cut the shards."""
    ordered = ordered if ordered is not None else order_records(ds, cfg.seed)
    ctx = context_of(cfg, ds, fingerprint(cfg, ds, ordered))
    layout = Layout(cfg.sample_rate, cfg.codec, cfg.segment_samples, ds.task.label_width, ds.kind)
    flat = [rec for items in ordered.values() for _, rec in items]
    timeout = min(cfg.decode_timeout, HEADER_TIMEOUT_S) if cfg.decode_timeout else 0.0
    estimates = iter(estimate_all(flat, layout, pool=pool, timeout=timeout, show=show))
    shards = []
    for split, items in ordered.items():
        shards += cut_shards(split, [(k, r, next(estimates)) for k, r in items], cfg.shard_bytes)
    ctx.cut = cut_hash(shards)
    return BuildPlan(
        context=ctx,
        shards=shards,
        rejects=list(ds.rejects),
        num_inputs=ds.num_inputs,
        build=cfg.provenance() | {"fingerprint": ctx.fingerprint},
    )


def cut_hash(shards: list[ShardPlan]) -> str:
    """What a shard task's output depends on beyond the fingerprint: which records each shard
    holds and their ids (committed shards of another cut are rebuilt, never merged)."""
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.split}\0{s.index}\0{s.extra_ids}\n".encode())
        for p in s.records:
            h.update(f"{p.key}\0{p.tid}\0{p.first_sample}\0{p.segments}\n".encode())
    return h.hexdigest()[:32]


def cut_shards(split: str, items: list[tuple[str, Record, Estimate]], max_bytes: int) -> list[ShardPlan]:
    """Consecutive records into shards of at most ``max_bytes`` estimated bytes (a record
    bigger than that gets a shard of its own), with their tids and sample ids."""
    groups: list[list[PlannedRecord]] = []
    size = sample = 0
    for tid, (key, rec, est) in enumerate(items):
        if not groups or (size and size + est.bytes > max_bytes):  # records of 0 bytes never start one
            groups.append([])
            size = 0
        groups[-1].append(
            PlannedRecord(
                record=rec, key=key, tid=tid, first_sample=sample, segments=est.segments, bytes=est.bytes
            )
        )
        size += est.bytes
        sample += est.segments
    return [ShardPlan(split=split, index=i, records=g, extra_ids=sample) for i, g in enumerate(groups)]
