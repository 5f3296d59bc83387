"""``python -m pipelines.bench``: DALI gpu / DALI cpu / webdataset+torchaudio baseline, side by side.

Same shards, same features, one process. Each pipeline gets a warm-up, then a fixed
number of training batches; we report chunks/s, hours of audio per second, mean wait
per batch, CPU cores busy (process + worker CPU time / wall) and GPU memory. The same
CPU parallelism for both: ``--workers N`` is the baseline's DataLoader workers and DALI's
``num_threads`` (it overrides ``loader.num_threads``).
It knows no model: a model's training step on the real loader vs resident batches (how
input-bound training is) is ``python -m train.stepbench``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nvidia.dali
import torch

from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.defaults import feature_defaults
from shards.base.config import load_sections, to_dict
from shards.base.distributed import resolve_device
from shards.base.errors import CliParser
from shards.format import storage

PIPELINES = ("dali-gpu", "dali-cpu", "baseline")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_customcnn.toml"
"""The experiment whose sections a benchmark uses when it needs one and has no --config."""


def cpu_seconds() -> float:
    """CPU time of this process and its live children (DataLoader workers), in seconds."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (every process and the kernel: what the
    process figure misses, e.g. page-cache reads): /proc/stat, else psutil where it is installed,
    else None (the figure is left out)."""
    stat = Path("/proc/stat")
    if stat.is_file():
        v = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    if importlib.util.find_spec("psutil") is not None:
        import psutil

        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))
    return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in task.read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *descendants(k)]
    return out


def _forever(loader: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def time_batches(
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    warmup: int,
    batches: int,
    chunk_seconds: float,
    step: Any = None,
) -> dict[str, float]:
    """Consume ``warmup`` then ``batches`` batches (optionally running ``step(batch)`` on each)."""
    cuda = torch.cuda.is_available()
    it = _forever(loader)
    for _ in range(warmup):
        batch = next(it)
        if step is not None:
            step(batch)
    if cuda:
        torch.cuda.synchronize()
    chunks, wait = 0, 0.0
    cpu0, machine0, t0 = cpu_seconds(), machine_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        w0 = time.perf_counter()
        batch = next(it)
        if cuda:
            torch.cuda.synchronize()
        wait += time.perf_counter() - w0
        chunks += batch["x"].shape[0]
        if step is not None:
            step(batch)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    machine1 = machine_cpu_seconds()
    del it
    res: dict[str, float] = {
        "batches": batches,
        "chunks": chunks,
        "seconds": round(wall, 3),
        "chunks_per_s": round(chunks / wall, 1),
        "audio_hours_per_s": round(chunks * chunk_seconds / 3600 / wall, 4),
        "mean_wait_ms": round(1000 * wait / batches, 2),
        "cpu_cores": round(cpu / wall, 2),
        "steps_per_s": round(batches / wall, 3),
    }
    if machine0 is not None and machine1 is not None:
        res["machine_cpu_cores"] = round((machine1 - machine0) / wall, 2)
    return res


def make_loader(
    name: str, shards: Path, cfg: dict[str, Any], workers: int, split: str, mix: MixArgs | None = None
) -> Any:
    """One of PIPELINES as an iterable of training batches (``mix``: DALI mixing more builds in)."""
    from pipelines.bench.baseline import BaselineLoader
    from pipelines.bench.image_baseline import ImageBaselineLoader
    from pipelines.loader import build_loader
    from pipelines.shard_checks import load_manifest

    kw = dict(mode="train", features=cfg["features"], augment=cfg["augment"], loader=cfg["loader"])
    if name == "baseline":  # on image shards: PIL + torchvision in the same DataLoader
        if storage.is_remote(shards):
            raise ValueError(f"{shards}: the baseline reads local builds only; --pipelines=dali-cpu")
        base = ImageBaselineLoader if load_manifest(shards).kind == "image" else BaselineLoader
        return base(shards, split, workers=workers, rank=0, world_size=1, device=resolve_device("auto"), **kw)
    device = "cuda" if name == "dali-gpu" else "cpu"
    if mix is not None and mix.builds:
        both: list[str | Path] = [shards, *mix.builds]
        return build_loader(both, split, rank=0, world_size=1, device=device, weights=mix.weights, **kw)
    return build_loader(shards, split, rank=0, world_size=1, device=device, **kw)


@dataclass(frozen=True)
class MixArgs:
    """``--mix`` builds trained on with the first one, and ``--weights`` (one per build)."""

    builds: tuple[str, ...]
    weights: tuple[float, ...] | None


def bench_pipeline(name: str, shards: Path, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        free0 = torch.cuda.mem_get_info()[0]
        torch.cuda.reset_peak_memory_stats()
    mix = MixArgs(tuple(args.mix), tuple(float(w) for w in args.weights.split(",")) if args.weights else None)
    if name == "baseline" and mix.builds:
        raise ValueError("--mix: the baseline reads one build; use --pipelines=dali-cpu")
    loader = make_loader(name, shards, cfg, args.workers, args.split, mix)
    res: dict[str, Any] = time_batches(
        loader, warmup=args.warmup, batches=args.batches, chunk_seconds=cfg["loader"].chunk_seconds
    )
    res["pipeline"] = name
    caches = getattr(loader, "caches", [])  # the baselines have none
    if caches:  # an object-store build through the shard cache
        stats = caches[0].stats
        res |= {
            "cache_fetched": stats.fetched,
            "cache_hits": stats.hits,
            "cache_wait_s": round(stats.wait_seconds, 3),
        }
    if cuda:
        res["gpu_mem_device_mib"] = round((free0 - torch.cuda.mem_get_info()[0]) / 2**20, 1)
        res["gpu_mem_torch_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if hasattr(loader, "close"):  # DALI's threads and pooled device memory, before the next pipeline
        loader.close()
    del loader
    gc.collect()
    return res


def _warn_short_epoch(shards: Path, cfg: dict[str, Any], args: argparse.Namespace) -> None:
    """Epoch boundaries inside the timed window measure start-up, not throughput: at each one
    DALI computes and drops the reader's padded last batch (up to one batch per epoch) and
    the baseline restarts its workers' prefetching."""
    import sys

    from pipelines.shard_checks import load_manifest

    tracks = load_manifest(shards).split(args.split).num_samples
    per_epoch = tracks // cfg["loader"].tracks_per_batch
    if per_epoch < args.warmup + args.batches:
        print(
            f"note: {args.split} has {tracks} tracks = {per_epoch} training batch(es) per epoch, fewer than "
            f"the {args.warmup + args.batches} run: every epoch boundary costs DALI a padded batch it computes "
            "and drops and the baseline a restart of its workers; use more tracks (--synth-tracks) for "
            "steady-state figures",
            file=sys.stderr,
        )


def machine() -> dict[str, Any]:
    m: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dali": nvidia.dali.__version__,
    }
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
    return m


def add_shard_args(ap: CliParser) -> None:
    """SHARDS or ``--synth DIR`` (built there first when absent): the benchmarks' input."""
    ap.add_argument("shards", nargs="?", help="shard build folder or s3://bucket/prefix")
    ap.add_argument("--synth", type=Path, help="build synthetic shards here first if absent, and use them")
    ap.add_argument("--synth-tracks", type=int, default=32)
    ap.add_argument("--synth-seconds", type=float, default=30.0)
    ap.add_argument(
        "--synth-images", action="store_true", help="--synth builds image shards (spectrogram JPEGs) instead"
    )


def pipeline_config(
    config: Path,
    overrides: list[str],
    workers: int,
    defaults: Callable[[dict[str, Any]], dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The experiment file's ``[features]``, ``[augment]`` and ``[loader]`` with the CLI overrides,
    and as many DALI threads as the benchmark's ``--workers`` (a fair comparison with the baseline)."""
    sections = {"features": FeatureConfig, "augment": AugmentConfig, "loader": LoaderConfig}
    cfg = load_sections(sections, config, overrides, allow_other=True, defaults=defaults)
    cfg["loader"] = dataclasses.replace(cfg["loader"], num_threads=workers)
    return cfg


def bench_shards(ap: CliParser, args: argparse.Namespace, sample_rate: int, progress: bool) -> Any:
    """The shard folder (or ``s3://`` prefix) of ``add_shard_args``, building the synthetic one
    when asked."""
    shards: str | Path | None = args.shards or args.synth
    if shards is None:
        ap.error("give SHARDS or --synth DIR")
    if args.synth is not None and args.synth_images and not (args.synth / "manifest.json").is_file():
        from pipelines.bench.synth_images import build_synth_image_shards

        raw = args.synth.with_name(args.synth.name + "-raw")
        build_synth_image_shards(args.synth, raw=raw, tracks=args.synth_tracks, seconds=args.synth_seconds)
    elif args.synth is not None and not (args.synth / "manifest.json").is_file():
        from shards.bench.synth import build_synth_shards

        build_synth_shards(
            args.synth, tracks=args.synth_tracks, seconds=args.synth_seconds, sample_rate=sample_rate,
            progress=progress,
        )  # fmt: skip
    return shards


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench", description=__doc__.splitlines()[0])
    add_shard_args(ap)
    ap.add_argument("--config", type=Path, help="experiment TOML ([features] [augment] [loader] are used)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--pipelines", default=",".join(PIPELINES), help="comma list of " + ", ".join(PIPELINES))
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="baseline DataLoader workers and DALI num_threads (overrides loader.num_threads)",
    )
    ap.add_argument(
        "--mix", action="append", default=[], help="another build mixed in (repeatable; DALI only)"
    )
    ap.add_argument("--weights", help="comma list: each build's share of an epoch (the first, then --mix's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument(
        "--graph-ops", action="store_true", help="count the gpu graph's DALI operators (train, eval) and exit"
    )
    args, overrides = ap.parse_known_args(argv)
    rate = pipeline_config(args.config, overrides, args.workers)["features"].sample_rate
    shards = bench_shards(ap, args, rate, progress=not args.json)
    # read again now that the build exists: an image build's channels and sizes, unless set
    cfg = pipeline_config(args.config, overrides, args.workers, defaults=feature_defaults(shards))
    if args.graph_ops:
        from pipelines.bench.graph_ops import graph_ops_by_mode

        ops = graph_ops_by_mode(shards, cfg, args.split)
        print(json.dumps(ops) if args.json else "\n".join(f"{m}: {c}" for m, c in ops.items()))
        return 0
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    bad = [n for n in names if n not in PIPELINES]
    if bad:
        ap.error(f"--pipelines: unknown {bad}; choose from {PIPELINES}")
    if "dali-gpu" in names and not torch.cuda.is_available():
        names.remove("dali-gpu")
    _warn_short_epoch(shards, cfg, args)
    results = [bench_pipeline(n, shards, cfg, args) for n in names]
    doc = {
        "machine": machine(),
        "shards": str(shards),
        "config": {k: to_dict(v) for k, v in cfg.items()},
        "workers": args.workers,
        "load_average": [round(x, 2) for x in os.getloadavg()],  # at the end of the run (1, 5, 15 min)
        "results": results,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


def print_table(doc: dict[str, Any]) -> None:
    cols = [
        "pipeline",
        "chunks_per_s",
        "audio_hours_per_s",
        "mean_wait_ms",
        "cpu_cores",
        "machine_cpu_cores",
        "steps_per_s",
        "gpu_mem_device_mib",
        "vs_synthetic",
    ]
    rows = doc["results"]
    cols = [c for c in cols if any(c in r for r in rows)]
    print(f"machine: {doc['machine']}; shards: {doc['shards']}; baseline workers: {doc['workers']}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))
