"""``python -m shards.bench.scale_out``: the scale-out builder's costs, on this machine.

1. Executors: the same MP3 build (``python -m shards bench``'s synthetic sources) by the local
   process pool and by Ray (a local Ray with the same number of CPUs), in x real time per core,
   Ray's overhead as a ratio of wall times, and whether both wrote the same bytes.
2. Plan and merge for ``--records`` synthetic records (no audio decoded: every record points at
   one 30-s WAV, so header reads are real; shard tasks get made-up decode results of a few
   samples): plan (ordering + fingerprint, header reads, cutting), plan.json written and read,
   the shard tasks' own overhead, and merge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from shards.base.tasks import TaskSpec
from shards.bench.build_speed import synth_mp3
from shards.builder.audio import Encoded
from shards.builder.build_files import read_plan, write_plan
from shards.builder.config import BuildConfig
from shards.builder.driver import build
from shards.builder.estimate import Layout, estimate_all
from shards.builder.merge import merge
from shards.builder.output import BuildOutput
from shards.builder.plan import fingerprint, order_records, plan
from shards.builder.shard_task import build_shard
from shards.builder.workers import DecodePool
from shards.importers.records import Dataset, Record


def _digest(out: Path) -> str:
    """One sha256 over every file a reader sees (manifest, rejects, tars, indexes)."""
    h = hashlib.sha256()
    for p in sorted(
        x for x in out.rglob("*") if x.is_file() and not x.relative_to(out).as_posix().startswith(".")
    ):
        h.update(p.relative_to(out).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _timed_build(cfg: BuildConfig) -> dict:
    t0 = time.perf_counter()
    m = build(cfg, progress=False)
    wall = time.perf_counter() - t0
    audio = sum(s.seconds for s in m.splits.values())
    shards = sum(len(s.shards) for s in m.splits.values())
    return {
        "wall_s": round(wall, 2),
        "audio_s": round(audio, 1),
        "shards": shards,
        "x_realtime": round(audio / wall, 1),
    }


def executors(work: Path, *, tracks: int, seconds: float, shard_mb: float, cores: int, rounds: int) -> dict:
    """Local pool vs Ray on the same ``cores``, alternating ``rounds`` times (a shared machine's load drifts)."""
    import ray

    raw = work / "raw"
    synth_mp3(raw, tracks=tracks, seconds=seconds, source_rate=44100)
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    try:
        for _ in range(rounds):
            for name in ("local", "ray"):
                cfg = BuildConfig(
                    source="folder",
                    root=raw,
                    out=work / name,
                    workers=cores,
                    executor=name,
                    shard_size_mb=shard_mb,
                    force=True,
                )  # type: ignore[arg-type]
                runs[name].append(_timed_build(cfg))
    finally:
        ray.shutdown()
    out: dict[str, Any] = {"ray_start_s": round(ray_start, 2)}
    out["same_bytes"] = _digest(work / "local") == _digest(work / "ray")
    for name, rs in runs.items():
        best = min(rs, key=lambda r: r["wall_s"])
        out[name] = {
            **best,
            "x_realtime_per_core": round(best["x_realtime"] / cores, 1),
            "walls_s": [r["wall_s"] for r in rs],
        }
    out["ray_over_local_wall"] = round(out["ray"]["wall_s"] / out["local"]["wall_s"], 2)
    return out


def _records(n: int, audio: Path) -> Dataset:
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(8)]
    splits = rng.choice(["train", "validation", "test"], size=n, p=[0.8, 0.1, 0.1])
    recs = [
        Record(
            key=f"track{i:07d}",
            audio=audio,
            labels=classes[i % 8],
            split=str(splits[i]),
            path=f"audio/{i:07d}.mp3",
        )
        for i in range(n)
    ]
    return Dataset(source="folder", task=TaskSpec(kind="single", classes=classes), records=recs)


def plan_merge(work: Path, *, records: int, cores: int) -> dict:
    """Plan, plan.json, shard-task overhead and merge for ``records`` synthetic records."""
    work.mkdir(parents=True, exist_ok=True)
    wav = work / "one30s.wav"
    sf.write(wav, np.zeros(30 * 22050, dtype=np.int16), 22050, subtype="PCM_16")
    ds = _records(records, wav)
    cfg = BuildConfig(source="folder", root=work, out=work / "pm", workers=cores, force=True)
    out, t = BuildOutput(cfg.out), {}
    t0 = time.perf_counter()
    ordered = order_records(ds, cfg.seed)
    fingerprint(cfg, ds, ordered)
    t["order_and_fingerprint_s"] = time.perf_counter() - t0
    layout = Layout(cfg.sample_rate, cfg.codec, cfg.segment_samples, 1)
    t0 = time.perf_counter()
    pool = DecodePool(cores)
    estimate_all([r for items in ordered.values() for _, r in items], layout, pool=pool, timeout=60)
    t["header_reads_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    the_plan = plan(cfg, ds, ordered=ordered, pool=pool)
    pool.kill()
    t["plan_s (header reads + cut)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_plan(out, the_plan)
    t["plan_json_write_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert read_plan(out) is not None
    t["plan_json_read_s"] = time.perf_counter() - t0
    fake = Encoded(segments=[b"\0\0" * 8], samples=8, seconds=30.0, orig_sample_rate=22050, orig_channels=1)
    t0 = time.perf_counter()
    for shard in the_plan.shards:
        build_shard(the_plan.context, shard, out, ((p.tid, fake) for p in shard.records))
    t["shard_tasks_without_decoding_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = merge(out, the_plan)
    t["merge_s"] = time.perf_counter() - t0
    assert m.totals["written"] == records
    plan_mb = (cfg.local_out / ".build" / "plan.json").stat().st_size / 1e6
    return {
        "records": records,
        "shards": len(the_plan.shards),
        "plan_json_mb": round(plan_mb, 1),
        **{k: round(v, 2) for k, v in t.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shards.bench.scale_out", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="work folder (keeps the MP3 sources)")
    ap.add_argument("--tracks", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--shard-size", type=float, default=8.0, help="MiB per shard: Ray runs one task per shard"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--skip", choices=["executors", "plan-merge"], help="leave one part out")
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    res: dict = {
        "cores": cores,
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
    }
    res["load_before"] = os.getloadavg()[0]
    if a.skip != "executors":
        res["executors"] = executors(
            a.dir, tracks=a.tracks, seconds=a.seconds, shard_mb=a.shard_size, cores=cores, rounds=a.rounds
        )
    if a.skip != "plan-merge":
        res["plan_merge"] = plan_merge(a.dir, records=a.records, cores=cores)
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
