"""``python -m train.stepbench``: how input-bound training is, per model family.

Times the real ``Trainer.train_step`` (the config's optimiser, bf16 autocast and
channels_last on CUDA) on the real DALI loader and on GPU-resident synthetic batches of
the same shape; the ratio is the "never input-bound" figure. It lives under train
because it needs a model; ``python -m pipelines.bench`` measures the loader alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.throughput import DEFAULT_CONFIG, add_shard_args, bench_shards, machine
from pipelines.config import FeatureConfig
from shards.base.config import load_sections
from shards.base.errors import CliParser
from train.bench.families import bench_real_loader


def bench_train_step(
    shards: Path, family: str, *, config: Path, batches: int, warmup: int, overrides: list[str]
) -> list[dict[str, Any]]:
    """Steps/s of ``family`` on GPU-resident synthetic batches vs the real DALI loader."""
    extra = ["train.amp=bf16", "train.channels_last=true", *[o.removeprefix("--") for o in overrides]]
    r = bench_real_loader(config, shards, family, batches, warmup, extra)
    real = "dali-gpu" if torch.cuda.is_available() else "dali-cpu"
    common = {"model": family, "shape": r["shape"], "batch": r["batch"], "params_m": r["params_m"]}
    return [
        {"pipeline": "synthetic-resident", "steps_per_s": r["synthetic_steps_per_s"], **common},
        {"pipeline": real, "steps_per_s": r["real_steps_per_s"], "vs_synthetic": r["ratio"], **common},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m train.stepbench", description=__doc__.splitlines()[0])
    add_shard_args(ap)
    ap.add_argument("--family", default="efficientnet_b2", help="model family whose step is timed")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment TOML")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args, overrides = ap.parse_known_args(argv)
    rate = load_sections({"features": FeatureConfig}, args.config, allow_other=True)["features"].sample_rate
    shards = bench_shards(ap, args, rate, progress=not args.json)
    rows = bench_train_step(
        shards, args.family, config=args.config, batches=args.batches, warmup=args.warmup, overrides=overrides
    )
    doc = {"machine": machine(), "shards": str(shards), "results": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"machine: {doc['machine']}; shards: {shards}")
        for r in rows:
            print(" | ".join(f"{k}={v}" for k, v in r.items()))
    return 0
