"""The bookkeeping files of a build under ``OUT/.build/`` (not part of the shard contract).

- ``plan.json``: the plan (written first; every executor, array part and ``merge`` reads it);
- ``shards/SPLIT/NNNNNN.part.json``: what a shard task wrote (``ShardPart``: its shard's
  entry for the manifest and its totals), ``NNNNNN.rejects.jsonl``: its rejects, and
  ``NNNNNN.done``: the commit marker, written last (plan fingerprint and shard cut, tar size).

A shard is *committed* when its marker carries the plan's fingerprint and cut (two plans of one
fingerprint can cut differently: a header read that timed out estimates zero bytes, so parts of
different plans must never merge) and its tar and index are there with the size the marker
records; a committed shard is never built again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shards.base.config import to_dict
from shards.base.tasks import TaskSpec
from shards.builder.output import BuildOutput
from shards.builder.plan import PLAN_FORMAT, PLAN_VERSION, BuildPlan, PlannedRecord, ShardContext, ShardPlan
from shards.builder.stats import ImageStats, ShardPart, SplitStats
from shards.format.manifest import ShardInfo
from shards.format.writer import shard_name
from shards.importers.records import Record, Reject

BUILD = ".build"
PLAN = f"{BUILD}/plan.json"
PARTS = f"{BUILD}/shards"


def part_stem(split: str, index: int) -> str:
    return f"{PARTS}/{split}/{shard_name(index)}"


def _record_json(p: PlannedRecord) -> dict[str, Any]:
    rec = p.record
    if isinstance(rec.audio, bytes) or any(isinstance(v, bytes) for v in rec.images.values()):
        raise ValueError(
            f"{rec.path}: a record whose media is held in memory cannot be planned; write it to a file"
        )
    return {
        "key": p.key,
        "tid": p.tid,
        "first_sample": p.first_sample,
        "segments": p.segments,
        "bytes": p.bytes,
        "record": {
            "key": rec.key,
            "audio": None if rec.audio is None else str(rec.audio),
            "labels": rec.labels,
            "path": rec.path,
            "meta": rec.meta,
            "images": {ch: str(v) for ch, v in rec.images.items()},
        },
    }


def _record_from(d: dict[str, Any], split: str) -> PlannedRecord:
    r = d["record"]
    rec = Record(
        key=r["key"],
        audio=None if r["audio"] is None else Path(r["audio"]),
        labels=r["labels"],
        split=split,
        path=r["path"],
        meta=r["meta"],
        images={ch: Path(v) for ch, v in r["images"].items()},
    )
    return PlannedRecord(
        record=rec,
        key=d["key"],
        tid=d["tid"],
        first_sample=d["first_sample"],
        segments=d["segments"],
        bytes=d["bytes"],
    )


def plan_json(plan: BuildPlan) -> str:
    doc = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "context": to_dict(plan.context),
        "build": plan.build,
        "num_inputs": plan.num_inputs,
        "rejects": [to_dict(r) for r in plan.rejects],
        "shards": [
            {
                "split": s.split,
                "index": s.index,
                "extra_ids": s.extra_ids,
                "records": [_record_json(p) for p in s.records],
            }
            for s in plan.shards
        ],
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def plan_from_json(text: str, where: str) -> BuildPlan:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from None
    if doc.get("format") != PLAN_FORMAT or doc.get("version") != PLAN_VERSION:
        raise ValueError(f"{where}: not a musicstream build plan (version {PLAN_VERSION})")
    try:
        return _plan_from(doc)
    except (KeyError, TypeError, ValueError) as e:  # another version's fields
        raise ValueError(f"{where}: malformed build plan: {e}") from None


def _plan_from(doc: dict[str, Any]) -> BuildPlan:
    ctx = doc["context"]
    context = ShardContext(**{**ctx, "task": TaskSpec(**ctx["task"])})
    shards = [
        ShardPlan(
            split=s["split"],
            index=s["index"],
            extra_ids=s["extra_ids"],
            records=[_record_from(r, s["split"]) for r in s["records"]],
        )
        for s in doc["shards"]
    ]
    return BuildPlan(
        context=context,
        shards=shards,
        rejects=[Reject(**r) for r in doc["rejects"]],
        num_inputs=doc["num_inputs"],
        build=doc["build"],
    )


def write_plan(out: BuildOutput, plan: BuildPlan) -> None:
    out.write_text(PLAN, plan_json(plan))


def create_plan(out: BuildOutput, plan: BuildPlan) -> bool:
    """Write the plan only if there is none yet; False when another driver's got there first."""
    return out.create(PLAN, plan_json(plan))


def read_plan(out: BuildOutput) -> BuildPlan | None:
    """The plan written to ``out``; None when there is none."""
    text = out.read_text(PLAN)
    return None if text is None else plan_from_json(text, str(out.url(PLAN)))


def write_part(out: BuildOutput, part: ShardPart) -> None:
    """A shard task's last writes: its part, its rejects, then the commit marker."""
    stem = part_stem(part.split, part.index)
    out.write_text(f"{stem}.part.json", json.dumps(to_dict(part)) + "\n")
    out.write_text(f"{stem}.rejects.jsonl", "".join(json.dumps(r) + "\n" for r in part.rejects))
    marker = {
        "fingerprint": part.fingerprint,
        "cut": part.cut,
        "shard": None if part.shard is None else to_dict(part.shard),
    }
    out.write_text(f"{stem}.done", json.dumps(marker) + "\n")


def _part_from(text: str) -> ShardPart:
    d = json.loads(text)
    raw = d["stats"]
    stats = SplitStats(**{**raw, "images": {ch: ImageStats(**t) for ch, t in raw["images"].items()}})
    shard = None if d["shard"] is None else ShardInfo(**d["shard"])
    return ShardPart(**{**d, "stats": stats, "shard": shard})


def committed(out: BuildOutput, shards: list[ShardPlan], ctx: ShardContext) -> set[str]:
    """Names (``SPLIT/NNNNNN``) of the shards already built for the plan of ``ctx`` (its
    fingerprint and its cut)."""
    done: set[str] = set()
    for split in dict.fromkeys(s.split for s in shards):
        markers = out.sizes(f"{PARTS}/{split}")
        files = out.sizes(split)
        wanted = [part_stem(s.split, s.index) + ".done" for s in shards if s.split == split]
        texts = out.read_texts([m for m in wanted if m.rsplit("/", 1)[1] in markers])
        for rel, text in texts.items():
            try:
                marker = json.loads(text)
            except json.JSONDecodeError:
                continue
            shard = marker.get("shard")
            ok = shard is None or (
                files.get(shard["tar"].rsplit("/", 1)[1]) == shard["bytes"]
                and all(shard[k].rsplit("/", 1)[1] in files for k in ("index", "ids") if shard.get(k))
            )
            if marker.get("fingerprint") == ctx.fingerprint and marker.get("cut", "") == ctx.cut and ok:
                done.add(f"{split}/{rel.rsplit('/', 1)[1].removesuffix('.done')}")
    return done


def read_parts(out: BuildOutput, shards: list[ShardPlan]) -> dict[str, ShardPart]:
    """The parts of ``shards`` that exist, by shard name."""
    rels = {part_stem(s.split, s.index) + ".part.json": s.name for s in shards}
    return {rels[rel]: _part_from(text) for rel, text in out.read_texts(list(rels)).items()}
