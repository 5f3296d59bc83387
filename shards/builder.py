"""The one builder: importer records -> decoded, shuffled, size-bounded shards + manifest.

Resume: the per-split order is a seeded shuffle of the importer's records, so it is the
same on every run with the same config. After each finished shard the builder writes
``.build-state.json`` (atomically) with how many records of the split that shard ended
at; a re-run with the same fingerprint keeps those shards untouched and decodes only
the rest. ``manifest.json`` is written last: its presence means the build is complete.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from shards.audio import AudioSpec, Encoded, segment_bounds
from shards.base.atomic import atomic_write_text, write_faults
from shards.base.config import to_dict
from shards.base.progress import progress
from shards.config import BuildConfig
from shards.images import EncodedImages, ImageSpec
from shards.importers import get_importer
from shards.manifest import (
    AUDIO_EXT,
    LABEL_EXT,
    MANIFEST,
    META_EXT,
    REJECTS,
    SEGMENT_EXT,
    SEGMENT_FIELDS,
    TRACK_EXT,
    ImageChannel,
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
    write_manifest,
)
from shards.plan import fingerprint, plan
from shards.records import Dataset, Record
from shards.workers import decode_inline, decode_pooled
from shards.writer import ShardWriter

STATE = ".build-state.json"
_SHARD_FILE = re.compile(r"^\d{6}\.(tar|idx)$")
_TEMP_FILE = re.compile(r"^\.\d{6}\.(tar|idx)\..*\.tmp$")  # left by a killed run (atomic_path)


def import_dataset(cfg: BuildConfig) -> Dataset:
    """Run the registered importer named by ``cfg.source``."""
    return get_importer(cfg.source).load(cfg)


def _fresh_split() -> dict[str, Any]:
    return {
        "shards": [],
        "consumed": 0,
        "written": 0,
        "samples": 0,
        "max_segment": 0.0,
        "seconds": 0.0,
        "min": None,
        "max": None,
        "rejects": [],
        "done": False,
        "images": {},  # image kind: channel -> {"exts": [...], "min": [h, w], "max": [h, w]}
    }


def _load_state(out: Path, fp: str, splits: list[str]) -> dict[str, Any] | None:
    """The resumable state of a previous run with the same fingerprint, trimmed to shards
    still on disk with their recorded size; None when nothing can be reused."""
    path = out / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if state.get("fingerprint") != fp:
        return None
    for split in splits:
        st = state["splits"].setdefault(split, _fresh_split())
        for k, s in enumerate(st["shards"]):
            tar, idx = out / s["tar"], out / s["index"]
            if not (tar.is_file() and idx.is_file() and tar.stat().st_size == s["bytes"]):
                keep, rejects = st["shards"][:k], st["rejects"]
                st.update(keep[-1]["resume"] if keep else _fresh_split())
                st["rejects"] = rejects[: st["rejects"]] if keep else []
                st["shards"], st["done"] = keep, False
                break
    return state


def _snapshot(st: dict[str, Any]) -> dict[str, Any]:
    """A split's counters at a shard boundary; rejects by count (the list only grows)."""
    snap = {k: copy.deepcopy(v) for k, v in st.items() if k not in ("shards", "rejects")}
    return snap | {"rejects": len(st["rejects"])}


class _SplitRun:
    """Writes one split: the writer, running stats and state checkpoints after each shard."""

    def __init__(self, builder: Builder, split: str) -> None:
        self.b, self.split = builder, split
        self.st = builder.state["splits"][split]
        self.items = builder.planned[split]
        start = len(self.st["shards"])
        self.writer = ShardWriter(builder.cfg.out, split, max_bytes=builder.cfg.shard_bytes, start=start)
        self.n_done = len(self.writer.output)

    def add(self, i: int, result: Encoded | EncodedImages | str) -> None:
        key, rec = self.items[i]
        if isinstance(result, str):
            self.st["rejects"].append({"path": rec.path, "reason": result, "key": key, "split": self.split})
        elif isinstance(result, EncodedImages):
            self._add_images(i, key, rec, result)
        else:
            self._write_track(i, key, rec, result)
        self.st["consumed"] = i + 1

    def _write_track(self, i: int, key: str, rec: Record, result: Encoded) -> None:
        """One sample per segment, all in one shard; each carries the track's id, labels and length."""
        tid, rate = self.st["written"], self.b.cfg.sample_rate
        bounds = segment_bounds(result.samples, self.b.cfg.segment_samples)
        label = self.b.ds.task.encode(rec.labels)
        group = []
        for index, ((start, end), data) in enumerate(zip(bounds, result.segments)):
            name = key if len(bounds) == 1 else f"{key}-s{index:04d}"
            seg = [self.st["samples"] + index, index, len(bounds), start, result.samples]
            meta = {
                "key": name,
                "track_key": key,
                "source": self.b.ds.source,
                "source_id": rec.key,
                "path": rec.path,
                "split": self.split,
                "tid": tid,
                "segment": dict(zip(SEGMENT_FIELDS, seg)),
                "labels": rec.labels,
                "seconds": round(result.seconds, 4),
                "segment_seconds": round((end - start) / rate, 4),
                "sample_rate": rate,
                "orig_sample_rate": result.orig_sample_rate,
                "orig_channels": result.orig_channels,
                **rec.meta,
            }
            members = {
                AUDIO_EXT[self.b.cfg.codec]: data,
                LABEL_EXT: label,
                TRACK_EXT: np.asarray([tid], dtype="<i8").tobytes(),
                SEGMENT_EXT: np.asarray(seg, dtype="<i8").tobytes(),
                META_EXT: json.dumps(meta, sort_keys=True).encode(),
            }
            group.append((name, members))
        self.writer.write_group(group)
        self._checkpoint(consumed=i)  # a shard may have closed before this track
        self.st["samples"] += len(bounds)
        self.st["max_segment"] = max(self.st["max_segment"], max(b - a for a, b in bounds) / rate)
        self._count(result.seconds)

    def _count(self, seconds: float) -> None:
        """One more track written (its samples are counted by the caller)."""
        self.st["written"] += 1
        self.st["seconds"] += seconds
        self.st["min"] = seconds if self.st["min"] is None else min(self.st["min"], seconds)
        self.st["max"] = seconds if self.st["max"] is None else max(self.st["max"], seconds)

    def _add_images(self, i: int, key: str, rec: Record, result: EncodedImages) -> None:
        """An image sample: the images' bytes unchanged, labels, track id, metadata; sizes tallied."""
        tid = self.st["written"]
        sizes = {ch: list(hw) for ch, hw in result.sizes.items()}
        meta: dict[str, Any] = {
            "key": key,
            "source": self.b.ds.source,
            "source_id": rec.key,
            "path": rec.path,
        }
        meta |= {"split": self.split, "tid": tid, "labels": rec.labels, "image_sizes": sizes, **rec.meta}
        self.writer.write(
            key,
            {
                **result.members,
                LABEL_EXT: self.b.ds.task.encode(rec.labels),
                TRACK_EXT: np.asarray([tid], dtype="<i8").tobytes(),
                META_EXT: json.dumps(meta, sort_keys=True).encode(),
            },
        )
        self._checkpoint(consumed=i)
        self.st["samples"] += 1
        self._count(0.0)  # image samples carry no audio
        for member in result.members:
            ch = member.split(".", 1)[0]
            h, w = result.sizes[ch]
            t = self.st["images"].setdefault(ch, {"exts": [], "min": [h, w], "max": [h, w]})
            if member not in t["exts"]:
                t["exts"].append(member)
            t["min"] = [min(t["min"][0], h), min(t["min"][1], w)]
            t["max"] = [max(t["max"][0], h), max(t["max"][1], w)]

    def _checkpoint(self, consumed: int) -> None:
        while self.n_done < len(self.writer.output):
            info = self.writer.output[self.n_done]
            resume = _snapshot(self.st) | {"consumed": consumed}
            self.st["shards"].append(to_dict(info) | {"resume": resume})
            self.n_done += 1
            self.b.save_state()

    def finish(self) -> None:
        self.writer.close()
        self._checkpoint(consumed=len(self.items))
        self.st["done"] = True
        self.b.save_state()


class Builder:
    """One build: import, plan, resume, decode in a pool, write shards, manifest and rejects."""

    def __init__(self, cfg: BuildConfig, *, progress: bool = True, dataset: Dataset | None = None) -> None:
        self.cfg, self.progress = cfg, progress
        self.ds = dataset if dataset is not None else import_dataset(cfg)  # given: records made by the caller
        self.planned = plan(self.ds, cfg.seed)
        self.fp = fingerprint(cfg, self.ds, self.planned)
        self.spec: AudioSpec | ImageSpec = (
            ImageSpec(tuple(self.ds.channels))
            if self.ds.kind == "image"
            else AudioSpec(cfg.sample_rate, cfg.codec, cfg.min_seconds, cfg.segment_samples)
        )
        self.state: dict[str, Any] = {}

    def save_state(self) -> None:
        atomic_write_text(self.cfg.out / STATE, json.dumps(self.state) + "\n")

    def up_to_date(self) -> Manifest | None:
        """The existing manifest when a previous identical build completed (nothing to do)."""
        if self.cfg.force or not (self.cfg.out / MANIFEST).is_file():
            return None
        state = _load_state(self.cfg.out, self.fp, list(self.planned))
        if not state or not all(state["splits"][s]["done"] for s in self.planned):
            return None
        try:
            m = read_manifest(self.cfg.out)
        except (OSError, ValueError):
            return None
        return m if m.build.get("fingerprint") == self.fp else None

    def run(self) -> Manifest:
        out = self.cfg.out
        with write_faults(out / STATE, what="the build folder"):
            out.mkdir(parents=True, exist_ok=True)
        done = self.up_to_date()
        if done is not None:
            return done
        for stale in (MANIFEST, REJECTS):
            (out / stale).unlink(missing_ok=True)
        state = None if self.cfg.force else _load_state(out, self.fp, list(self.planned))
        self.state = state or {"fingerprint": self.fp, "splits": {s: _fresh_split() for s in self.planned}}
        self.save_state()
        self._write_all()
        manifest = self._manifest()
        self._remove_stale(manifest)
        rejects = [{"path": r.path, "reason": r.reason, "key": r.key, "split": None} for r in self.ds.rejects]
        rejects += [r for s in self.planned for r in self.state["splits"][s]["rejects"]]
        atomic_write_text(out / REJECTS, "".join(json.dumps(r) + "\n" for r in rejects))
        write_manifest(out, manifest)  # last: its presence means the build is complete
        return read_manifest(out)

    def _remaining(self) -> dict[str, range]:
        """Per unfinished split, the positions in its planned order still to decode."""
        sts = self.state["splits"]
        return {
            s: range(sts[s]["consumed"], len(items))
            for s, items in self.planned.items()
            if not sts[s]["done"]
        }

    def _write_all(self) -> None:
        remaining = self._remaining()
        image = self.ds.kind == "image"
        jobs = [
            (i, rec.images if image else rec.audio, self.spec)
            for s, todo in remaining.items()
            for i in todo
            for rec in [self.planned[s][i][1]]
        ]
        workers = min(self.cfg.num_workers, max(1, len(jobs)))
        bar = progress(total=len(jobs), desc=f"shards {self.cfg.source}", unit="track", enabled=self.progress)
        # ordered results: the writer sees each split's records in the planned order
        source = decode_inline(jobs) if workers <= 1 else decode_pooled(jobs, workers)
        with contextlib.closing(source) as results, contextlib.closing(bar):
            for split, todo in remaining.items():
                run = _SplitRun(self, split)
                with run.writer:  # on an error the open shard's temp file is removed
                    for _ in todo:
                        run.add(*next(results))
                        bar.update(1)
                    run.finish()

    def _manifest(self) -> Manifest:
        splits = {}
        written = rejected = 0
        image = self.ds.kind == "image"
        for split in self.planned:
            st = self.state["splits"][split]
            written += st["written"]
            rejected += len(st["rejects"])
            if st["written"]:
                shards = [ShardInfo(**{k: v for k, v in s.items() if k != "resume"}) for s in st["shards"]]
                splits[split] = SplitInfo(
                    num_samples=st["samples"],
                    num_tracks=st["written"],
                    seconds=round(st["seconds"], 3),
                    min_seconds=round(st["min"], 4),
                    max_seconds=round(st["max"], 4),
                    max_segment_seconds=None if image else round(st["max_segment"], 4),
                    shards=shards,
                )
        rejected += len(self.ds.rejects)
        totals = {"input": self.ds.num_inputs, "written": written, "rejected": rejected}
        assert totals["input"] == written + rejected, totals
        build = to_dict(self.cfg) | {"fingerprint": self.fp}
        for k in ("force", "strict", "workers"):
            build.pop(k, None)
        return Manifest(
            source=self.ds.source,
            sample_rate=0 if image else self.cfg.sample_rate,
            codec="none" if image else self.cfg.codec,
            task=self.ds.task,
            splits=splits,
            totals=totals,
            build=build,
            segment_samples=None if image else self.cfg.segment_samples,
            kind="image" if image else "audio",
            images=self._image_channels() if image else {},
        )

    def _image_channels(self) -> dict[str, ImageChannel]:
        """Each channel's member extensions and the smallest/largest image over every split."""
        out: dict[str, ImageChannel] = {}
        for ch in self.ds.channels:
            seen = [self.state["splits"][s]["images"][ch] for s in self.planned]
            seen = [t for t in seen if t]
            if not seen:
                continue
            exts = sorted({e for t in seen for e in t["exts"]})
            lo = [min(t["min"][k] for t in seen) for k in (0, 1)]
            hi = [max(t["max"][k] for t in seen) for k in (0, 1)]
            out[ch] = ImageChannel(exts=exts, min_size=lo, max_size=hi)
        return out

    def _remove_stale(self, manifest: Manifest) -> None:
        """Delete shard files a previous, different build left behind."""
        keep = {s.tar for info in manifest.splits.values() for s in info.shards}
        keep |= {s.index for info in manifest.splits.values() for s in info.shards}
        for d in self.cfg.out.iterdir():
            if d.is_dir():
                for f in d.iterdir():
                    stale = _SHARD_FILE.match(f.name) and f"{d.name}/{f.name}" not in keep
                    if stale or _TEMP_FILE.match(f.name):
                        f.unlink()


def build(cfg: BuildConfig, *, progress: bool = True, dataset: Dataset | None = None) -> Manifest:
    """Build (or resume, or confirm up to date) the shard folder ``cfg.out``; returns its manifest.
    ``dataset``: records to write instead of running ``cfg.source``'s importer (eval.predict)."""
    return Builder(cfg, progress=progress, dataset=dataset).run()
