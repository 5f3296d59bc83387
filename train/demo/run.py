"""``make demo``: the whole tool end to end on a small synthetic dataset.

synthesise -> build shards -> benchmark the input pipeline -> train the custom CNN ->
evaluate on the test split -> one summary table. Runs in minutes on 2 CPU cores and uses
the GPU when there is one (the trainer's ``device = "auto"``). Each stage calls the
same entry point a user would (``python -m shards|pipelines.bench|train|eval``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from shards.base.errors import CliParser

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_customcnn.toml"


def _stage(name: str, fn: Callable[[], object], timings: dict[str, float]) -> object:
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    return out


def _check(rc: object, what: str) -> None:
    if rc not in (0, None):
        raise SystemExit(f"demo: {what} failed (exit {rc})")


def run(out: Path, *, tracks: int, seconds: float, config: Path = CONFIG) -> dict[str, object]:
    """Run every stage into ``out``; returns the summary printed at the end."""
    from pipelines.config import FeatureConfig
    from shards.base.config import load_sections

    rate = load_sections({"features": FeatureConfig}, config, allow_other=True)["features"].sample_rate
    shards, run_dir, report = out / "shards", out / "run", out / "eval"
    timings: dict[str, float] = {}

    def build() -> None:
        from shards.bench.synth import build_synth_shards

        if (shards / "manifest.json").is_file():
            print(f"{shards}: already built (delete it to rebuild)")
            return
        build_synth_shards(
            shards,
            task="single",
            tracks=tracks,
            seconds=seconds,
            sample_rate=rate,
            raw=out / "raw",
            progress=True,
        )

    def bench() -> None:
        from pipelines.bench.throughput import main as bench_main

        _check(
            bench_main(
                [str(shards), "--config", str(config), "--warmup", "1", "--batches", "6", "--workers", "2"]
            ),
            "benchmark",
        )

    def train() -> None:
        from train.__main__ import main as train_main

        _check(
            train_main(["--config", str(config), f"--data.shards={shards}", f"--train.out={run_dir}"]),
            "training",
        )

    def evaluate() -> None:
        from eval.cli import main as eval_main

        best = run_dir / "checkpoints" / "best.pt"
        if not best.is_file():
            raise SystemExit(f"demo: {best} was not written by the training stage")
        argv = ["--checkpoint", str(best), "--shards", str(shards), "--split", "test", "--out", str(report)]
        _check(eval_main(argv), "evaluation")

    _stage("1/4 synthesise + build shards", build, timings)
    _stage("2/4 benchmark the input pipeline", bench, timings)
    _stage("3/4 train the custom CNN", train, timings)
    _stage("4/4 evaluate on the test split", evaluate, timings)

    return summarise(shards, run_dir, report, timings)


def summarise(shards: Path, run_dir: Path, report: Path, timings: dict[str, float]) -> dict[str, object]:
    """What the demo prints at the end: the report's metrics, stage timings and chance level."""
    metrics = json.loads((report / "metrics.json").read_text())
    n_classes = len(json.loads((shards / "manifest.json").read_text())["task"]["classes"])
    return {"metrics": metrics, "timings": timings, "chance": 1.0 / n_classes,
            "report": report / "report.md", "curves": run_dir / "curves.png"}  # fmt: skip


def print_summary(summary: dict[str, object]) -> None:
    models = cast("dict[str, Any]", summary["metrics"])["models"]
    metrics = next(iter(models.values()))["metrics"]
    wanted = ("chunk/accuracy", "track/accuracy", "track/macro_f1")
    print("\n=== musicstream demo: summary ===")
    print(f"{'stage':<38} {'seconds':>8}")
    for name, sec in cast("dict[str, float]", summary["timings"]).items():
        print(f"{name:<38} {sec:>8.1f}")
    print(f"\n{'test metric (custom CNN, tiny)':<38} {'value':>8}")
    for key in wanted:
        if metrics.get(key) is not None:
            print(f"{key:<38} {metrics[key]:>8.3f}")
    print(f"{'chance (1 / classes)':<38} {summary['chance']:>8.3f}")
    print(f"\nfull report: {summary['report']}; training curves: {summary['curves']}")


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo"), help="folder for data, shards, run and report")
    ap.add_argument("--tracks", type=int, default=200, help="synthetic tracks (80/10/10 split)")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each synthetic track")
    ap.add_argument("--config", type=Path, default=CONFIG, help="experiment TOML to train with")
    args = ap.parse_args(argv)
    print_summary(run(args.out, tracks=args.tracks, seconds=args.seconds, config=args.config))
    return 0
