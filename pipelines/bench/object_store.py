"""``python -m pipelines.bench.object_store``: training chunks/s from ``s3://`` vs local disk.

One run, the same shards, a local S3 server (moto, its own process, 127.0.0.1): a plain
parallel download of the split's bytes (what the link allows), the DALI loader on the local
build (epochs 1 and 2), through the whole-shard cache (epoch 1 cold, epoch 2 from the cache),
and DALI's direct member reads; requests per sample counted at the server for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.bench.throughput import add_shard_args, bench_shards, machine, pipeline_config
from pipelines.loader import build_loader
from shards.base.errors import CliParser, run_cli
from shards.bench.local_s3 import LocalS3
from shards.bench.synth import build_synth_shards
from shards.format import copy_build, read_manifest, storage


def _epochs(make: Any, epochs: int, server: LocalS3, samples: int) -> list[dict[str, Any]]:
    """Per epoch: chunks/s (epoch 1 includes building the loader) and requests per sample."""
    out, t0, r0 = [], time.perf_counter(), server.requests()
    loader = make()
    for _ in range(epochs):
        chunks = sum(batch["x"].shape[0] for batch in loader)
        t1, r1 = time.perf_counter(), server.requests()
        reqs = sum((r1 - r0).values())
        out.append({"chunks": chunks, "seconds": round(t1 - t0, 2), "chunks_per_s": round(chunks / (t1 - t0), 1),
                    "requests": reqs, "requests_per_sample": round(reqs / samples, 3)})  # fmt: skip
        t0, r0 = t1, r1
    if loader.caches:
        out[0]["cache_wait_s"] = round(loader.caches[0].stats.wait_seconds, 2)
    return out


def _download(urls: list[str], workers: int) -> float:
    """Seconds for a plain parallel download of ``urls`` (threads, one GET each) into /tmp."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda iu: storage.download(iu[1], Path(tmp) / f"{iu[0]}.tar"), enumerate(urls)))
        return time.perf_counter() - t0


def run(local: Path, cfg: dict[str, Any], *, rounds: int, workers: int, cache: Path) -> dict[str, Any]:
    """``rounds`` alternations of (local build, fresh cache) over 2 epochs each, so the machine's
    load (shared, noisy) hits both alike; ratios are medians of the rounds' own ratios."""
    info = read_manifest(local).split("train")
    with LocalS3() as server:
        os.environ.update(server.env())  # DALI's own S3 client reads the same variables
        server.create_bucket("bench")
        url = "s3://bench/build"
        copy_build(local, url, workers=workers, show=False)
        kw = dict(mode="train", features=cfg["features"], augment=cfg["augment"], rank=0, world_size=1)

        def make(shards: Any, **loader: Any) -> Any:
            return lambda: build_loader(
                shards, "train", loader=dataclasses.replace(cfg["loader"], **loader), **kw
            )

        n = info.num_samples
        res: dict[str, Any] = {
            "samples": n,
            "shards": len(info.shards),
            "bytes": sum(s.bytes for s in info.shards),
        }
        res["local"], res["cache"], res["download"] = [], [], []
        for r in range(rounds):
            res["local"].append(_epochs(make(local), 2, server, n))
            res["cache"].append(_epochs(make(url, cache_dir=str(cache / f"r{r}")), 2, server, n))
            seconds = _download(read_manifest(url).urls("train")[0], workers)
            res["download"].append({"seconds": round(seconds, 2), "mb_per_s": round(res["bytes"] / 1e6 / seconds, 1),
                                    "chunks_per_s_bound": round(res["local"][-1][0]["chunks"] / seconds, 1)})  # fmt: skip
        res["direct"] = _epochs(make(url, remote="direct", cache_dir=str(cache / "direct")), 1, server, n)
    first = [c[0]["chunks_per_s"] / min(d["chunks_per_s_bound"], lo[0]["chunks_per_s"])
             for c, d, lo in zip(res["cache"], res["download"], res["local"])]  # fmt: skip
    later = [c[1]["chunks_per_s"] / lo[1]["chunks_per_s"] for c, lo in zip(res["cache"], res["local"])]
    res["first_epoch_vs_goal"] = round(statistics.median(first), 3)
    res["later_epochs_vs_local"] = round(statistics.median(later), 3)
    return res


def add_store_args(ap: CliParser, shard_mb: float) -> None:
    """The object-store benchmarks' input: SHARDS or ``--synth DIR`` (shards of ``shard_mb``),
    an experiment file, and how many threads."""
    add_shard_args(ap)
    ap.add_argument("--config", type=Path, help="experiment TOML ([features] [augment] [loader])")
    ap.add_argument("--synth-shard-mb", type=float, default=shard_mb, help="shard size of a --synth build")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="DALI threads and transfers")


def store_input(ap: CliParser, argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any], Path]:
    """(arguments, pipeline configs, the local build: built first for ``--synth``) of ``add_store_args``."""
    args, overrides = ap.parse_known_args(argv)
    cfg = pipeline_config(args.config, overrides, args.workers)
    if args.synth is not None and not (args.synth / "manifest.json").is_file():
        build_synth_shards(args.synth, tracks=args.synth_tracks, seconds=args.synth_seconds,
                           sample_rate=cfg["features"].sample_rate, shard_size_mb=args.synth_shard_mb)  # fmt: skip
    return args, cfg, Path(bench_shards(ap, args, cfg["features"].sample_rate, progress=False))


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench.object_store", description=__doc__.splitlines()[0])
    add_store_args(ap, shard_mb=16.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of local and cached runs")
    args, cfg, local = store_input(ap, argv)
    with tempfile.TemporaryDirectory(prefix="musicstream-cache-") as cache:
        res = run(local, cfg, rounds=args.rounds, workers=args.workers, cache=Path(cache))
    res["machine"] = machine()
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
