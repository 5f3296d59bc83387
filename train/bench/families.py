"""Training throughput per model family on synthetic device-resident batches.

``python -m train.bench [--families customcnn,ast,...] [--shape 3,64,64] [--batch 16]``
times ``Trainer.train_step`` (forward, backward, optimiser step: the real loop code,
with the config's AMP / channels_last / compile) on batches generated once on the
device, so the number is the model's ceiling, the figure the real loader is compared
against ("training is never input-bound"). gbm reports the fit (PCA + LightGBM) rate.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from shards.base.errors import CliParser
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

DEFAULT_FAMILIES = "customcnn,ast,efficientnet_b0,efficientnet_b2,efficientnet_b4,resnet50,gbm"
FAMILY_ARGS = {
    "customcnn": ["model.preset=small"],
    "ast": ["model.preset=tiny"],
    "gbm": ["model.kwargs={pca_components = 32, rounds = 50}"],
}


def bench_family(
    family: str,
    shape: tuple[int, int, int],
    batch: int,
    steps: int,
    warmup: int,
    extra: list[str],
    repeat: int = 1,
) -> dict[str, Any]:
    """samples/s of one family (train steps, or the gbm fit) on synthetic batches."""
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"model.family={family}",
            f"data.synthetic_shape=[{shape[0]}, {shape[1]}, {shape[2]}]",
            f"data.synthetic_batch_size={batch}",
            f"data.synthetic_batches={steps + warmup}",
            "data.synthetic_resident=true",
            "checkpoint.resume=none",
            *FAMILY_ARGS.get(family, []),
            *extra,
        ]
        trainer = Trainer(synthetic_experiment(out, overrides))
        batches = list(trainer.data.train)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        if not trainer.family.trainable:
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            n = len(batches) * batch
        else:
            for b in batches[:warmup]:
                trainer.train_step(b)
            seconds = float("inf")
            for _ in range(repeat):  # best of `repeat` windows: shared machines are noisy
                sync()
                t0 = time.perf_counter()
                for b in batches[warmup:]:
                    trainer.train_step(b)
                sync()
                seconds = min(seconds, time.perf_counter() - t0)
            n = steps * batch
        params = sum(p.numel() for p in trainer.model.parameters())
        trainer.close()
    return {
        "family": family,
        "samples_per_s": round(n / seconds, 1),
        "steps_per_s": round(n / batch / seconds, 3),
        "params_m": round(params / 1e6, 2),
        "shape": list(shape),
        "batch": batch,
        "device": str(trainer.device),
        "amp": trainer.exp.train.amp,
    }


def bench_real_loader(
    config: Path, shards: Path, family: str, steps: int, warmup: int, extra: list[str]
) -> dict[str, Any]:
    """Steps/s through the real pipeline vs on synthetic resident batches of the same shape.

    The ratio is the "never input-bound" figure (target >= 0.95 for efficientnet_b2 bf16 on a GPU).
    """
    from train.config import load_experiment

    with tempfile.TemporaryDirectory() as out:
        exp = load_experiment(
            config,
            [
                f"data.shards={shards}",
                f"model.family={family}",
                f"train.out={out}",
                "checkpoint.resume=none",
                *extra,
            ],
        )
        trainer = Trainer(exp)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        n, t0 = 0, 0.0
        while n < warmup + steps:
            for b in trainer.data.train:
                if n == warmup:
                    sync()
                    t0 = time.perf_counter()
                trainer.train_step(b)
                n += 1
                if n == warmup + steps:
                    break
        sync()
        real = steps / (time.perf_counter() - t0)
        shape, batch = trainer.data.feature_shape, exp.loader.batch_size
        params = round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2)
        # the same network both ways: the resolved preset (bench_family's own default may differ,
        # e.g. ast tiny vs the family's base) and the config's regularisation
        preset = exp.model.preset or trainer.family.default_preset
        trainer.close()
    same_model = [f"model.dropout={exp.model.dropout}", f"model.drop_path={exp.model.drop_path}"]
    same_model += [f"model.preset={preset}"] if preset else []
    same_model += [f"model.kwargs={_inline_table(exp.model.kwargs)}"] if exp.model.kwargs else []
    synth_row = bench_family(family, shape, batch, steps, warmup, [*same_model, *extra])
    synth = synth_row["steps_per_s"]
    if synth_row["params_m"] != params:
        raise RuntimeError(
            f"{family}: synthetic bench built {synth_row['params_m']}M params, the real run {params}M"
        )
    return {"family": family, "shape": list(shape), "batch": batch, "params_m": params,
            "real_steps_per_s": round(real, 3), "synthetic_steps_per_s": synth, "ratio": round(real / synth, 3),
            "synthetic_overrides": [*same_model, *extra]}  # fmt: skip


def _inline_table(d: dict[str, Any]) -> str:
    """``{a = 1, b = "x"}`` for an override (JSON scalars and arrays are also TOML literals)."""
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}"


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m train.bench", description=__doc__.splitlines()[0])
    p.add_argument("--families", default=DEFAULT_FAMILIES, help="comma-separated registry/timm names")
    p.add_argument("--shape", default="3,64,64", help="C,F,T of one chunk")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="report the best of this many timed windows")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--shards", type=Path, help="also compare the real loader on these shards (first family)")
    p.add_argument("--config", type=Path, default=Path("configs/demo_customcnn.toml"), help="with --shards")
    args, extra = p.parse_known_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3:
        p.error("--shape needs C,F,T")
    # production settings by default (AMP and channels_last are ignored/neutral on CPU); CLI wins
    extra = ["train.amp=bf16", "train.channels_last=true", *[e.removeprefix("--") for e in extra]]
    rows = []
    for fam in args.families.split(","):
        row = bench_family(fam, shape, args.batch, args.steps, args.warmup, extra, args.repeat)  # type: ignore[arg-type]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\n| family | params (M) | samples/s | steps/s |  (shape {list(shape)}, batch {args.batch}, {rows[0]['device']})"
    )
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['family']} | {r['params_m']} | {r['samples_per_s']} | {r['steps_per_s']} |")
    if args.shards:
        cmp = bench_real_loader(
            args.config, args.shards, args.families.split(",")[0], args.steps, args.warmup, extra
        )
        rows.append(cmp)
        print(json.dumps(cmp), flush=True)
    if args.json:
        from shards.base.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0
