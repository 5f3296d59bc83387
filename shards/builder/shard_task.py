"""Step 2 of a build: one shard, as an idempotent task (the same function under every executor).

``build_shard`` takes the planned records of one shard and their decode results (in record
order), writes ``SPLIT/NNNNNN.tar`` and ``.idx`` through ``shards.format.writer.ShardWriter`` (fixed
tar metadata, so the bytes depend only on the plan and the sources), then its part, its
rejects and, last, its commit marker (``shards.builder.build_files``). A shard already committed for
the same plan is not built again, so a retried or duplicated task is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shards.builder.audio import Encoded, segment_bounds
from shards.builder.build_files import committed, read_parts, write_part
from shards.builder.images import EncodedImages
from shards.builder.output import BuildOutput
from shards.builder.plan import PlannedRecord, ShardContext, ShardPlan
from shards.builder.stats import ShardPart
from shards.builder.workers import Job, Result
from shards.format.manifest import AUDIO_EXT, META_EXT, SEGMENT_FIELDS
from shards.format.members import written_layout
from shards.format.writer import ShardWriter

ONE_SHARD = 1 << 62  # the writer's size bound: the plan already cut the shards


def shard_jobs(ctx: ShardContext, shard: ShardPlan) -> list[Job]:
    """The decode jobs of a shard's records, in order: ``(tid, audio or images, spec)``."""
    spec = ctx.spec
    image = ctx.kind == "image"
    return [(p.tid, p.record.images if image else p.record.audio, spec) for p in shard.records]


def build_shard(
    ctx: ShardContext,
    shard: ShardPlan,
    out: BuildOutput,
    decoded: Iterable[Result],
    *,
    tick: Callable[[int], object] | None = None,
) -> ShardPart:
    """Build one shard from ``decoded`` (one result per record, in record order) unless it is
    already committed; returns its part. ``tick(1)`` after each record (progress)."""
    if shard.name in committed(out, [shard], ctx):
        return read_parts(out, [shard])[shard.name]
    part = ShardPart(
        split=shard.split,
        index=shard.index,
        fingerprint=ctx.fingerprint,
        cut=ctx.cut,
        records=len(shard.records),
    )
    results: Iterator[Result] = iter(decoded)
    with out.staging() as folder:
        writer = ShardWriter(
            folder, shard.split, max_bytes=ONE_SHARD, start=shard.index, room=ctx.shard_bytes
        )
        with writer:
            for rec in shard.records:
                i, result = next(results)
                assert i == rec.tid, f"{shard.name}: result for record {i}, expected {rec.tid}"
                _add(ctx, shard, rec, result, writer, part)
                if tick is not None:
                    tick(1)
        if writer.output:
            (part.shard,) = writer.output
            out.publish(folder, part.shard.tar, sha256=part.shard.sha256)
            for rel, sha256, _ in part.shard.companions():
                out.publish(folder, rel, sha256=sha256)
    assert part.stats.tracks + len(part.rejects) == part.records, part
    write_part(out, part)
    return part


def _add(
    ctx: ShardContext,
    shard: ShardPlan,
    rec: PlannedRecord,
    result: Encoded | EncodedImages | str,
    writer: ShardWriter,
    part: ShardPart,
) -> None:
    if isinstance(result, str):
        part.rejects.append({"path": rec.record.path, "reason": result, "key": rec.key, "split": shard.split})
    elif isinstance(result, EncodedImages):
        writer.write(rec.key, _image_members(ctx, shard, rec, result))
        part.stats.add_images(list(result.members), result.sizes)
    else:
        writer.write_group(_track_samples(ctx, shard, rec, result))
        bounds = segment_bounds(result.samples, ctx.segment_samples)
        longest = max(b - a for a, b in bounds) / ctx.sample_rate
        part.stats.add_track(result.seconds, len(bounds), longest)


def _track_samples(
    ctx: ShardContext, shard: ShardPlan, rec: PlannedRecord, result: Encoded
) -> list[tuple[str, dict[str, bytes]]]:
    """One sample per segment, all in this shard; each carries the track's id, labels and length."""
    rate, r = ctx.sample_rate, rec.record
    bounds = segment_bounds(result.samples, ctx.segment_samples)
    label = ctx.task.encode(r.labels)
    layout = written_layout(ctx.kind, ctx.task.label_width)
    group = []
    for index, ((start, end), data) in enumerate(zip(bounds, result.segments)):
        name = rec.key if len(bounds) == 1 else f"{rec.key}-s{index:04d}"
        seg = [shard.sample_id(rec, index), index, len(bounds), start, result.samples]
        meta = {
            "key": name,
            "track_key": rec.key,
            "source": ctx.source,
            "source_id": r.key,
            "path": r.path,
            "split": shard.split,
            "tid": rec.tid,
            "segment": dict(zip(SEGMENT_FIELDS, seg)),
            "labels": r.labels,
            "seconds": round(result.seconds, 4),
            "segment_seconds": round((end - start) / rate, 4),
            "sample_rate": rate,
            "orig_sample_rate": result.orig_sample_rate,
            "orig_channels": result.orig_channels,
            **r.meta,
        }
        members = {
            AUDIO_EXT[ctx.codec]: data,
            **layout.pack(rec.tid, label, seg),
            META_EXT: json.dumps(meta, sort_keys=True).encode(),
        }
        group.append((name, members))
    return group


def _image_members(
    ctx: ShardContext, shard: ShardPlan, rec: PlannedRecord, result: EncodedImages
) -> dict[str, bytes]:
    """An image sample: the images' bytes unchanged, track id and labels, metadata."""
    r = rec.record
    sizes = {ch: list(hw) for ch, hw in result.sizes.items()}
    meta: dict[str, Any] = {"key": rec.key, "source": ctx.source, "source_id": r.key, "path": r.path}
    meta |= {"split": shard.split, "tid": rec.tid, "labels": r.labels, "image_sizes": sizes, **r.meta}
    return {
        **result.members,
        **written_layout(ctx.kind, ctx.task.label_width).pack(rec.tid, ctx.task.encode(r.labels)),
        META_EXT: json.dumps(meta, sort_keys=True).encode(),
    }
