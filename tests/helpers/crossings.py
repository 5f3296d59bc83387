"""Count the package crossings on the path from ``python -m train --config X`` to the first DALI op.

How it is measured (docs/architecture.md): every Python call event of project code on the main
thread is recorded in order, from ``train.__main__.main`` until project code first calls into
``nvidia.dali.fn`` / ``nvidia.dali.ops``; each module counts once, at its first call (class
bodies run at import count too); consecutive modules of the same room collapse; a crossing is
a change of room. Rooms: ``--rooms stages`` (shards, pipelines, train, eval by top-level
package), ``--rooms all`` (the base is a room of its own) or ``--rooms floor`` (the base is the
floor every stage stands on, like the standard library: its modules are left out). ``--base``
names the modules that are the base (default ``shards.base``; for a tree from before issue 18,
the modules that moved there, so both trees are measured the same way).

    python tests/helpers/crossings.py --rooms all -- --config configs/demo_customcnn.toml \\
        --data.shards=DIR --train.out=/tmp/x
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

STAGES = ("shards", "pipelines", "train", "eval")


BASE = ["shards.base"]


def room(module: str, rooms: str) -> str | None:
    top = module.split(".")[0]
    if top not in STAGES:
        return None
    if rooms != "stages" and any(module == b or module.startswith(b + ".") for b in BASE):
        return "base" if rooms == "all" else None
    return top


def trace(argv: list[str], rooms: str) -> list[tuple[str, str]]:
    """(room, module) in first-call order up to the first DALI op."""
    seen: set[str] = set()
    path: list[tuple[str, str]] = []

    class FirstDaliOp(Exception):
        pass

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if module.startswith(("nvidia.dali.fn", "nvidia.dali.ops")) and room(caller, "stages"):
            path.append(("DALI", f"{module}.{frame.f_code.co_name}"))
            raise FirstDaliOp
        r = room(module, rooms)
        if r is not None and module not in seen:
            seen.add(module)
            path.append((r, module))

    from train.__main__ import main

    sys.setprofile(profile)
    try:
        main(argv)
    except FirstDaliOp:
        pass
    finally:
        sys.setprofile(None)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", choices=("stages", "all", "floor"), default="stages")
    ap.add_argument("--base", default=",".join(BASE), help="comma list of the base's modules/packages")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: python -m train's arguments")
    args = ap.parse_args()
    BASE[:] = args.base.split(",")
    path = trace([a for a in args.train_args if a != "--"], args.rooms)
    runs: list[list[Any]] = []
    for r, module in path:
        if runs and runs[-1][0] == r:
            runs[-1][1].append(module)
        else:
            runs.append([r, [module]])
    print(json.dumps({"rooms": args.rooms, "crossings": len(runs) - 1,
                      "path": [f"{r}: {', '.join(ms)}" for r, ms in runs]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
