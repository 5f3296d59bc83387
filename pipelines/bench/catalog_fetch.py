"""``python -m pipelines.bench.catalog_fetch``: a training run's start on an ``s3://`` build.

Before its first batch the sample plan reads every training sample's ids (``pipelines/catalog.py``).
A build with ids files costs one GET per shard; one written before them, one ranged GET per
sample. One run, the same shards uploaded both ways to a local S3 server (moto, its own
process, 127.0.0.1): seconds to a built loader and the requests counted at the server, on a
fresh cache folder (a machine's first run) and again on the same folder (kept copies).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench.object_store import add_store_args, store_input
from pipelines.bench.throughput import machine
from pipelines.loader import build_loader
from shards.base.errors import CliParser, run_cli
from shards.bench.local_s3 import LocalS3
from shards.format import copy_build, read_manifest
from shards.format.manifest import write_manifest


def without_ids_files(local: Path, out: Path) -> Path:
    """``local`` copied to ``out`` as builds before ids files were: no ``NNNNNN.ids`` files, no
    ``ids`` fields in the manifest (what such a build's reader meets)."""
    shutil.copytree(local, out)
    m = read_manifest(out)
    for name, info in m.splits.items():
        for shard in info.shards:
            if shard.ids is not None:
                (out / shard.ids).unlink()
        shards = [dataclasses.replace(s, ids=None, ids_sha256=None, ids_bytes=None) for s in info.shards]
        m.splits[name] = dataclasses.replace(info, shards=shards)
    write_manifest(out, m)
    return out


def _start(url: str, cfg: dict[str, Any], cache: Path, server: LocalS3) -> dict[str, Any]:
    """Seconds to a built training loader of ``url`` and the requests it sent, by kind."""
    before = server.requests_by_key()
    t0 = time.perf_counter()
    loader = build_loader(url, "train", mode="train", features=cfg["features"], augment=cfg["augment"],
                          loader=dataclasses.replace(cfg["loader"], cache_dir=str(cache)), rank=0, world_size=1)  # fmt: skip
    seconds = time.perf_counter() - t0
    for c in loader.caches:
        c.close()
    sent = server.requests_by_key() - before
    by = {"ids_files": ".ids", "tar_ranges": ".tar", "indexes": ".idx"}
    out: dict[str, Any] = {"seconds": round(seconds, 2), "requests": sum(sent.values())}
    for name, suffix in by.items():
        out[name] = sum(n for (method, key), n in sent.items() if method == "GET" and key.endswith(suffix))
    return out


def run(local: Path, cfg: dict[str, Any], workers: int) -> dict[str, Any]:
    info = read_manifest(local).split("train")
    res: dict[str, Any] = {"samples": info.num_samples, "shards": len(info.shards)}
    with tempfile.TemporaryDirectory(prefix="musicstream-catalog-") as tmp, LocalS3() as server:
        os.environ.update(server.env())
        server.create_bucket("bench")
        old = without_ids_files(local, Path(tmp) / "old")
        for name, build in (("ids_files", local), ("per_sample", old)):
            url = f"s3://bench/{name}"
            copy_build(build, url, workers=workers, show=False)
            cache = Path(tmp) / f"cache-{name}"
            res[name] = {
                "first_run": _start(url, cfg, cache, server),
                "second_run": _start(url, cfg, cache, server),
            }
    first = res["per_sample"]["first_run"]["seconds"] / max(res["ids_files"]["first_run"]["seconds"], 1e-9)
    res["first_run_speedup"] = round(first, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m pipelines.bench.catalog_fetch", description=__doc__.splitlines()[0])
    add_store_args(ap, shard_mb=64.0)
    args, cfg, local = store_input(ap, argv)
    res = run(local, cfg, args.workers)
    res["machine"] = machine()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
