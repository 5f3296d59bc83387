"""``python -m train.stepbench``: how input-bound training is, per model family.

Times the real ``Trainer.train_step`` (the config's optimiser, bf16 autocast and
channels_last on CUDA) on the real DALI loader and on GPU-resident synthetic batches of
the same shape; the ratio is the "never input-bound" figure. It lives under train
because it needs a model; ``python -m pipelines.bench`` measures the loader alone.
``--mixup ALPHA`` adds mixup's cost (``augment.mixup_alpha``, train/mixup.py): the resident
step with it on vs off (alternating, best of ``--mixup-rounds`` each) and the mix alone per batch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.throughput import DEFAULT_CONFIG, add_shard_args, bench_shards, machine
from pipelines.config import FeatureConfig
from shards.base.config import load_sections
from shards.base.errors import CliParser
from train.bench.families import bench_family, bench_real_loader
from train.mixup import Mixup
from train.synthetic import synthetic_task


def bench_train_step(
    shards: Path,
    family: str,
    *,
    config: Path,
    batches: int,
    warmup: int,
    overrides: list[str],
    mixup: float | None = None,
    mixup_rounds: int = 3,
) -> list[dict[str, Any]]:
    """Steps/s of ``family`` on GPU-resident synthetic batches vs the real DALI loader (and with
    ``mixup``, the resident step with ``augment.mixup_alpha`` = mixup vs 0)."""
    extra = ["train.amp=bf16", "train.channels_last=true", *[o.removeprefix("--") for o in overrides]]
    r = bench_real_loader(config, shards, family, batches, warmup, extra)
    real = "dali-gpu" if torch.cuda.is_available() else "dali-cpu"
    common = {"model": family, "shape": r["shape"], "batch": r["batch"], "params_m": r["params_m"]}
    rows = [
        {"pipeline": "synthetic-resident", "steps_per_s": r["synthetic_steps_per_s"], **common},
        {"pipeline": real, "steps_per_s": r["real_steps_per_s"], "vs_synthetic": r["ratio"], **common},
    ]
    if mixup is not None:
        rows += bench_mixup(r, family, mixup, batches=batches, warmup=warmup, rounds=mixup_rounds)
    return rows


def bench_mixup(
    r: dict[str, Any], family: str, alpha: float, *, batches: int, warmup: int, rounds: int
) -> list[dict[str, Any]]:
    """Resident-batch steps/s with ``augment.mixup_alpha`` = alpha vs 0 (the same network as the
    real-loader run ``r``), alternating so a shared machine's drift hits both, plus the mix alone."""
    c, f, t = r["shape"]
    shape, batch = (c, f, t), r["batch"]
    best = {0.0: 0.0, alpha: 0.0}
    for _ in range(rounds):
        for a in best:
            args = [*r["synthetic_overrides"], f"augment.mixup_alpha={a}"]
            best[a] = max(best[a], bench_family(family, shape, batch, batches, warmup, args)["steps_per_s"])
    common = {"model": family, "shape": list(shape), "batch": batch, "params_m": r["params_m"]}
    on = {"mixup_alpha": alpha, "steps_per_s": best[alpha], "vs_mixup_off": round(best[alpha] / best[0.0], 3)}
    return [
        {"pipeline": "synthetic-resident", "mixup_alpha": 0.0, "steps_per_s": best[0.0], **common},
        {"pipeline": "synthetic-resident", **on, "mix_ms_per_batch": mix_ms(shape, batch, alpha), **common},
    ]


def mix_ms(shape: tuple[int, ...], batch: int, alpha: float, reps: int = 20) -> float:
    """Milliseconds of one ``Mixup`` call on a (batch, C, F, T) float batch on the training device."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = torch.randn(batch, *shape, device=dev), torch.randint(0, 4, (batch,), device=dev)
    mix = Mixup(alpha, synthetic_task("single", [4]), 0, 0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    mix(x, y)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        mix(x, y)
    sync()
    return round((time.perf_counter() - t0) / reps * 1e3, 3)


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m train.stepbench", description=__doc__.splitlines()[0])
    add_shard_args(ap)
    ap.add_argument("--family", default="efficientnet_b2", help="model family whose step is timed")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment TOML")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--mixup", type=float, default=None, metavar="ALPHA", help="also time mixup on vs off")
    ap.add_argument("--mixup-rounds", type=int, default=3, help="alternating on/off rounds (best of each)")
    args, overrides = ap.parse_known_args(argv)
    if args.mixup is not None and not args.mixup > 0:
        ap.error(f"--mixup: need an alpha > 0 to compare with off, got {args.mixup}")
    rate = load_sections({"features": FeatureConfig}, args.config, allow_other=True)["features"].sample_rate
    shards = bench_shards(ap, args, rate, progress=not args.json)
    rows = bench_train_step(
        shards, args.family, config=args.config, batches=args.batches, warmup=args.warmup,
        overrides=overrides, mixup=args.mixup, mixup_rounds=args.mixup_rounds,
    )  # fmt: skip
    doc = {"machine": machine(), "shards": str(shards), "results": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"machine: {doc['machine']}; shards: {shards}")
        for r in rows:
            print(" | ".join(f"{k}={v}" for k, v in r.items()))
    return 0
