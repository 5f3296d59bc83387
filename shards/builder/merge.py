"""Step 3 of a build: ``manifest.json`` and ``rejects.jsonl`` from the shards' parts.

Reads only the output (the plan and every shard's part), so it runs anywhere: at the end of
a local or Ray build, or as ``python -m shards merge OUT`` after array jobs. Every input is
accounted for (written, or rejected with a reason; ``input = written + rejected``), shard
files an older build left behind are deleted, and the manifest is written last: its
presence means the build is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from shards.builder.build_files import BUILD, PLAN, committed, read_parts, read_plan
from shards.builder.output import BuildOutput
from shards.builder.plan import BuildPlan
from shards.builder.stats import ShardPart, SplitStats, image_channels
from shards.format.manifest import MANIFEST, REJECTS, VERSION, Manifest, read_manifest

_SHARD_FILE = re.compile(r"^\d{6}\.(tar|idx|ids)$")
_TEMP_FILE = re.compile(r"^\.\d{6}\.(tar|idx|ids)\..*\.tmp$")  # left by a killed task (atomic_path)


def missing_shards(out: BuildOutput, plan: BuildPlan) -> list[str]:
    """Planned shards not committed yet, in plan order."""
    done = committed(out, plan.shards, plan.context)
    return [s.name for s in plan.shards if s.name not in done]


def merge(
    out: BuildOutput, plan: BuildPlan | None = None, *, confirm: Callable[[], None] | None = None
) -> Manifest:
    """Write ``rejects.jsonl`` and then ``manifest.json`` from the committed shards of the plan
    in ``out``; a shard not built yet is one error naming how many and which. ``confirm`` runs
    just before the manifest is written (the lease is still this driver's, or it raises)."""
    plan = plan or read_plan(out)
    if plan is None:
        raise FileNotFoundError(f"{out.url(PLAN)}: no build plan here (run `python -m shards build` first)")
    missing = missing_shards(out, plan)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"{out}: {len(missing)} of {len(plan.shards)} planned shards are not built yet "
            f"({', '.join(missing[:5])}{more}); run the build (or its missing --part jobs) again"
        )
    by_name = read_parts(out, plan.shards)
    parts = [by_name[s.name] for s in plan.shards]
    manifest = manifest_of(plan, parts)
    rejects = [{"path": r.path, "reason": r.reason, "key": r.key, "split": None} for r in plan.rejects]
    rejects += [r for p in parts for r in p.rejects]
    out.write_text(REJECTS, "".join(json.dumps(r) + "\n" for r in rejects))
    remove_stale(out, manifest)
    if confirm is not None:
        confirm()
    out.write_text(MANIFEST, manifest.to_json())  # last: its presence means the build is complete
    if out.local is not None:
        return read_manifest(out.local)
    return manifest


def manifest_of(plan: BuildPlan, parts: list[ShardPart]) -> Manifest:
    """The manifest of a plan whose shards reported ``parts`` (in plan order)."""
    ctx, image = plan.context, plan.context.kind == "image"
    splits, stats = {}, []
    written = rejected = 0
    for split in plan.splits:
        mine = [p for p in parts if p.split == split]
        split_stats = SplitStats()
        for p in mine:
            if p.stats.tracks + len(p.rejects) != p.records:
                raise ValueError(
                    f"{p.split}/{p.index:06d}: its part accounts for {p.stats.tracks + len(p.rejects)} of {p.records} records"
                )
            split_stats.merge(p.stats)
            rejected += len(p.rejects)
        written += split_stats.tracks
        stats.append(split_stats)
        if split_stats.tracks:
            splits[split] = split_stats.split_info([p.shard for p in mine if p.shard is not None], image)
    totals = {"input": plan.num_inputs, "written": written, "rejected": rejected + len(plan.rejects)}
    if totals["input"] != written + totals["rejected"]:
        raise ValueError(f"build accounting: {totals} (every input is written or rejected)")
    return Manifest(
        source=ctx.source,
        sample_rate=0 if image else ctx.sample_rate,
        codec="none" if image else ctx.codec,  # type: ignore[arg-type]
        task=ctx.task,
        splits=splits,
        totals=totals,
        build=plan.build,
        version=VERSION,  # the writer's (shard_task: shards.format.members.written_layout)
        segment_samples=None if image else ctx.segment_samples,
        kind="image" if image else "audio",
        images=image_channels(stats, ctx.channels) if image else {},
    )


def remove_stale(out: BuildOutput, manifest: Manifest) -> None:
    """Delete shard files the manifest does not list (an older, different build's) and the
    temporary files of killed tasks."""
    keep = {s.tar for info in manifest.splits.values() for s in info.shards}
    keep |= {c[0] for info in manifest.splits.values() for s in info.shards for c in s.companions()}
    for folder in out.folders():
        if folder == BUILD:
            continue
        for name in out.sizes(folder):
            stale = _SHARD_FILE.match(name) and f"{folder}/{name}" not in keep
            if stale or _TEMP_FILE.match(name):
                out.remove(f"{folder}/{name}")
