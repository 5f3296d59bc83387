"""``python -m eval``: score checkpoints on a shard split and write the report.

Thin on purpose: parse the ``[eval]`` config, check the inputs (checkpoint files, the
split, vocabularies) before any model runs, evaluate each checkpoint, and let rank 0
write the report. Runs under ``torchrun`` too (every rank scores its share of tracks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from eval import runner
from eval import thresholds as th
from eval.config import LOADER_KEYS, EvalConfig
from eval.report import write_report
from pipelines.config import LoaderConfig
from shards.base import distributed
from shards.base.config import apply_overrides, from_dict, load_sections
from shards.base.distributed import is_main_process
from shards.base.errors import CliParser, run_cli
from shards.base.progress import progress
from shards.base.tasks import TaskSpec
from shards.format import Manifest, read_manifest
from train.checkpoint import check_vocab, load_trained_model
from train.config import DataConfig

LoaderFactory = Callable[[str], Iterable[dict[str, Any]]]


def evaluate_checkpoint(
    predictor: Any, make_loader: LoaderFactory, task: TaskSpec, cfg: EvalConfig
) -> runner.EvalResult:
    """Evaluate one model on ``cfg.split``; multi-label thresholds are searched on
    ``cfg.threshold_split`` first and applied unchanged (the reported split is never
    passed to the search)."""
    cfg.check_threshold_split(task.kind)
    found = None
    if task.kind == "multi" and cfg.threshold_split:
        val = runner.evaluate_model(
            predictor,
            make_loader(cfg.threshold_split),
            task,
            aggregate=cfg.aggregate,
            split=cfg.threshold_split,
        )
        found = th.search_thresholds(
            val.track.probs, val.track.target, split=cfg.threshold_split, classes=task.classes
        )
    return runner.evaluate_model(
        predictor,
        make_loader(cfg.split),
        task,
        aggregate=cfg.aggregate,
        thresholds=found,
        split=cfg.split,
        top_k=cfg.top_k,
    )


def check_split(manifest: Manifest, split: str) -> None:
    """A missing or empty split is one clear error before any model is loaded."""
    info = manifest.split(split)  # raises, naming the manifest and the splits it has
    if info.num_samples == 0 or not info.shards:
        raise ValueError(f"{manifest.root}: split {split!r} is empty (0 tracks)")


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    """CLI flags > ``--eval.key=value`` > ``--config`` TOML ``[eval]`` > defaults."""
    ap = CliParser(prog="python -m eval", description="Evaluate checkpoints on a shard split.")
    ap.add_argument("--checkpoint", nargs="+", type=Path, help="one or more checkpoints")
    ap.add_argument("--shards", help="shard build folder or s3://bucket/prefix (manifest.json)")
    ap.add_argument("--split", help="split to report on (default test)")
    ap.add_argument("--threshold-split", help="multi-label: split to tune thresholds on ('' = none)")
    ap.add_argument("--aggregate", choices=["mean", "max"], help="chunk -> track aggregation")
    ap.add_argument("--out", type=Path, help="report folder")
    ap.add_argument("--config", type=Path, help="experiment TOML (its [eval] section is used)")
    args, rest = ap.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith(("--eval.", "--loader."))]
    if bad:
        ap.error(
            f"unrecognized arguments: {' '.join(bad)} (config overrides look like --eval.key=value "
            "or --loader.key=value)"
        )
    loader = _loader_overrides([a for a in rest if a.startswith("--loader.")])
    rest = [a for a in rest if not a.startswith("--loader.")]
    flags = {
        "checkpoints": args.checkpoint,
        "shards": args.shards,
        "split": args.split,
        "threshold_split": args.threshold_split,
        "aggregate": args.aggregate,
        "out": args.out,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    if loader:
        flags["loader"] = loader
    sections = load_sections(
        {"eval": EvalConfig, "data": DataConfig}, args.config, rest, allow_other=True, values={"eval": flags}
    )
    cfg: EvalConfig = sections["eval"]
    if cfg.shards is None and args.config is not None:
        builds = sections["data"].builds  # the experiment's own build
        if len(builds) > 1:
            ap.error(f"the experiment mixes {len(builds)} builds; name the one to evaluate (--shards DIR)")
        cfg.shards = builds[0] if builds else None
    if not cfg.checkpoints:
        ap.error("no checkpoint given (--checkpoint CKPT [CKPT ...])")
    if cfg.shards is None:
        ap.error("no shard folder given (--shards DIR)")
    return cfg


def _loader_overrides(args: list[str]) -> dict[str, Any]:
    """``--loader.KEY=VALUE`` -> ``{KEY: value}``, typed and checked as ``LoaderConfig`` checks them
    (which keys an evaluation may set: ``EvalConfig.__post_init__``)."""
    given = apply_overrides({}, args).get("loader", {})
    typed = from_dict(LoaderConfig, {k: v for k, v in given.items() if k in LOADER_KEYS}, "--loader")
    return {k: getattr(typed, k) if k in LOADER_KEYS else v for k, v in given.items()}


def run(cfg: EvalConfig) -> dict[str, runner.EvalResult]:
    """Evaluate every checkpoint of ``cfg``; rank 0 writes the report to ``cfg.out``."""
    assert cfg.shards is not None
    missing = [str(p) for p in cfg.checkpoints if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {missing}")
    manifest = read_manifest(cfg.shards)
    task = manifest.task
    cfg.check_threshold_split(task.kind)
    check_split(manifest, cfg.split)
    if task.kind == "multi" and cfg.threshold_split:
        check_split(manifest, cfg.threshold_split)

    from pipelines.loader import build_loader  # heavy (DALI); only once the inputs are known good

    info = distributed.init(cfg.device)
    results: dict[str, runner.EvalResult] = {}
    predictors = [load_trained_model(path, info.device) for path in cfg.checkpoints]
    for path, predictor in zip(cfg.checkpoints, predictors):  # every mismatch before any scoring
        check_vocab(predictor.task, task, path, cfg.shards)
    for path, predictor in zip(cfg.checkpoints, predictors):
        confs = dict(predictor.configs)  # features, augment, loader (this machine's keys set)
        confs["loader"] = dataclasses.replace(confs["loader"], **cfg.loader)

        def make_loader(split: str, confs: dict[str, Any] = confs) -> Iterable[dict[str, Any]]:
            loader = build_loader(manifest, split, mode="eval", rank=info.rank, world_size=info.world_size,
                                  device=info.device, **confs)  # fmt: skip
            return progress(loader, desc=f"eval {split}", unit="batch")

        name = str(getattr(predictor, "name", "") or path.stem)
        name = name if name not in results else f"{name} ({path})"
        results[name] = evaluate_checkpoint(predictor, make_loader, task, cfg)
    if info.is_main:
        write_report(
            cfg.out, results, task, split=cfg.split, aggregate=cfg.aggregate, max_pr_curves=cfg.max_pr_curves
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    try:
        cfg = parse_args(argv)
        results = run(cfg)
    finally:
        distributed.close()
    if not is_main_process():
        return 0
    for name, res in results.items():
        print(
            f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if k.startswith("track/"))
        )
    print(f"report: {cfg.out / 'report.md'}")
    return 0
