"""``torchrun --nproc_per_node=N -m train --config configs/X.toml [--section.key=value ...]``.

Also ``python -m train ...`` (one process). Thin on purpose: parse, build, train, close.
"""

from __future__ import annotations

import argparse
import json
import sys

from shards.base import distributed
from shards.base.errors import CliParser, run_cli
from train.config import load_experiment


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = CliParser(prog="python -m train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="experiment TOML (configs/*.toml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if not (r.startswith("--") and "=" in r and "." in r.split("=", 1)[0])]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --section.key=value")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    exp = load_experiment(args.config, overrides)  # config errors (every section) before any GPU work
    if args.print_config:
        print(json.dumps(exp.to_dict(), indent=2, default=str))
        return 0
    from train.trainer import Trainer
    from eval.validation import validator  # the composition point: train's loop, eval's metrics  # isort: skip

    info = distributed.init(exp.train.device)
    trainer = Trainer(exp, info=info, validate=validator(exp.eval))
    try:
        result = trainer.train()
    finally:
        trainer.close()
        distributed.close()
    if info.is_main:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a user mistake: one error: line (rank 0), exit 2
