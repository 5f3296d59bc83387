"""``python -m shards bench``: shard-build throughput from MP3 sources.

Reports seconds of audio packed per wall-clock second per worker process ("x real time
per core"), for the whole build (import, decode, resample, encode, tar, index, sha256,
manifest) and a per-stage split of one file, so a shortfall says where the time goes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from shards.bench.synth import make_synth
from shards.builder.audio import SOXR_QUALITY, decode, encode, to_mono
from shards.builder.config import BuildConfig
from shards.builder.driver import build


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (the pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stage_times(path: Path, sample_rate: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds per stage for one file: decode, downmix+resample, pcm16 encode."""
    best = {"decode": 1e9, "resample": 1e9, "encode": 1e9}
    for _ in range(repeats):
        t0 = time.perf_counter()
        x, sr = decode(path)
        t1 = time.perf_counter()
        y = to_mono(x, sr, sample_rate)
        t2 = time.perf_counter()
        encode(y, sample_rate, "pcm16")
        t3 = time.perf_counter()
        for k, v in zip(best, (t1 - t0, t2 - t1, t3 - t2)):
            best[k] = min(best[k], v)
    return best


def synth_mp3(raw: Path, *, tracks: int, seconds: float, source_rate: int) -> float:
    """The benchmark's MP3 sources in ``raw`` (made once: MP3 encoding is slow); seconds spent."""
    params = {"tracks": tracks, "seconds": seconds, "source_rate": source_rate}
    t0 = time.perf_counter()
    stamp = raw / "bench-params.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        make_synth(
            raw, tracks=tracks, seconds=seconds, formats=["mp3"], sample_rates=[source_rate], stereo=True
        )
        stamp.write_text(json.dumps(params))
    return time.perf_counter() - t0


def run(work: Path, *, tracks: int, seconds: float, workers: list[int], source_rate: int) -> dict:
    raw = work / "raw"
    gen = synth_mp3(raw, tracks=tracks, seconds=seconds, source_rate=source_rate)
    results = []
    for w in workers:
        cfg = BuildConfig(source="folder", root=raw, out=work / f"out{w}", workers=w, force=True)
        c0, t0 = _cpu_seconds(), time.perf_counter()
        m = build(cfg, progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        audio = sum(s.seconds for s in m.splits.values())
        results.append(
            {
                "workers": w,
                "wall_s": round(wall, 3),
                "audio_s": round(audio, 1),
                "x_realtime": round(audio / wall, 1),
                "x_realtime_per_core": round(audio / wall / w, 1),
                "cpu_s": round(cpu, 3),
                "x_realtime_per_cpu_s": round(audio / cpu, 1),
            }
        )
    first = sorted((raw / "audio").glob("*.mp3"))[0]
    stages = stage_times(first, 22050)
    return {
        "tracks": tracks,
        "seconds_per_track": seconds,
        "source": f"MP3 {source_rate} Hz stereo",
        "target": "pcm16 22050 Hz mono",
        "soxr_quality": SOXR_QUALITY,
        "synth_s": round(gen, 1),
        "builds": results,
        "stage_x_realtime_one_file": {k: round(seconds / v, 1) for k, v in stages.items()},
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
    }


def main(a: argparse.Namespace) -> int:
    import os

    cores = len(os.sched_getaffinity(0))
    workers = sorted({1, a.workers or cores})
    tmp: Path | None = None
    work: Path
    if a.dir:
        work = a.dir
    else:
        work = tmp = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    try:
        res = run(work, tracks=a.tracks, seconds=a.seconds, workers=workers, source_rate=a.sample_rate)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["cores"] = cores
    print(json.dumps(res, indent=2))
    return 0
