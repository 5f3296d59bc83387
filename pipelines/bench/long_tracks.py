"""``python -m pipelines.bench_long``: does training cost follow the audio used, not the track length?

``throughput``: the same total audio as 30-s tracks and as 300-s tracks (stored in 30-s
segments), plus the 300-s tracks stored whole (``--segment-seconds 300``: how every track was
stored before segments), each through the DALI cpu training loader in one run (``--repeat``
interleaved runs in rotated order, median shown); prints chunks/s per set and the ratios to the 30-s set.
``eval-data``: a folder dataset of long tracks (default 8 test tracks of 10 minutes) to build
and evaluate with ``python -m eval`` when measuring its peak memory (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bench.throughput import DEFAULT_CONFIG, make_loader, pipeline_config, time_batches
from shards.base.errors import CliParser
from shards.bench.synth import CSV_NAME, GENRES, make_synth, synth_track
from shards.builder.audio import write_blocks
from shards.format import Codec


def _all_train(raw: Path) -> None:
    """Every track of a synthetic folder in the train split (the throughput sets compare the same audio)."""
    df = pd.read_csv(raw / CSV_NAME)
    df["split"] = "train"
    df.to_csv(raw / CSV_NAME, index=False)


def _shards(raw: Path, out: Path, rate: int, segment: float, codec: Codec, workers: int) -> Path:
    from shards.builder.config import BuildConfig
    from shards.builder.driver import build

    opts: dict[str, Any] = {
        "sample_rate": rate,
        "segment_seconds": segment,
        "codec": codec,
        "workers": workers,
    }
    # resumes: nothing to do when already built with these settings
    build(BuildConfig(source="folder", root=raw, out=out, **opts), progress=False)
    return out


def throughput(args: argparse.Namespace, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """chunks/s of the DALI cpu training loader on each set (same total audio)."""
    rate, short, long = cfg["features"].sample_rate, args.short_seconds, args.long_seconds
    sets = []
    plan = (
        (short, short, f"{short:g}s"),
        (long, short, f"{long:g}s-segmented"),
        (long, long, f"{long:g}s-whole"),
    )
    for seconds, segment, name in plan:
        tracks = round(args.total_seconds / seconds)
        raw = args.dir / f"raw-{seconds:g}s"
        if not (raw / CSV_NAME).is_file():
            make_synth(raw, tracks=tracks, seconds=seconds, formats=["wav"], sample_rates=[rate])
            _all_train(raw)
        out = args.dir / f"shards-{args.codec}-{name}"
        sets.append((name, _shards(raw, out, rate, segment, args.codec, args.build_workers)))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sets}
    for turn in range(args.repeat):  # interleaved and rotated: load changes and run position hit every set
        for name, shards in sets[turn % len(sets) :] + sets[: turn % len(sets)]:
            loader = make_loader("dali-cpu", shards, cfg, args.workers, "train")
            chunk = cfg["loader"].chunk_seconds
            runs[name].append(
                time_batches(loader, warmup=args.warmup, batches=args.batches, chunk_seconds=chunk)
            )
            del loader
            gc.collect()  # the previous pipeline's threads and buffers go before the next one starts
    rows = []
    for name, res in runs.items():
        speeds = sorted(r["chunks_per_s"] for r in res)
        median = res[[r["chunks_per_s"] for r in res].index(speeds[len(speeds) // 2])]
        rows.append({"set": name, **median, "runs": "/".join(str(v) for v in speeds)})
    base = rows[0]["chunks_per_s"]
    for r in rows:
        r["vs_short"] = round(r["chunks_per_s"] / base, 3)
    return rows


def eval_data(out: Path, tracks: int, seconds: float, rate: int, seed: int = 0) -> Path:
    """``tracks`` test tracks of ``seconds`` (plus 2 short train and validation tracks) with
    the synthetic genre rule (the lead tone of ``shards.bench.synth``, plus noise): cheap to make at
    any length."""
    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    plan = [("test", seconds)] * tracks + [("train", 6.0)] * 2 + [("validation", 6.0)] * 2
    for i, (split, sec) in enumerate(plan):
        rel = f"audio/{i:04d}.wav"
        y = synth_track(i % len(GENRES), 0, ["noise"], sec, rate, rng)
        write_blocks(out / rel, y, rate, "WAV", "PCM_16")
        rows.append({"path": rel, "label": GENRES[i % len(GENRES)], "split": split})
    pd.DataFrame(rows).to_csv(out / CSV_NAME, index=False)
    return out / CSV_NAME


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench_long", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="DALI cpu chunks/s: 30-s vs 300-s tracks, same total audio")
    t.add_argument("--dir", type=Path, required=True, help="work folder (raw audio and shards, reused)")
    t.add_argument("--total-seconds", type=float, default=1800.0, help="audio per set")
    t.add_argument("--short-seconds", type=float, default=30.0, help="short tracks (and the segment length)")
    t.add_argument("--long-seconds", type=float, default=300.0, help="long tracks")
    t.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment TOML")
    t.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="DALI num_threads")
    t.add_argument("--build-workers", type=int, default=1)
    t.add_argument("--codec", choices=["pcm16", "flac", "ogg"], default="pcm16", help="stored audio")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--batches", type=int, default=100)
    t.add_argument("--repeat", type=int, default=3, help="runs per set (interleaved); the median is shown")
    e = sub.add_parser("eval-data", help="a folder dataset of long test tracks")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--tracks", type=int, default=8)
    e.add_argument("--seconds", type=float, default=600.0)
    e.add_argument("--sample-rate", type=int, default=16000)
    args, overrides = ap.parse_known_args(argv)
    if args.cmd == "eval-data":
        if overrides:
            ap.error(f"unrecognized arguments: {' '.join(overrides)}")
        print(eval_data(args.out, args.tracks, args.seconds, args.sample_rate))
        return 0
    cfg = pipeline_config(args.config, overrides, args.workers)
    rows = throughput(args, cfg)
    cols = ["set", "chunks", "seconds", "chunks_per_s", "vs_short", "cpu_cores", "mean_wait_ms", "runs"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"config: {args.config} {' '.join(overrides)}; codec {args.codec}; load average {load}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))
    return 0
